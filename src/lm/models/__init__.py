"""Model zoo: configs (`LmConfig` registry), models, attention, losses, HF conversion.

Importing this package registers every architecture under its `type:` key.
"""

from lm.models.gpt2 import Gpt2Config, Gpt2LMHeadModel
from lm.models.hf.compat import HFCompatConfig
from lm.models.layers.activations import ActivationFunctionEnum
from lm.models.layers.attention import AttentionBackend, AttentionMask
from lm.models.lm_model import LmConfig, LmExample, LmHeadModel
from lm.models.loss import compute_next_token_loss, compute_next_token_loss_and_metrics

__all__ = [
    "ActivationFunctionEnum",
    "AttentionBackend",
    "AttentionMask",
    "Gpt2Config",
    "Gpt2LMHeadModel",
    "HFCompatConfig",
    "LmConfig",
    "LmExample",
    "LmHeadModel",
    "compute_next_token_loss",
    "compute_next_token_loss_and_metrics",
]
