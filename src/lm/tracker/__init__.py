"""Trackers: where hyperparameters, metrics and artifacts go (`trainer.tracker`)."""

from lm.tracker.base import (
    CompositeTracker,
    Histogram,
    NoopConfig,
    NoopTracker,
    Tracker,
    TrackerConfig,
    build_tracker,
    capture_metrics,
    current_tracker,
    get_tracker,
    log,
    log_hyperparameters,
    log_summary,
)
from lm.tracker.json_logger import JsonLogger, JsonLoggerConfig, read_json_log

__all__ = [
    "CompositeTracker",
    "Histogram",
    "JsonLogger",
    "JsonLoggerConfig",
    "NoopConfig",
    "NoopTracker",
    "Tracker",
    "TrackerConfig",
    "build_tracker",
    "capture_metrics",
    "current_tracker",
    "get_tracker",
    "log",
    "log_hyperparameters",
    "log_summary",
    "read_json_log",
]
