"""`DistributedConfig.initialize`: when it starts jax.distributed, and with what arguments.

`jax.distributed.initialize` is replaced by a recorder (the real one is exercised by
test_multiprocess_training.py, in subprocesses)."""

from __future__ import annotations

import logging

import jax
import pytest

import lm.config
from lm.distributed import DistributedConfig, init
from lm.trainer import TrainerConfig

CLUSTER_ENV = [
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
    "TPU_WORKER_HOSTNAMES",
    "CLOUD_TPU_TASK_ID",
    "OMPI_COMM_WORLD_SIZE",
]


@pytest.fixture
def calls(monkeypatch):
    recorded: list[dict] = []
    for name in CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: recorded.append(kw))
    # a process other than 0 first waits for the coordinator's port (tested below)
    monkeypatch.setattr(init, "wait_for_coordinator", lambda *a: recorded.append(("wait", *a)))
    return recorded


def test_single_process_does_nothing(calls):
    DistributedConfig().initialize()
    assert calls == []


def test_manual_cluster_passes_everything_through(calls):
    DistributedConfig(
        coordinator_address="10.0.0.1:1234",
        num_processes=4,
        process_id=3,
        local_device_ids=1,
        heartbeat_timeout_seconds=15,
        initialization_timeout_seconds=60,
        shutdown_timeout_seconds=30,
    ).initialize()
    assert calls == [
        ("wait", "10.0.0.1:1234", 60),
        dict(
            coordinator_address="10.0.0.1:1234",
            num_processes=4,
            process_id=3,
            local_device_ids=[1],
            # jax waits a little longer than the watchdog that reports the processes missing
            initialization_timeout=60 + init.JAX_TIMEOUT_GRACE_S,
            heartbeat_timeout_seconds=15,
            shutdown_timeout_seconds=30,
        ),
    ]


@pytest.mark.parametrize(
    ("env", "starts"),
    [
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, True),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),  # a one-task SLURM job
        ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, True),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ],
)
def test_detected_clusters_leave_the_addresses_to_jax(calls, monkeypatch, env, starts):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    DistributedConfig().initialize()
    if not starts:
        assert calls == []
        return
    (call,) = calls
    assert call["coordinator_address"] is None and call["num_processes"] is None
    assert call["process_id"] is None and call["heartbeat_timeout_seconds"] == 100


def test_manual_settings_on_tpu_warn(calls, monkeypatch, caplog):
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1")
    with caplog.at_level(logging.WARNING, logger="lm.distributed.init"):
        DistributedConfig(coordinator_address="t0:1234", num_processes=2, process_id=0).initialize()
    assert "TPU" in caplog.text and len(calls) == 1


def test_disabled_or_already_initialized_does_nothing(calls, monkeypatch):
    DistributedConfig(
        coordinator_address="h:1", num_processes=2, process_id=0, initialize_jax_distributed=False
    ).initialize()
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    DistributedConfig(coordinator_address="h:1", num_processes=2, process_id=0).initialize()
    assert calls == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_processes=0), "^num_processes: must be >= 1, got 0"),
        (
            dict(num_processes=2, process_id=2),
            r"^process_id: \(2\) must be in \[0, num_processes=2\)",
        ),
        (dict(process_id=-1), "^process_id: must be >= 0, got -1"),
        (dict(local_device_ids=[0, -1]), r"^local_device_ids\[1\]: got -1, expected a device"),
        (dict(heartbeat_timeout_seconds=0), "^heartbeat_timeout_seconds: must be a whole number"),
        (dict(shutdown_timeout_seconds=2.5), "^shutdown_timeout_seconds: must be a whole number"),
        (dict(coordinator_address="localhost"), "^coordinator_address: .*no host:port form"),
        (dict(coordinator_address="localhost:abc"), r"the port 'abc' is not a number in 1\.\."),
        (dict(coordinator_address="h:99999"), "the port '99999' is not a number"),
        (dict(coordinator_address="http://h:1"), "give no scheme"),
    ],
)
def test_invalid_values_are_named(kwargs, message):
    """FieldErrors: reported at trainer.distributed.<field>, where the value was written (a
    malformed address was a jax traceback, or a 300-s wait and a C++ abort)."""
    with pytest.raises(lm.config.FieldError, match=message):
        DistributedConfig(**kwargs)


def test_every_bad_distributed_field_is_reported_in_one_run(config_problems):
    found = config_problems(
        TrainerConfig,
        "distributed:\n  coordinator_address: localhost\n  num_processes: 0\n  process_id: 3\n"
        "  local_device_ids: [-1, 0, -2]\n  heartbeat_timeout_seconds: 0\n",
    )
    # process_id is checked against num_processes only once that is valid
    assert set(found) == {
        "distributed.coordinator_address",
        "distributed.num_processes",
        "distributed.local_device_ids[0]",
        "distributed.local_device_ids[2]",
        "distributed.heartbeat_timeout_seconds",
    }
    assert found["distributed.num_processes"] == ("run.yaml:3", "must be >= 1, got 0")
    with pytest.raises(lm.config.ConfigProblems) as info:
        DistributedConfig(num_processes=0, process_id=-1)
    assert [p.path for p in info.value.problems] == ["num_processes", "process_id"]
    assert info.value.problems[1].message == "must be >= 0, got -1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(process_id=1), "^trainer.distributed.process_id: is set, but this is a single"),
        (dict(local_device_ids=[0]), "^trainer.distributed.local_device_ids: is set, but"),
        (dict(coordinator_address="h:1"), "^trainer.distributed.num_processes: is needed with"),
        (dict(num_processes=2), "^trainer.distributed.coordinator_address: is needed with"),
        # jax said `The process id of the current process must be defined.`, naming no field
        (
            dict(coordinator_address="h:1", num_processes=2),
            r"^trainer.distributed.process_id: is needed with num_processes: 2 .*\[0, 2\), 0 "
            "for the one that serves the coordinator at h:1",
        ),
    ],
)
def test_partial_manual_settings_are_errors_without_a_detected_cluster(
    calls, monkeypatch, kwargs, message
):
    """They were ignored (a process_id alone trained one process on every device)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(lm.config.FieldError, match=message):
        DistributedConfig(**kwargs).initialize()
    assert calls == []


def test_a_missing_process_id_is_left_to_jax_in_kubernetes(calls, monkeypatch):
    """jax reads the process id of a JobSet pod itself."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    DistributedConfig(coordinator_address="h:1", num_processes=2).initialize()
    assert len(calls) == 1 and calls[0]["process_id"] is None


_LONE_PROCESS_0 = """
import sys
from lm.distributed import DistributedConfig
DistributedConfig(
    coordinator_address=sys.argv[1],
    num_processes=2,
    process_id=0,
    initialization_timeout_seconds=int(sys.argv[2]),
).initialize()
print("initialized")
"""


def test_a_process_that_never_joins_is_reported_in_one_line(tmp_path, subprocess_env):
    """Process 0 of 2, alone: after initialization_timeout_seconds it says in one line which
    settings to check and exits 1. jax aborted it (exit 134) with `Terminating process
    because the JAX distributed service detected fatal errors` and a C++ stack dump."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"localhost:{s.getsockname()[1]}"
    script = tmp_path / "lone.py"
    script.write_text(_LONE_PROCESS_0)
    env = {**subprocess_env, "JAX_PLATFORMS": "cpu"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), address, "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert "initialized" not in proc.stdout
    assert "Terminating process" not in proc.stderr and "RegisterTask" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: trainer.distributed: not all 2 processes joined the jax.distributed "
        f"coordinator at {address} within 3s (trainer.distributed.initialization_timeout_seconds"
        "; this is process 0): check num_processes, process_id and coordinator_address on every "
        "process, and that every process started"
    ]
    assert proc.stderr.rstrip().endswith(errors[0])  # the last thing it printed
    assert elapsed < 3 + init.JAX_TIMEOUT_GRACE_S + 30


def test_waiting_for_the_coordinator_is_bounded_and_names_the_fields():
    import socket
    import time

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        init.wait_for_coordinator(f"127.0.0.1:{server.getsockname()[1]}", 5)  # returns
        port = server.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(init.CoordinatorUnreachable) as info:
        init.wait_for_coordinator(f"127.0.0.1:{port}", 1)  # nothing listens there now
    assert time.monotonic() - start < 10
    assert str(info.value).startswith(
        f"cannot reach the jax.distributed coordinator at 127.0.0.1:{port} (trainer.distributed"
        ".coordinator_address) within 1s (trainer.distributed.initialization_timeout_seconds)"
    )


def test_process_0_names_a_coordinator_port_already_in_use(calls):
    """A second process 0 (a process_id given twice) or another program on the port: jax's
    service would share the port (SO_REUSEPORT) and every process waited for the timeout."""
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        config = DistributedConfig(
            coordinator_address=f"localhost:{port}", num_processes=2, process_id=0
        )
        with pytest.raises(lm.config.FieldError) as info:
            config.initialize()
        assert calls == []  # jax.distributed was not started
        assert str(info.value) == (
            f"trainer.distributed.coordinator_address: localhost:{port}: port {port} is "
            "already in use on this host, where process 0 serves the coordinator: is another "
            "process of this run also given process_id 0? Otherwise pick a free port"
        )
        # process 1 connects there instead of serving it: no such check
        DistributedConfig(
            coordinator_address=f"localhost:{port}", num_processes=2, process_id=1
        ).initialize()
    assert [c[0] if isinstance(c, tuple) else "init" for c in calls] == ["wait", "init"]
    # once nothing listens there, process 0 starts jax.distributed
    config.initialize()
    assert calls[-1]["process_id"] == 0


def test_no_ipv4_socket_to_probe_with_leaves_the_port_to_jax(monkeypatch):
    import socket

    def no_ipv4(*args, **kwargs):
        raise OSError(97, "Address family not supported by protocol")

    monkeypatch.setattr(socket, "socket", no_ipv4)
    assert init.coordinator_port_problem("localhost:1234") is None


def test_a_previous_runs_closed_connections_do_not_hold_the_coordinator_port():
    import socket

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end stays in TIME_WAIT
        client.close()
    assert init.coordinator_port_problem(f"localhost:{port}") is None


def test_yaml_and_cli_reach_the_distributed_config(tmp_path):
    path = tmp_path / "trainer.yaml"
    path.write_text(
        "distributed:\n  coordinator_address: localhost:1234\n  num_processes: 2\n"
        "  heartbeat_timeout_seconds: 20\n"
    )
    config = lm.config.parse(
        TrainerConfig,
        str(path),
        ["--distributed.process_id", "1", "--require_accelerator", "false"],
    )
    assert config.distributed == DistributedConfig(
        coordinator_address="localhost:1234",
        num_processes=2,
        process_id=1,
        heartbeat_timeout_seconds=20,
    )
