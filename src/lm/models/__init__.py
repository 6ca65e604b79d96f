"""Model zoo: configs (`LmConfig` registry), models, attention, losses, HF conversion.

Importing this package registers every architecture under its `type:` key.
"""

from lm.jax_compat import install as _install_jax_compat
from lm.models.gpt2 import Gpt2Config, Gpt2LMHeadModel
from lm.models.hf.compat import HFCompatConfig
from lm.models.layers.activations import ActivationFunctionEnum
from lm.models.layers.attention import AttentionBackend, AttentionMask
from lm.models.layers.rotary import (
    DefaultRotaryEmbeddingsConfig,
    LinearRotaryEmbeddingsConfig,
    Llama3RotaryEmbeddingsConfig,
    RotaryEmbeddingsConfig,
    YarnRotaryEmbeddingsConfig,
)
from lm.models.llama import LlamaConfig, LlamaLMHeadModel
from lm.models.lm_model import LmConfig, LmExample, LmHeadModel
from lm.models.loss import compute_next_token_loss, compute_next_token_loss_and_metrics
from lm.models.mistral import MistralConfig
from lm.models.qwen import Qwen2Config, Qwen3Config

_install_jax_compat()  # haliax's matmuls on newer JAX (see lm.jax_compat)

__all__ = [
    "ActivationFunctionEnum",
    "AttentionBackend",
    "AttentionMask",
    "DefaultRotaryEmbeddingsConfig",
    "Gpt2Config",
    "Gpt2LMHeadModel",
    "HFCompatConfig",
    "LinearRotaryEmbeddingsConfig",
    "Llama3RotaryEmbeddingsConfig",
    "LlamaConfig",
    "LlamaLMHeadModel",
    "LmConfig",
    "LmExample",
    "LmHeadModel",
    "MistralConfig",
    "Qwen2Config",
    "Qwen3Config",
    "RotaryEmbeddingsConfig",
    "YarnRotaryEmbeddingsConfig",
    "compute_next_token_loss",
    "compute_next_token_loss_and_metrics",
]
