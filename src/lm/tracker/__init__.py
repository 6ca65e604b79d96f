"""Trackers: where hyperparameters, metrics and artifacts go (`trainer.tracker`).

Registered `type:` keys: `wandb` (the default), `tensorboard`, `json`, `noop`. A YAML list
under `tracker:` builds a `CompositeTracker`. The TensorBoard writer needs the `profiling`
extra only when used; W&B and TensorBoard are imported lazily.
"""

from lm.tracker.base import (
    CompositeTracker,
    Histogram,
    NoopConfig,
    NoopTracker,
    Tracker,
    TrackerConfig,
    TrackerInitError,
    build_tracker,
    capture_metrics,
    config_to_hparams,
    current_tracker,
    get_tracker,
    log,
    log_hyperparameters,
    log_summary,
)
from lm.tracker.console import ProgressReporter
from lm.tracker.deprecations import move_deprecated_wandb
from lm.tracker.jit_artifacts import log_jaxpr, log_xla_hlo
from lm.tracker.json_logger import JsonLogger, JsonLoggerConfig, read_json_log
from lm.tracker.logs import configure_logging
from lm.tracker.scrub import scrub_secrets, scrub_text
from lm.tracker.tensorboard import TensorboardConfig, TensorboardTracker
from lm.tracker.viz import plot_run
from lm.tracker.wandb import WandbConfig, WandbTracker, resolve_run_id_from_env

__all__ = [
    "CompositeTracker",
    "Histogram",
    "JsonLogger",
    "JsonLoggerConfig",
    "NoopConfig",
    "NoopTracker",
    "ProgressReporter",
    "TensorboardConfig",
    "TensorboardTracker",
    "Tracker",
    "TrackerConfig",
    "TrackerInitError",
    "WandbConfig",
    "WandbTracker",
    "build_tracker",
    "capture_metrics",
    "config_to_hparams",
    "configure_logging",
    "current_tracker",
    "get_tracker",
    "log",
    "log_hyperparameters",
    "log_jaxpr",
    "log_summary",
    "log_xla_hlo",
    "move_deprecated_wandb",
    "plot_run",
    "read_json_log",
    "resolve_run_id_from_env",
    "scrub_secrets",
    "scrub_text",
]
