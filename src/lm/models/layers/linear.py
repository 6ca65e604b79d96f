"""`Linear`: Haliax's `Linear` with its matmul done as one 2-D product.

Haliax contracts `x (batch, position, ..., In)` with the weight as a dot_general that keeps
every batch axis, so the weight's gradient contracts several leading axes (batch and
position) at once. XLA:CPU lowers that worse than a plain matrix product: transposed copies
of the activations' gradients and an Eigen matmul where YNNPACK could run. Here, for a
single `In` axis that trails `x` (every projection of the models but attention's output
projection), the leading axes are flattened first (a free reshape), so the forward is
`(tokens, in) x (in, out)` and the weight gradient contracts one token axis: the GPT-2
benchmark configs' loss + gradient about 5% (config 2) and 6-7% (config 1) faster, a small
Llama 26% (docs/benchmarks.md). Attention's output projection contracts (heads, head_size) of an
input the attention hands over transposed; flattened, XLA has to materialise that transpose
first, and config 2 measured 5% slower, so it, like any other case (a weight whose axes are
not `(In, Out...)` or `(Out..., In)`), keeps Haliax's named dot. Same parameters,
checkpoints and state-dict keys as `hnn.Linear` (a subclass, so code that recognises Haliax
linears recognises these).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
from haliax import Axis, NamedArray
from haliax.jax_utils import named_call
from haliax.quantization import DefaultDotGeneralOp, OverwriteWithGradient


def _axes(spec) -> tuple[Axis, ...]:
    return (spec,) if isinstance(spec, Axis) else tuple(spec)


def matmul(
    x: NamedArray,
    weight: NamedArray,
    In,
    Out,
    *,
    dot_general: Callable = jax.lax.dot_general,
) -> NamedArray:
    """`x . weight` contracting `In`: axes (x's other axes..., Out...), as a 2-D product
    when `In` is one axis, the last of `x`, and the weight is `(In, Out...)` or
    `(Out..., In)`; otherwise Haliax's named dot (see the module docstring)."""
    In, Out = _axes(In), _axes(Out)
    in_names = {ax.name for ax in In}
    lead = tuple(ax for ax in x.axes if ax.name not in in_names)
    w_axes = tuple(weight.axes)
    flat = len(In) == 1 and x.axes[-1] == In[0] and w_axes in ((*In, *Out), (*Out, *In))
    if not flat:
        return x.dot(weight, axis=In, dot_general=dot_general)
    k = math.prod(ax.size for ax in In)
    n = math.prod(ax.size for ax in Out)
    in_first = w_axes[: len(In)] == In
    dtype = jnp.result_type(x.dtype, weight.dtype)
    x2 = x.array.astype(dtype).reshape(-1, k)
    w2 = weight.array.astype(dtype).reshape((k, n) if in_first else (n, k))
    # precision and preferred_element_type given: Haliax's int8 op requires them
    y = dot_general(x2, w2, (((1,), (0 if in_first else 1,)), ((), ())), None, None)
    return hax.named(y.reshape(*(ax.size for ax in (*lead, *Out))), (*lead, *Out))


def project(
    x: NamedArray,
    weight: NamedArray,
    bias: NamedArray | None,
    In,
    Out,
    *,
    dot_general: Callable = jax.lax.dot_general,
) -> NamedArray:
    """A linear layer's steps on an already scaled weight (as `hnn.Linear.__call__` takes
    them): `matmul`, sharded by the axis mapping, plus the bias, sharded again."""
    out = hax.auto_sharded(matmul(x, weight, In, Out, dot_general=dot_general))
    if bias is not None:
        out = hax.auto_sharded(out + bias)
    return out


class Linear(hnn.Linear):
    """`hnn.Linear` whose call is `project` (see the module docstring)."""

    @named_call
    def __call__(self, inputs: NamedArray, *, key=None) -> NamedArray:
        del key
        weight = self.weight * self.reparam.active_scale
        return project(inputs, weight, self.bias, self.In, self.Out, dot_general=self.dot_general)


def dequantize(model: Any) -> Any:
    """`model` with every `Linear`'s quantized matmul (`trainer.quantization`: fp8 scales
    and amax histories, int8 settings) put back to the plain one; the weights are the same.
    For evaluation and HF export, where the quantization state is not part of the model."""

    def plain(x):
        if isinstance(x, hnn.Linear) and isinstance(x.dot_general, OverwriteWithGradient):
            return dataclasses.replace(x, dot_general=DefaultDotGeneralOp.init())
        return x

    return jax.tree_util.tree_map(plain, model, is_leaf=lambda x: isinstance(x, hnn.Linear))
