"""`trainer.shutdown_at_exit` (TRN-03): power a TPU VM off a few minutes after training exits.

`True` means 300 seconds, a number means that many seconds, `False` means never. The trainer
calls `register_shutdown_at_exit(config.shutdown_at_exit)` when it initializes; on a TPU VM it
registers an `atexit` handler that runs `sudo shutdown -h +<minutes>` (minutes rounded up, as
`shutdown` only takes whole minutes), which leaves time to copy logs or cancel with
`sudo shutdown -c`. Anywhere else, and inside a container (which cannot power off its host),
it only logs a warning.
"""

from __future__ import annotations

import atexit
import dataclasses
import glob
import logging
import math
import os
from collections.abc import Callable, Mapping

from lm.launch.executor import Command, Executor, SubprocessExecutor

logger = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_DELAY_S = 300.0
"""The delay `shutdown_at_exit: true` stands for."""

# Set by the TPU runtime / `tpu-env` metadata on Cloud TPU VMs.
TPU_ENV_VARS = ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES")


def shutdown_delay_seconds(value: bool | float | int) -> float | None:
    """Validate a `shutdown_at_exit` value and turn it into seconds (None: no shutdown).

    Raises:
        ValueError: `value` is negative, not finite, or not a bool or number.
    """
    if isinstance(value, bool):
        return DEFAULT_SHUTDOWN_DELAY_S if value else None
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"shutdown_at_exit: got {value!r}, expected true (shut down 300 s after exit), "
            "false, or a number of seconds >= 0"
        )
    return float(value)


def shutdown_command(delay_s: float) -> Command:
    """`sudo shutdown -h +M` with M = `delay_s` rounded up to whole minutes."""
    minutes = math.ceil(delay_s / 60)
    return Command.plain("sudo", "shutdown", "-h", f"+{minutes}")


@dataclasses.dataclass(frozen=True)
class HostProbe:
    """Reads what identifies a Cloud TPU VM; `root` and `environ` are injectable for tests.

    A TPU VM is a Google Compute Engine machine (`/sys/class/dmi/id/product_name` says
    "Google") with TPU devices (`/dev/accel*` on v2-v4, `/dev/vfio/<n>` on v5+) or the TPU
    runtime's environment variables. No network (metadata server) access.
    """

    root: str = "/"
    environ: Mapping[str, str] | None = None

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _env(self) -> Mapping[str, str]:
        return os.environ if self.environ is None else self.environ

    def is_google_cloud_vm(self) -> bool:
        try:
            with open(self._path("/sys/class/dmi/id/product_name")) as f:
                return "Google" in f.read()
        except OSError:
            return False

    def has_tpu(self) -> bool:
        env = self._env()
        if any(env.get(name) for name in TPU_ENV_VARS):
            return True
        devices = glob.glob(self._path("/dev/accel*")) + glob.glob(self._path("/dev/vfio/[0-9]*"))
        return bool(devices)

    def is_tpu_vm(self) -> bool:
        return self.is_google_cloud_vm() and self.has_tpu()

    def in_container(self) -> bool:
        return os.path.exists(self._path("/.dockerenv")) or os.path.exists(
            self._path("/run/.containerenv")
        )


def register_shutdown_at_exit(
    value: bool | float | int,
    *,
    probe: HostProbe | None = None,
    executor: Executor | None = None,
    register: Callable[[Callable[[], None]], object] = atexit.register,
) -> Command | None:
    """Arrange for this TPU VM to shut down `value` after the process exits (see module doc).

    Args:
        value: `trainer.shutdown_at_exit`: False, True (300 s) or seconds.
        probe: host detection (default: this machine).
        executor: runs the shutdown command at exit (default: a subprocess).
        register: `atexit.register`; tests pass a recorder.

    Returns:
        The command that will run at exit, or None when nothing was registered.
    """
    delay = shutdown_delay_seconds(value)
    if delay is None:
        return None
    probe = probe or HostProbe()
    if not probe.is_tpu_vm():
        logger.warning("shutdown_at_exit=%r is ignored: this machine is not a Cloud TPU VM", value)
        return None
    if probe.in_container():
        logger.warning(
            "shutdown_at_exit=%r is ignored: running inside a container, which cannot power "
            "off the TPU VM (python -m lm.launch.tpu deletes the TPU itself when the run ends)",
            value,
        )
        return None
    command = shutdown_command(delay)
    executor = executor or SubprocessExecutor()

    def shut_down() -> None:
        logger.warning("shutdown_at_exit: scheduling `%s` (cancel: sudo shutdown -c)", command)
        status = executor.run(command)
        if status != 0:
            logger.error("shutdown_at_exit: `%s` failed with exit status %d", command, status)

    register(shut_down)
    logger.info(
        "shutdown_at_exit: this TPU VM will shut down %d minute(s) after the process exits",
        math.ceil(delay / 60),
    )
    return command
