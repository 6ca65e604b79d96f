"""lm's `Linear`: Haliax's `Linear` with a single trailing `In` axis contracted as a 2-D
matmul. Same values and gradients as Haliax's named dot in every layout; the 2-D form is
what the weight gradient sees."""

import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import all_eqns

from lm.models.layers.init import init_linear
from lm.models.layers.linear import Linear

Batch = hax.Axis("batch", 3)
Pos = hax.Axis("position", 5)
Embed = hax.Axis("embed", 8)
Mlp = hax.Axis("mlp", 12)
Heads = hax.Axis("heads", 2)
HeadSize = hax.Axis("head_size", 4)

CASES = {
    # name: (In, Out, out_first, x axes)
    "in_out": (Embed, Mlp, False, (Batch, Pos, Embed)),
    "out_in": (Embed, Mlp, True, (Batch, Pos, Embed)),
    "multi_out": (Embed, (Heads, HeadSize), True, (Batch, Pos, Embed)),
    "multi_in": ((Heads, HeadSize), Embed, False, (Batch, Pos, Heads, HeadSize)),
    "in_not_last": (Embed, Mlp, True, (Batch, Embed, Pos)),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_haliax_linear_values_and_gradients(case):
    In, Out, out_first, x_axes = CASES[case]
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    layer = init_linear(In, Out, key=k1, std=0.5, use_bias=True, out_first=out_first)
    assert isinstance(layer, Linear) and isinstance(layer, hnn.Linear)
    bias = hax.random.normal(k3, layer.bias.axes)
    layer = Linear(layer.weight, bias, layer.In, layer.Out)
    x = hax.random.normal(k2, x_axes)

    def loss(call, layer, x):
        y = call(layer, x)
        return hax.sin(y).sum().array, y

    (ours, y), grads = jax.value_and_grad(
        lambda lin, x: loss(Linear.__call__, lin, x), argnums=(0, 1), has_aux=True
    )(layer, x)
    (ref, y_ref), ref_grads = jax.value_and_grad(
        lambda lin, x: loss(hnn.Linear.__call__, lin, x), argnums=(0, 1), has_aux=True
    )(layer, x)
    assert set(y.axes) == set(y_ref.axes)
    np.testing.assert_allclose(y.rearrange(y_ref.axes).array, y_ref.array, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["in_out", "out_in", "multi_out"])
def test_single_trailing_input_axis_is_one_matrix_product(case):
    """Forward and both backward products contract exactly one axis of 2-D operands: the
    weight gradient contracts the flattened tokens, not (batch, position) at once."""
    In, Out, out_first, x_axes = CASES[case]
    layer = init_linear(
        In, Out, key=jax.random.PRNGKey(0), std=0.5, use_bias=False, out_first=out_first
    )
    x = hax.random.normal(jax.random.PRNGKey(1), x_axes)
    jaxpr = jax.make_jaxpr(jax.grad(lambda lin, x: hax.sin(lin(x)).sum().array, argnums=(0, 1)))(
        layer, x
    )
    dots = [e for e in all_eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert len(dots) == 3  # forward, input gradient, weight gradient
    for e in dots:
        (lhs_contract, rhs_contract), _ = e.params["dimension_numbers"]
        assert [v.aval.ndim for v in e.invars] == [2, 2]
        assert len(lhs_contract) == len(rhs_contract) == 1


def test_bf16_input_with_float32_weight_promotes_like_haliax():
    layer = init_linear(Embed, Mlp, key=jax.random.PRNGKey(0), std=0.5, use_bias=False)
    x = hax.random.normal(jax.random.PRNGKey(1), (Batch, Pos, Embed)).astype(jnp.bfloat16)
    assert layer(x).dtype == hnn.Linear.__call__(layer, x).dtype == jnp.float32
