"""Launching on Cloud TPU VMs, and `shutdown_at_exit`.

    python -m lm.launch.tpu [--dry-run] -- python -m lm.main.train_lm --config_path run.yaml

Modules:
    config      `LaunchConfig`: the `.lm.yaml` schema; `load_launch_config(path, overrides)`.
    commands    the gcloud/docker argv lists of a launch, pure functions of a `LaunchPlan`.
    executor    `Command`, `Executor` (run / capture), `SubprocessExecutor`, `PrintingExecutor`.
    tpu         `TpuLauncher` (build, create, run, retry on preemption, tear down) and the CLI.
    shutdown    `register_shutdown_at_exit(value)` for `trainer.shutdown_at_exit` (TRN-03).
"""

from lm.launch.config import LaunchConfig, load_launch_config
from lm.launch.executor import (
    Command,
    Executor,
    LaunchError,
    PrintingExecutor,
    SubprocessExecutor,
)
from lm.launch.shutdown import (
    HostProbe,
    register_shutdown_at_exit,
    shutdown_command,
    shutdown_delay_seconds,
)

__all__ = [
    "Command",
    "Executor",
    "HostProbe",
    "LaunchConfig",
    "LaunchError",
    "PrintingExecutor",
    "SubprocessExecutor",
    "load_launch_config",
    "register_shutdown_at_exit",
    "shutdown_command",
    "shutdown_delay_seconds",
]
