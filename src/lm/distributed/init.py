"""Multi-process JAX: `jax.distributed` initialisation (DST-01, DST-03).

JAX detects SLURM and Cloud TPU clusters by itself; `DistributedConfig` is for clusters it
cannot detect (several GPU hosts started by hand, or several CPU processes on one machine
for tests). It must run before anything asks jax for devices.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import sys
import threading
import time

import jax

from lm.config.errors import FieldError, is_count, raise_problems

logger = logging.getLogger(__name__)


def coordinator_address_problem(address: str) -> str | None:
    """What is wrong with a `host:port` coordinator address, or None."""
    if "://" in address:
        return "give no scheme (such as http://)"
    host, sep, port = address.rpartition(":")
    if not sep or not host.strip("[]"):
        return "it has no host:port form"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"the port {port!r} is not a number in 1..65535"
    return None


def coordinator_port_problem(address: str) -> str | None:
    """Why process 0 cannot serve the coordinator at `address` (host:port), or None.

    jax's coordination service listens on the port on every interface, with SO_REUSEPORT: a
    second process 0 (a process_id given twice) or another program already listening there
    does not make it fail, but splits the connections between the two listeners, and the
    processes then wait for one another until the timeout. A probe bind without
    SO_REUSEPORT fails at once while anything listens on the port."""
    _, _, port = address.rpartition(":")
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return None  # no IPv4 here to probe with: jax's own listener will say
    with probe:
        # a previous run's closed connections (TIME_WAIT) do not hold the port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", int(port)))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return (
                    f"port {port} is already in use on this host, where process 0 serves the "
                    "coordinator: is another process of this run also given process_id 0? "
                    "Otherwise pick a free port"
                )
            return f"process 0 cannot listen on port {port} here: {e.strerror or e}"
    return None


def wait_for_port(address: str, timeout_s: float) -> OSError | None:
    """Try TCP connections to `address` (host:port) until one is accepted (returns None) or
    `timeout_s` has passed (returns the last error)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
                return None
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            return last
        time.sleep(0.5)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once something accepts TCP connections at `address` (host:port), trying until
    `timeout_s`; else raise `CoordinatorUnreachable` naming the fields to check."""
    error = wait_for_port(address, timeout_s)
    if error is None:
        return
    raise CoordinatorUnreachable(
        f"cannot reach the jax.distributed coordinator at {address} (trainer.distributed."
        f"coordinator_address) within {timeout_s}s (trainer.distributed."
        f"initialization_timeout_seconds): {error}. Start process 0 (it serves the "
        "coordinator), and check the address and port on every process"
    )


class CoordinatorUnreachable(RuntimeError):
    """A process other than 0 could not connect to the coordinator in time."""


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
    """How long a process waits for all the others to connect to the coordinator; then it
    exits (status 1) with one line naming the settings to check."""
    heartbeat_timeout_seconds: int = 100
    """A process that sent no heartbeat for this long is dead: the coordinator then stops every
    other process (with an error naming the dead task) instead of letting them hang in a
    collective. Lower it to fail faster; too low and a busy host (a long compile, a swap
    storm) is declared dead."""
    shutdown_timeout_seconds: int = 300
    """At exit, how long a process waits for the others to reach shutdown too."""

    def __post_init__(self):
        problems: list[FieldError] = []
        if self.coordinator_address is not None:
            problem = coordinator_address_problem(self.coordinator_address)
            if problem is not None:
                problems.append(
                    FieldError(
                        "coordinator_address",
                        f"got {self.coordinator_address!r}, expected host:port (e.g. "
                        f"10.0.0.1:8476) with a port in 1..65535: {problem}",
                    )
                )
        num_processes_ok = self.num_processes is None or self.num_processes >= 1
        if not num_processes_ok:
            problems.append(FieldError("num_processes", f"must be >= 1, got {self.num_processes}"))
        if self.process_id is not None:
            if self.num_processes is not None and num_processes_ok:
                if not 0 <= self.process_id < self.num_processes:
                    problems.append(
                        FieldError(
                            "process_id",
                            f"({self.process_id}) must be in [0, num_processes="
                            f"{self.num_processes})",
                        )
                    )
            elif self.process_id < 0:
                problems.append(FieldError("process_id", f"must be >= 0, got {self.process_id}"))
        ids = [self.local_device_ids] if isinstance(self.local_device_ids, int) else None
        for i, device in enumerate(ids or self.local_device_ids or []):
            if not is_count(device, minimum=0):
                where = "local_device_ids" if ids else f"local_device_ids[{i}]"
                problems.append(FieldError(where, f"got {device!r}, expected a device index >= 0"))
        for name in (
            "initialization_timeout_seconds",
            "heartbeat_timeout_seconds",
            "shutdown_timeout_seconds",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(
                    FieldError(name, f"must be a whole number of seconds >= 1, got {value!r}")
                )
        raise_problems(problems)

    def _check_manual_settings(self) -> None:
        """Without a cluster jax detects (SLURM, TPU, MPI), a multi-process run is described
        by coordinator_address and num_processes together; a process_id or local_device_ids
        without them was ignored (the process trained alone, on every device)."""
        prefix = "trainer.distributed."
        if self.coordinator_address is not None and self.num_processes is None:
            raise FieldError(
                prefix + "num_processes",
                "is needed with coordinator_address (no cluster that jax detects by itself, "
                "such as SLURM or a TPU pod, was found)",
            )
        if self.num_processes not in (None, 1) and self.coordinator_address is None:
            raise FieldError(
                prefix + "coordinator_address",
                f"is needed with num_processes: {self.num_processes} (process 0's host:port; "
                "no cluster that jax detects by itself was found)",
            )
        if (
            self.num_processes not in (None, 1)
            and self.process_id is None
            # jax reads the process id of a Kubernetes JobSet pod from the pod itself
            and "KUBERNETES_SERVICE_HOST" not in os.environ
        ):
            raise FieldError(
                prefix + "process_id",
                f"is needed with num_processes: {self.num_processes} (no cluster that jax "
                "detects by itself was found to number the processes): give each process its "
                f"index in [0, {self.num_processes}), 0 for the one that serves the coordinator "
                f"at {self.coordinator_address}, e.g. --trainer.distributed.process_id 0",
            )
        if self.num_processes is None:
            for name in ("process_id", "local_device_ids"):
                if getattr(self, name) is not None:
                    raise FieldError(
                        prefix + name,
                        "is set, but this is a single-process run (no coordinator_address "
                        "and num_processes, and no cluster that jax detects by itself): it "
                        "would be ignored",
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
        if cluster is None:
            self._check_manual_settings()
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
        if cluster is None and self.process_id == 0 and self.coordinator_address is not None:
            problem = coordinator_port_problem(self.coordinator_address)
            if problem is not None:
                raise FieldError(
                    "trainer.distributed.coordinator_address",
                    f"{self.coordinator_address}: {problem}",
                )
        logger.info("%s", message)
        print(message, file=sys.stderr, flush=True)
        if cluster is None and self.process_id not in (None, 0):
            # jax aborts the process (a C++ check failure) when it cannot register with the
            # coordinator: wait for it here, within the same timeout, and say so in one line
            wait_for_coordinator(self.coordinator_address, self.initialization_timeout_seconds)
        # jax aborts the process with a C++ stack dump when the other processes do not all
        # join in time: the watchdog says so in one line first, and jax waits a little longer
        watchdog = threading.Timer(
            self.initialization_timeout_seconds, _exit_not_joined, args=(self, cluster)
        )
        watchdog.daemon = True
        watchdog.start()
        try:
            jax.distributed.initialize(
                coordinator_address=self.coordinator_address,
                num_processes=self.num_processes,
                process_id=self.process_id,
                local_device_ids=device_ids,
                initialization_timeout=self.initialization_timeout_seconds + JAX_TIMEOUT_GRACE_S,
                heartbeat_timeout_seconds=self.heartbeat_timeout_seconds,
                shutdown_timeout_seconds=self.shutdown_timeout_seconds,
            )
        finally:
            watchdog.cancel()


def coordination_client(purpose: str):
    """jax's client of the coordination service that `jax.distributed.initialize()` started
    (its key-value store and barriers need no device collective, so any thread may use them);
    None in a one-process run. `purpose` names what needs it, for the error when a
    multi-process run has no client."""
    if jax.process_count() == 1:
        return None
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError(f"{purpose} needs jax.distributed.initialize() to have run")
    return client


JAX_TIMEOUT_GRACE_S = 10
"""How much longer than `initialization_timeout_seconds` jax itself waits for the processes to
join: the watchdog that reports it (`_exit_not_joined`) fires first."""


def _exit_not_joined(config: DistributedConfig, cluster: str | None) -> None:
    """Runs in the watchdog thread when `jax.distributed.initialize` has not returned within
    `initialization_timeout_seconds`: say which settings to check and end the process at once
    (the main thread is blocked inside jax, which would abort with a C++ stack dump)."""
    if cluster is None:
        where = f"the jax.distributed coordinator at {config.coordinator_address}"
        who = f"process {config.process_id}"
        check = (
            "check num_processes, process_id and coordinator_address on every process, and "
            "that every process started"
        )
    else:
        where = f"the jax.distributed coordinator ({cluster} cluster, detected by jax)"
        who = "this process"
        check = "check that every process of the job started"
    total = f"{config.num_processes} " if config.num_processes is not None else ""
    print(
        f"error: trainer.distributed: not all {total}processes joined {where} within "
        f"{config.initialization_timeout_seconds}s (trainer.distributed."
        f"initialization_timeout_seconds; this is {who}): {check}",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(1)
