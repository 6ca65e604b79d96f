"""Qwen2 (`type: qwen2`) and Qwen3 (`type: qwen3`): Llama variants compatible with HF
`Qwen2ForCausalLM` and `Qwen3ForCausalLM`.

- Qwen2: biases on the q/k/v projections (not on o_proj or the MLP).
- Qwen3: per-head RMSNorm on queries and keys before RoPE (`use_qk_norm`), an explicit
  `head_dim` (128), optional attention biases (`use_bias`, HF `attention_bias`), no MLP bias.
Per-layer sliding windows (HF `use_sliding_window` with `max_window_layers` below
`num_hidden_layers`, or `layer_types` naming `sliding_attention`) are not supported and
rejected on import; `use_sliding_window: true` with every layer below `max_window_layers`
is full attention in HF too and imports as such. Defaults follow HF's configs, with seq_len
4096.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lm.config import FieldError
from lm.models.llama import LlamaConfig
from lm.models.lm_model import LmConfig


def _check_no_sliding_layers(hf_config) -> None:
    """HF Qwen slides the window only on layers i >= max_window_layers (when
    use_sliding_window); `layer_types` spells that out per layer (transformers >= 4.53)."""
    if not getattr(hf_config, "use_sliding_window", False):
        return
    num_layers = hf_config.num_hidden_layers
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is None:
        first = getattr(hf_config, "max_window_layers", 0)
        layer_types = [
            "full_attention" if i < first else "sliding_attention" for i in range(num_layers)
        ]
    sliding = [i for i, t in enumerate(layer_types) if t == "sliding_attention"]
    if sliding:
        raise ValueError(
            f"HF use_sliding_window: true with max_window_layers "
            f"({getattr(hf_config, 'max_window_layers', None)}) below num_hidden_layers "
            f"({num_layers}) slides the window on layers {sliding}: per-layer sliding windows "
            "are not supported (max_window_layers >= num_hidden_layers is full attention and "
            "loads)"
        )


def _apply_overrides(hf, config_overrides):
    for k, v in (config_overrides or {}).items():
        setattr(hf, k, v)
    return hf


@LmConfig.register_subclass("qwen2")
@dataclasses.dataclass(frozen=True)
class Qwen2Config(LlamaConfig):
    seq_len: int = 4096
    intermediate_dim: int = 22016
    layer_norm_epsilon: float = 1e-6
    reference_checkpoint: str = "Qwen/Qwen2-7B"

    hf_architecture: ClassVar[str] = "Qwen2ForCausalLM"
    hf_model_type: ClassVar[str] = "qwen2"

    def _field_problems(self) -> list[FieldError]:
        problems = super()._field_problems()
        if self.use_bias:
            problems.append(
                FieldError(
                    "use_bias",
                    "must be false for qwen2: its q/k/v projections always have biases and "
                    "o_proj/MLP never do",
                )
            )
        return problems

    @property
    def qkv_bias(self) -> bool:
        return True

    @property
    def out_proj_bias(self) -> bool:
        return False

    @property
    def mlp_bias(self) -> bool:
        return False

    @classmethod
    def _hf_config_class(cls):
        from transformers import Qwen2Config as HfQwen2Config

        return HfQwen2Config

    def to_hf_config(self, vocab_size: int, config_overrides=None):
        self._check_hf_expressible()
        hf = self._hf_config_class()(**self._hf_kwargs(vocab_size), use_sliding_window=False)
        return _apply_overrides(hf, config_overrides)

    @classmethod
    def from_hf_config(cls, hf_config) -> Qwen2Config:
        _check_no_sliding_layers(hf_config)
        return cls(**cls._kwargs_from_hf(hf_config))


@LmConfig.register_subclass("qwen3")
@dataclasses.dataclass(frozen=True)
class Qwen3Config(LlamaConfig):
    seq_len: int = 4096
    intermediate_dim: int = 22016
    head_dim: int | None = 128
    layer_norm_epsilon: float = 1e-6
    use_qk_norm: bool = True
    reference_checkpoint: str = "Qwen/Qwen3-8B"

    hf_architecture: ClassVar[str] = "Qwen3ForCausalLM"
    hf_model_type: ClassVar[str] = "qwen3"

    @property
    def mlp_bias(self) -> bool:
        return False

    @classmethod
    def _hf_config_class(cls):
        from transformers import Qwen3Config as HfQwen3Config

        return HfQwen3Config

    def _check_hf_expressible(self, *, qk_norm_allowed: bool = True):
        if not self.use_qk_norm:
            raise ValueError("use_qk_norm: false has no HF Qwen3 equivalent; use type: llama")
        super()._check_hf_expressible(qk_norm_allowed=True)

    def to_hf_config(self, vocab_size: int, config_overrides=None):
        self._check_hf_expressible()
        hf = self._hf_config_class()(
            **self._hf_kwargs(vocab_size), attention_bias=self.use_bias, use_sliding_window=False
        )
        return _apply_overrides(hf, config_overrides)

    @classmethod
    def from_hf_config(cls, hf_config) -> Qwen3Config:
        _check_no_sliding_layers(hf_config)
        kwargs = cls._kwargs_from_hf(hf_config)
        return cls(
            **kwargs, use_qk_norm=True, use_bias=bool(getattr(hf_config, "attention_bias", False))
        )
