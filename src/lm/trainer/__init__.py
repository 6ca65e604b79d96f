"""The trainer: `TrainerConfig`, `Trainer`, state and hooks."""

from lm.trainer.config import DEFAULT_JAX_CONFIG, TrainerConfig
from lm.trainer.hooks import Callback, InsideStepInfo, JitCallback, TrainerHooks
from lm.trainer.state import StepInfo, TrainerState, saveable_state
from lm.trainer.trainer import NonFiniteLossError, Trainer
from lm.trainer.watch import WatchConfig

__all__ = [
    "DEFAULT_JAX_CONFIG",
    "Callback",
    "InsideStepInfo",
    "JitCallback",
    "NonFiniteLossError",
    "StepInfo",
    "Trainer",
    "TrainerConfig",
    "TrainerHooks",
    "TrainerState",
    "WatchConfig",
    "saveable_state",
]
