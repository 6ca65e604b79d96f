"""`DistributedConfig.initialize`: when it starts jax.distributed, and with what arguments.

`jax.distributed.initialize` is replaced by a recorder (the real one is exercised by
test_multiprocess_training.py, in subprocesses)."""

from __future__ import annotations

import logging

import jax
import pytest

import lm.config
from lm.distributed import DistributedConfig
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
        dict(
            coordinator_address="10.0.0.1:1234",
            num_processes=4,
            process_id=3,
            local_device_ids=[1],
            initialization_timeout=60,
            heartbeat_timeout_seconds=15,
            shutdown_timeout_seconds=30,
        )
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
        (dict(num_processes=0), "num_processes must be >= 1, got 0"),
        (
            dict(num_processes=2, process_id=2),
            r"process_id \(2\) must be in \[0, num_processes=2\)",
        ),
        (dict(heartbeat_timeout_seconds=0), "heartbeat_timeout_seconds must be a whole number"),
        (dict(shutdown_timeout_seconds=2.5), "shutdown_timeout_seconds must be a whole number"),
    ],
)
def test_invalid_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistributedConfig(**kwargs)


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
