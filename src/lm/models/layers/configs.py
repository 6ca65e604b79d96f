"""Small frozen configs that describe one layer: a norm (`LayerNormConfig`) and an attention
block (`AttentionConfig`). Model configs derive them (`LlamaConfig.norm_config`,
`LlamaConfig.attention_config()`) and the layers are built from them, so research code can
build the same norm or attention block outside a full model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from haliax import Axis
from haliax.axis import AxisSpec

from lm.models.layers.attention import AttentionBackend
from lm.models.layers.normalization import LayerNorm, RmsNorm
from lm.models.layers.rotary import RotaryEmbeddingsConfig


@dataclasses.dataclass(frozen=True)
class LayerNormConfig:
    """A norm over one axis: RMSNorm (`kind: rms`, Llama) or LayerNorm (`kind: layer`)."""

    kind: Literal["rms", "layer"] = "rms"
    eps: float = 1e-5
    use_weight: bool = True
    use_bias: bool = False

    def __post_init__(self):
        if self.kind not in ("rms", "layer"):
            raise ValueError(f"norm kind must be 'rms' or 'layer', got {self.kind!r}")
        if self.eps <= 0:
            raise ValueError(f"norm eps must be positive, got {self.eps}")

    def build(self, axis: AxisSpec) -> RmsNorm | LayerNorm:
        cls = RmsNorm if self.kind == "rms" else LayerNorm
        return cls.init(axis, eps=self.eps, use_weight=self.use_weight, use_bias=self.use_bias)


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """One grouped-query attention block: its axes, projections, positions and kernel."""

    Embed: Axis
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    out_proj_bias: bool = False
    rope: RotaryEmbeddingsConfig | None = None
    """Rotary position embeddings on queries and keys; None applies none."""
    qk_norm: LayerNormConfig | None = None
    """A per-head norm on queries and keys before RoPE (Qwen3); None applies none."""
    sliding_window: int | None = None
    upcast_attn: bool = False
    attn_backend: AttentionBackend | None = None
    flash_attention_block_size: int | None = None
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if self.head_dim <= 0:
            raise ValueError(f"head_dim must be positive, got {self.head_dim}")

    KVHeads = property(lambda self: Axis("kv_head", self.num_kv_heads))
    QHeadsPerGroup = property(
        lambda self: Axis("q_heads_per_group", self.num_heads // self.num_kv_heads)
    )
    HeadSize = property(lambda self: Axis("head_size", self.head_dim))

    @property
    def q_axes(self) -> tuple[Axis, Axis, Axis]:
        return (self.KVHeads, self.QHeadsPerGroup, self.HeadSize)

    @property
    def kv_axes(self) -> tuple[Axis, Axis]:
        return (self.KVHeads, self.HeadSize)

    @property
    def scale(self) -> float:
        """Softmax scale: 1 / sqrt(head_dim)."""
        return 1.0 / math.sqrt(self.head_dim)
