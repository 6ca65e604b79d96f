"""LayerNorm and RMSNorm with statistics in float32.

Haliax's norms compute in the input dtype; under a bf16 compute policy that loses
precision in the variance. These keep the HF behaviour: statistics in float32, the
normalised value cast back to the input dtype, then scaled by the (possibly bf16) weight.
State-dict keys are `weight` and `bias`, as in torch.
"""

from __future__ import annotations

import equinox as eqx
import haliax as hax
import jax.numpy as jnp
from haliax import NamedArray
from haliax.axis import AxisSpec
from haliax.state_dict import ModuleWithStateDictSerialization


class LayerNorm(ModuleWithStateDictSerialization):
    """Mean/variance normalisation over `axis`, with optional affine weight and bias."""

    weight: NamedArray | None
    bias: NamedArray | None
    axis: AxisSpec = eqx.field(static=True)
    eps: float = eqx.field(static=True, default=1e-5)

    @staticmethod
    def init(
        axis: AxisSpec, *, eps: float = 1e-5, use_weight: bool = True, use_bias: bool = True
    ) -> LayerNorm:
        weight = hax.ones(axis) if use_weight else None
        bias = hax.zeros(axis) if use_bias else None
        return LayerNorm(weight, bias, axis, eps)

    def __call__(self, x: NamedArray) -> NamedArray:
        in_dtype = x.dtype
        x32 = x.astype(jnp.float32)
        mean = x32.mean(self.axis)
        var = hax.square(x32 - mean).mean(self.axis)
        out = ((x32 - mean) * hax.rsqrt(var + self.eps)).astype(in_dtype)
        if self.weight is not None:
            out = self.weight * out
        if self.bias is not None:
            out = out + self.bias
        return out


class RmsNorm(ModuleWithStateDictSerialization):
    """Root-mean-square normalisation over `axis` (Llama's `LlamaRMSNorm`)."""

    weight: NamedArray | None
    bias: NamedArray | None
    axis: AxisSpec = eqx.field(static=True)
    eps: float = eqx.field(static=True, default=1e-6)

    @staticmethod
    def init(
        axis: AxisSpec, *, eps: float = 1e-6, use_weight: bool = True, use_bias: bool = False
    ) -> RmsNorm:
        weight = hax.ones(axis) if use_weight else None
        bias = hax.zeros(axis) if use_bias else None
        return RmsNorm(weight, bias, axis, eps)

    def __call__(self, x: NamedArray) -> NamedArray:
        in_dtype = x.dtype
        x32 = x.astype(jnp.float32)
        var = hax.square(x32).mean(self.axis)
        out = (x32 * hax.rsqrt(var + self.eps)).astype(in_dtype)
        if self.weight is not None:
            out = self.weight * out
        if self.bias is not None:
            out = out + self.bias
        return out
