"""Multi-process JAX: `jax.distributed` initialisation (DST-01, DST-03).

JAX detects SLURM and Cloud TPU clusters by itself; `DistributedConfig` is for clusters it
cannot detect (several GPU hosts started by hand, or several CPU processes on one machine
for tests). It must run before anything asks jax for devices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

import jax

logger = logging.getLogger(__name__)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    coordinator_address: str | None = None
    """host:port of process 0's coordinator. None: auto-detect (SLURM, TPU) or single process."""
    num_processes: int | None = None
    """Total number of processes. None: auto-detect."""
    process_id: int | None = None
    """This process's index in [0, num_processes). None: auto-detect."""
    local_device_ids: int | list[int] | None = None
    """Devices this process drives (e.g. one GPU per process). None: all visible devices."""
    initialize_jax_distributed: bool = True
    """Whether to call `jax.distributed.initialize` at all."""
    initialization_timeout_seconds: int = 300
    """How long a process waits for all the others to connect to the coordinator."""
    heartbeat_timeout_seconds: int = 100
    """A process that sent no heartbeat for this long is dead: the coordinator then stops every
    other process (with an error naming the dead task) instead of letting them hang in a
    collective. Lower it to fail faster; too low and a busy host (a long compile, a swap
    storm) is declared dead."""
    shutdown_timeout_seconds: int = 300
    """At exit, how long a process waits for the others to reach shutdown too."""

    def __post_init__(self):
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(
                f"trainer.distributed.num_processes must be >= 1, got {self.num_processes}"
            )
        if self.process_id is not None and self.num_processes is not None:
            if not 0 <= self.process_id < self.num_processes:
                raise ValueError(
                    f"trainer.distributed.process_id ({self.process_id}) must be in [0, "
                    f"num_processes={self.num_processes})"
                )
        for name in (
            "initialization_timeout_seconds",
            "heartbeat_timeout_seconds",
            "shutdown_timeout_seconds",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"trainer.distributed.{name} must be a whole number of seconds >= 1, got {value!r}"
                )

    @property
    def is_manual(self) -> bool:
        return self.coordinator_address is not None or self.num_processes is not None

    def _detected_cluster(self) -> str | None:
        if "SLURM_JOB_ID" in os.environ and _env_int("SLURM_NTASKS") not in (None, 1):
            return "slurm"
        if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"):
            return "tpu"
        if os.environ.get("OMPI_COMM_WORLD_SIZE") not in (None, "1"):
            return "mpi"
        return None

    def initialize(self) -> None:
        """Start `jax.distributed` if this is a multi-process run (idempotent)."""
        if not self.initialize_jax_distributed:
            return
        if jax.distributed.is_initialized():
            return
        cluster = self._detected_cluster()
        if cluster == "tpu" and self.is_manual:
            logger.warning(
                "trainer.distributed is set on a TPU VM; JAX configures TPU pods itself and manual "
                "settings are usually wrong there"
            )
        if not self.is_manual and cluster is None:
            return  # a single process: nothing to do
        device_ids = self.local_device_ids
        if isinstance(device_ids, int):
            device_ids = [device_ids]
        # Printed as well as logged: logging is configured only after this returns (the run
        # id needs the other processes), and a wrong address or process count waits here
        # for initialization_timeout_seconds before jax aborts the process.
        message = (
            f"Connecting to the jax.distributed coordinator ({cluster or 'manual'}): "
            f"coordinator={self.coordinator_address or 'auto'} "
            f"num_processes={self.num_processes or 'auto'} "
            f"process_id={'auto' if self.process_id is None else self.process_id}; waiting up "
            f"to {self.initialization_timeout_seconds}s for every process "
            "(trainer.distributed.initialization_timeout_seconds). If it times out, check "
            "coordinator_address, num_processes and process_id on every process."
        )
        logger.info("%s", message)
        print(message, file=sys.stderr, flush=True)
        jax.distributed.initialize(
            coordinator_address=self.coordinator_address,
            num_processes=self.num_processes,
            process_id=self.process_id,
            local_device_ids=device_ids,
            initialization_timeout=self.initialization_timeout_seconds,
            heartbeat_timeout_seconds=self.heartbeat_timeout_seconds,
            shutdown_timeout_seconds=self.shutdown_timeout_seconds,
        )
