"""LayerNorm and RMSNorm with statistics in float32.

Haliax's norms compute in the input dtype; under a bf16 compute policy that loses
precision in the variance. These keep the HF behaviour: statistics in float32, the
normalised value cast back to the input dtype, then scaled by the (possibly bf16) weight.
Both subclass Haliax's `LayerNormBase` (fields `axis`, `weight`, `bias`, `eps`, `dtype`;
`init(axis, eps, *, use_weight, use_bias)`), so code that recognises Haliax norms (e.g.
weight-decay masks) recognises these, and state-dict keys are `weight` and `bias`.
"""

from __future__ import annotations

import haliax as hax
import jax.numpy as jnp
from haliax import NamedArray
from haliax.nn.normalization import LayerNormBase


class LayerNorm(LayerNormBase):
    """Mean/variance normalisation over `axis`, with optional affine weight and bias."""

    def __call__(self, x: NamedArray) -> NamedArray:
        in_dtype = x.dtype
        x32 = x.astype(jnp.float32)
        mean = x32.mean(self.axis)
        var = hax.square(x32 - mean).mean(self.axis)
        out = ((x32 - mean) * hax.rsqrt(var + self.eps)).astype(in_dtype)
        return _affine(self, out)


class RmsNorm(LayerNormBase):
    """Root-mean-square normalisation over `axis` (Llama's `LlamaRMSNorm`)."""

    def __call__(self, x: NamedArray) -> NamedArray:
        in_dtype = x.dtype
        x32 = x.astype(jnp.float32)
        var = hax.square(x32).mean(self.axis)
        out = (x32 * hax.rsqrt(var + self.eps)).astype(in_dtype)
        return _affine(self, out)


def _affine(norm: LayerNormBase, out: NamedArray) -> NamedArray:
    if norm.weight is not None:
        out = norm.weight * out
    if norm.bias is not None:
        out = out + norm.bias
    return out
