"""shutdown_at_exit (TRN-03): registered only on a TPU VM, `sudo shutdown -h +<minutes>`."""

import logging
import math

import pytest
from launch_fakes import RecordingExecutor

from lm.launch.shutdown import (
    HostProbe,
    register_shutdown_at_exit,
    shutdown_command,
    shutdown_delay_seconds,
)


def fake_host(
    tmp_path, *, product="Google Compute Engine\n", devices=("dev/accel0",), container=False
):
    if product is not None:
        (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
        (tmp_path / "sys/class/dmi/id/product_name").write_text(product)
    for device in devices:
        (tmp_path / device).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / device).write_text("")
    if container:
        (tmp_path / ".dockerenv").write_text("")
    return HostProbe(root=str(tmp_path), environ={})


class Registry:
    def __init__(self):
        self.handlers = []

    def __call__(self, fn):
        self.handlers.append(fn)
        return fn


@pytest.mark.parametrize(
    "value, minutes",
    [(True, 5), (300, 5), (300.0, 5), (61, 2), (60, 1), (0.5, 1), (0, 0), (3600, 60)],
)
def test_registers_shutdown_after_ceil_minutes_on_a_tpu_vm(tmp_path, value, minutes, caplog):
    ex = RecordingExecutor()
    registry = Registry()
    with caplog.at_level(logging.INFO):
        command = register_shutdown_at_exit(
            value, probe=fake_host(tmp_path), executor=ex, register=registry
        )
    expected = ["sudo", "shutdown", "-h", f"+{minutes}"]
    assert list(command.argv) == expected
    assert len(registry.handlers) == 1 and ex.commands == []  # nothing runs before exit
    registry.handlers[0]()
    assert ex.argvs == [expected]
    assert f"shut down {minutes} minute(s) after" in caplog.text
    seconds = 300 if value is True else value
    assert minutes == math.ceil(seconds / 60)


def test_false_registers_nothing(tmp_path):
    registry = Registry()
    assert register_shutdown_at_exit(False, probe=fake_host(tmp_path), register=registry) is None
    assert registry.handlers == []


@pytest.mark.parametrize(
    "host",
    [
        dict(product="Standard PC (Q35 + ICH9, 2009)\n"),  # a laptop/VM elsewhere
        dict(product=None),  # no DMI info at all
        dict(devices=()),  # a GCE VM without TPUs
    ],
)
def test_ignored_with_a_warning_off_tpu_vms(tmp_path, host, caplog):
    registry = Registry()
    with caplog.at_level(logging.WARNING):
        result = register_shutdown_at_exit(
            True, probe=fake_host(tmp_path, **host), register=registry
        )
    assert result is None and registry.handlers == []
    assert "is ignored: this machine is not a Cloud TPU VM" in caplog.text


def test_ignored_inside_a_container(tmp_path, caplog):
    registry = Registry()
    probe = fake_host(tmp_path, container=True)
    with caplog.at_level(logging.WARNING):
        assert register_shutdown_at_exit(120, probe=probe, register=registry) is None
    assert registry.handlers == [] and "inside a container" in caplog.text


def test_tpu_detection_sources(tmp_path):
    assert fake_host(tmp_path / "a", devices=("dev/vfio/0",)).is_tpu_vm()  # v5+
    assert not fake_host(tmp_path / "b", devices=("dev/vfio/vfio",)).is_tpu_vm()
    env_only = HostProbe(
        root=str(fake_host(tmp_path / "c", devices=()).root), environ={"TPU_WORKER_ID": "0"}
    )
    assert env_only.is_tpu_vm()
    assert not HostProbe(root=str(tmp_path / "nothing"), environ={"TPU_WORKER_ID": "0"}).is_tpu_vm()


def test_failed_shutdown_is_logged(tmp_path, caplog):
    ex = RecordingExecutor({"shutdown": [1]})
    registry = Registry()
    register_shutdown_at_exit(True, probe=fake_host(tmp_path), executor=ex, register=registry)
    with caplog.at_level(logging.ERROR):
        registry.handlers[0]()
    assert "failed with exit status 1" in caplog.text


@pytest.mark.parametrize("value", [-1, -0.5, float("nan"), float("inf"), "300", None])
def test_bad_values(value):
    with pytest.raises(ValueError, match="shutdown_at_exit: got"):
        shutdown_delay_seconds(value)


def test_delay_values():
    assert shutdown_delay_seconds(True) == 300.0
    assert shutdown_delay_seconds(False) is None
    assert shutdown_delay_seconds(90) == 90.0
    assert list(shutdown_command(90).argv) == ["sudo", "shutdown", "-h", "+2"]
