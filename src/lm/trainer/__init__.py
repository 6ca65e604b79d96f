"""The trainer: `TrainerConfig`, `Trainer`, state and hooks.

Exports are resolved lazily, so `lm.trainer.state` (imported by lm.checkpoint) can be loaded
without pulling in the trainer config and its dependencies.
"""

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_JAX_CONFIG": "lm.trainer.config",
    "NoAcceleratorError": "lm.trainer.config",
    "TrainerConfig": "lm.trainer.config",
    "Callback": "lm.trainer.hooks",
    "InsideStepInfo": "lm.trainer.hooks",
    "JitCallback": "lm.trainer.hooks",
    "TrainerHooks": "lm.trainer.hooks",
    "StepInfo": "lm.trainer.state",
    "TrainerState": "lm.trainer.state",
    "saveable_state": "lm.trainer.state",
    "NonFiniteLossError": "lm.trainer.trainer",
    "Preempted": "lm.trainer.trainer",
    "Trainer": "lm.trainer.trainer",
    "WatchConfig": "lm.trainer.watch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lm.trainer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
