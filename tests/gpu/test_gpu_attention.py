"""Attention on a GPU in bfloat16: `nvte` (cuDNN's fused kernels) and `jax_flash` against
`vanilla` in float32. Deselected by default (marker `gpu`); on a GPU machine:

    JAX_PLATFORMS=cuda python -m pytest -m gpu tests/gpu

(`bench/gpu_check.sh` runs them with the GPU benchmark.) Skipped where JAX has no GPU.
"""

import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models.layers.attention import AttentionMask, dot_product_attention

pytestmark = pytest.mark.gpu

Batch = hax.Axis("batch", 2)
Pos = hax.Axis("position", 512)
KPos = Pos.alias("key_position")
KvHeads = hax.Axis("kv_head", 2)
Group = hax.Axis("q_heads_per_group", 4)
HeadSize = hax.Axis("head_size", 64)

# bfloat16 keeps 8 bits of mantissa: outputs and gradients of unit-scale attention agree with
# float32 to a few 1e-3; 3e-2 leaves room for accumulation order, not for a wrong mask
ATOL = 3e-2


@pytest.fixture(autouse=True)
def _needs_gpu():
    if jax.default_backend() != "gpu":
        pytest.skip("needs a GPU (JAX_PLATFORMS=cuda)")


def _mask(kind: str) -> AttentionMask:
    if kind == "causal":
        return AttentionMask.causal()
    if kind == "window":
        return AttentionMask.causal(sliding_window=96)
    segments = np.repeat(np.array([[0, 1, 2, 3], [5, 5, 6, -1]]), Pos.size // 4, axis=1)
    return AttentionMask.causal().with_segment_ids(hax.named(jnp.asarray(segments), (Batch, Pos)))


def _inputs():
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    q = hax.random.normal(k1, (Batch, Pos, KvHeads, Group, HeadSize))
    k = hax.random.normal(k2, (Batch, KPos, KvHeads, HeadSize))
    v = hax.random.normal(k3, (Batch, KPos, KvHeads, HeadSize))
    cotangent = hax.random.normal(k4, (Batch, Pos, KvHeads, Group, HeadSize))
    return q, k, v, cotangent


def _attend(backend, mask, q, k, v, cotangent):
    def f(q, k, v):
        out = dot_product_attention(
            Pos.name, KPos.name, HeadSize.name, q, k, v, mask, backend=backend
        )
        return (out.astype(jnp.float32) * cotangent).sum().array, out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@pytest.mark.parametrize("mask_kind", ["causal", "window", "segments"])
@pytest.mark.parametrize("backend", ["nvte", "jax_flash"])
def test_bf16_attention_matches_float32_vanilla(backend, mask_kind):
    q, k, v, cotangent = _inputs()
    mask = _mask(mask_kind)
    ref_out, ref_grads = _attend("vanilla", mask, q, k, v, cotangent)
    half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out, grads = _attend(backend, mask, *half, cotangent)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(out.array, np.float32), np.asarray(ref_out.array), atol=ATOL, rtol=ATOL
    )
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(
            np.asarray(got.array, np.float32), np.asarray(want.array), atol=ATOL, rtol=ATOL
        )
