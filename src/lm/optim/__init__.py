"""Optimizers, learning-rate schedules, weight-decay masks and model averaging.

`OptimizerConfig` is a draccus choice registry (`type:` adam, lion, muon, adopt, sgd;
default adam); `config.build(num_train_steps)` returns the optax transformation.
"""

from lm.jax_compat import install as _install_jax_compat
from lm.optim.adam import AdamConfig
from lm.optim.adopt import AdoptConfig
from lm.optim.clipping import ClipUpdateNormConfig, clip_by_block_rms
from lm.optim.config import OptimizerConfig, current_learning_rate
from lm.optim.lion import LionConfig
from lm.optim.masks import ParamInfo, WeightDecayMask, map_params, param_infos
from lm.optim.model_averaging import (
    EmaDecaySqrtConfig,
    EmaDecaySqrtModelAveraging,
    EmaModelAveraging,
    EmaModelAveragingConfig,
    ModelAveraging,
    ModelAveragingConfig,
)
from lm.optim.muon import MuonConfig
from lm.optim.schedules import (
    ConstantLrSchedule,
    CosineLrSchedule,
    InvLrSchedule,
    InvSqrtLrSchedule,
    LinearLrSchedule,
    LrSchedule,
    LrScheduleContext,
    Phase,
    PowerLrSchedule,
)
from lm.optim.sgd import SgdConfig
from lm.optim.skip_step import SkipStepConfig

_install_jax_compat()  # haliax's matmuls on newer JAX (see lm.jax_compat)

__all__ = [
    "AdamConfig",
    "AdoptConfig",
    "ClipUpdateNormConfig",
    "ConstantLrSchedule",
    "CosineLrSchedule",
    "EmaDecaySqrtConfig",
    "EmaDecaySqrtModelAveraging",
    "EmaModelAveraging",
    "EmaModelAveragingConfig",
    "InvLrSchedule",
    "InvSqrtLrSchedule",
    "LinearLrSchedule",
    "LionConfig",
    "LrSchedule",
    "LrScheduleContext",
    "ModelAveraging",
    "ModelAveragingConfig",
    "MuonConfig",
    "OptimizerConfig",
    "ParamInfo",
    "Phase",
    "PowerLrSchedule",
    "SgdConfig",
    "SkipStepConfig",
    "WeightDecayMask",
    "clip_by_block_rms",
    "current_learning_rate",
    "map_params",
    "param_infos",
]
