"""Mistral (`type: mistral`): Llama with grouped-query attention over a sliding window,
compatible with HF `MistralForCausalLM`.

Everything but the window is the Llama code (`lm.models.llama`); query i attends to keys
j with i - sliding_window < j <= i. Defaults are Mistral-7B-v0.1 (seq_len 8192).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from lm.config import FieldError, invalid
from lm.models.llama import LlamaConfig
from lm.models.lm_model import LmConfig


@LmConfig.register_subclass("mistral")
@dataclasses.dataclass(frozen=True)
class MistralConfig(LlamaConfig):
    seq_len: int = 8192
    intermediate_dim: int = 14336
    num_kv_heads: int = 8
    layer_norm_epsilon: float = 1e-6
    sliding_window: int | None = 4096
    """Keys within this many positions of the query (itself included); None: full causal."""
    reference_checkpoint: str = "mistralai/Mistral-7B-v0.1"

    hf_architecture: ClassVar[str] = "MistralForCausalLM"
    hf_model_type: ClassVar[str] = "mistral"

    def _field_problems(self) -> list[FieldError]:
        problems = super()._field_problems()
        if self.sliding_window is not None and self.sliding_window <= 0:
            problems.append(
                invalid("sliding_window", self.sliding_window, "a positive int or null")
            )
        if self.use_bias:
            problems.append(
                FieldError(
                    "use_bias",
                    "true is not part of Mistral (HF Mistral has no biases); use type: llama",
                )
            )
        return problems

    @classmethod
    def _hf_config_class(cls):
        from transformers import MistralConfig as HfMistralConfig

        return HfMistralConfig

    def to_hf_config(self, vocab_size: int, config_overrides=None):
        self._check_hf_expressible()
        hf = self._hf_config_class()(
            **self._hf_kwargs(vocab_size), sliding_window=self.sliding_window
        )
        for k, v in (config_overrides or {}).items():
            setattr(hf, k, v)
        return hf

    @classmethod
    def from_hf_config(cls, hf_config) -> MistralConfig:
        kwargs: dict[str, Any] = cls._kwargs_from_hf(hf_config)
        return cls(**kwargs, sliding_window=getattr(hf_config, "sliding_window", None))
