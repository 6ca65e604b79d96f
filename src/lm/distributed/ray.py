"""Ray for distributed preprocessing (`trainer.ray` / `ray:`): `RayConfig`.

By default a private Ray cluster is started when something needs one (building a tokenized
cache with `cache_options.backend: ray`), even if another cluster is running or RAY_ADDRESS is
set: lm joins an existing cluster only through `address` (`auto`: the one named by
RAY_ADDRESS, else the one `ray start --head` started on this machine).
`auto_start_cluster: false` starts nothing.

A locally started cluster gets this checkout's `src` directory first on its workers'
PYTHONPATH, so workers import the same `lm` as the driver, and no dashboard (it costs
memory and a port). It keeps Ray's default token authentication (the token is in
`~/.ray/auth_token`); Ray's warning that it is on, printed at every start, is left out.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import warnings

from lm.config.errors import FieldError

logger = logging.getLogger(__name__)

# Ray warns at every start of a local cluster that its default, token authentication, is on
# and how to turn it off; lm keeps that default and leaves the warning out of its output.
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_RAY_AUTH_DEFAULT_WARNING = "Token authentication is enabled for this Ray cluster"


class _WithoutDefaultAuthWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_RAY_AUTH_DEFAULT_WARNING)


@dataclasses.dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    """The Ray cluster to connect to (`ray://host:10001`, `host:6379`, or `auto`: the one
    RAY_ADDRESS names, else the one `ray start --head` started on this machine); None starts
    a private local cluster when one is needed (if `auto_start_cluster`). RAY_ADDRESS alone
    is not used: it must be asked for with `auto`."""
    start_workers: bool = True
    """Whether the private cluster this process starts gets this machine's CPUs. If false, its
    head has none and its tasks wait until you attach workers yourself (the command to run,
    `ray start --address ...`, is logged when the head starts)."""
    auto_start_cluster: bool = True
    """Start a private local Ray cluster when one is needed and `address` is unset (a running
    cluster is never joined without `address`)."""

    def __post_init__(self):
        if self.address is not None and not self.address.strip():
            raise FieldError("address", "must be a non-empty address or null")

    def initialize(self) -> bool:
        """Connect to (or start) Ray. Returns whether Ray is now initialized.

        Idempotent: an already initialized Ray is kept as is.
        """
        import ray

        if ray.is_initialized():
            return True
        if self.address is not None:
            logger.info("Connecting to the Ray cluster at %s", self.address)
            check_reachable(self.address)
            ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=True)
            return True
        if not self.auto_start_cluster:
            logger.info(
                "Not starting Ray: trainer.ray.address is unset and "
                "trainer.ray.auto_start_cluster is false"
            )
            return False
        src = str(pathlib.Path(__file__).resolve().parents[2])
        paths = [src, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
        pythonpath = os.pathsep.join(dict.fromkeys(p for p in paths if p))
        kwargs = {}
        if not self.start_workers:
            # A head with no CPUs: tasks wait until you attach workers yourself.
            kwargs["num_cpus"] = 0
        logger.info("Starting a local Ray cluster")
        auth_logger = logging.getLogger(RAY_AUTH_LOGGER)
        quiet = _WithoutDefaultAuthWarning()
        auth_logger.addFilter(quiet)
        try:
            with warnings.catch_warnings():
                # Ray fork()s and immediately exec()s its daemons; JAX's warning about forking
                # a multithreaded process (when JAX is already running) does not apply.
                warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
                # address="local": always a new cluster of our own. Without it Ray would try
                # to join whatever /tmp/ray/ray_current_cluster names, which after a killed
                # run is a dead cluster (a ConnectionError instead of a fresh start).
                ray.init(
                    address="local",
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                    **kwargs,
                )
        finally:
            auth_logger.removeFilter(quiet)
        if not self.start_workers:
            logger.info("%s", attach_workers_message(ray.get_runtime_context().gcs_address))
        return True


def attach_workers_message(head_address: str) -> str:
    """What to do with the CPU-less head `start_workers: false` starts at `head_address`:
    nothing runs on it until workers join (the build waits at 0% meanwhile)."""
    return (
        f"Started a Ray head with no CPUs at {head_address} (trainer.ray.start_workers: false): "
        "its tasks wait until workers join. On each worker machine run `RAY_AUTH_MODE=token "
        f"ray start --address={head_address}` with this machine's Ray token there "
        "(~/.ray/auth_token, or RAY_AUTH_TOKEN), or set trainer.ray.start_workers: true to "
        "work on this machine's CPUs"
    )


def no_cluster_message() -> str:
    """The error for a Ray cache build with no cluster to run on (`auto_start_cluster: false`
    and no `address`): starting Ray by hand does not help, lm joins a running cluster only
    through `trainer.ray.address`."""
    return (
        "data.cache_options.backend is 'ray' but no Ray cluster is available: "
        "trainer.ray.address is unset and trainer.ray.auto_start_cluster is false, and lm "
        "joins a running cluster only through trainer.ray.address (not RAY_ADDRESS alone). "
        "Set trainer.ray.address (host:6379, ray://host:10001, or auto: the cluster "
        "RAY_ADDRESS names, else the one `ray start --head` started on this machine), set "
        "trainer.ray.auto_start_cluster: true to start a private one, or build in this process "
        "with data.cache_options.backend: local"
    )


RAY_CONNECT_TIMEOUT_S = 30.0


class RayUnreachable(RuntimeError):
    """Nothing answers at `trainer.ray.address`."""


def check_reachable(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """A `host:port` or `ray://host:port` address must accept TCP connections within
    `timeout_s`: `ray.init` retries an unreachable one for many minutes, printing C++
    warnings that never name the field. (`auto` and `local` are Ray's to resolve.)"""
    from lm.distributed.init import coordinator_address_problem, wait_for_port

    host_port = address.removeprefix("ray://")
    if "://" in host_port or coordinator_address_problem(host_port) is not None:
        return
    error = wait_for_port(host_port, timeout_s)
    if error is not None:
        raise RayUnreachable(
            f"trainer.ray.address: nothing answers at {address} within {timeout_s:.0f}s "
            f"({error}). Start the Ray cluster (`ray start --head`), fix the address, or unset "
            "it to start a local cluster"
        )


def shutdown_ray() -> None:
    """Shut down this process's Ray connection (and the local cluster it started)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
