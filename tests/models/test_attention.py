import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import all_eqns

from lm.models.layers import attention as attention_module
from lm.models.layers import flash_attention
from lm.models.layers.attention import (
    CPU_DEFAULT_BACKEND,
    AttentionBackend,
    AttentionMask,
    dot_product_attention,
    resolve_attention_backend,
)

Batch = hax.Axis("batch", 2)
KvHeads = hax.Axis("kv_head", 2)
Group = hax.Axis("q_heads_per_group", 2)
HeadSize = hax.Axis("head_size", 8)


def _reference_mask(n, causal, window, segments):
    q = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    m = np.ones((n, n), dtype=bool)
    if causal:
        m &= k <= q
    if window is not None:
        m &= (q - k) < window
    if segments is not None:
        m = m[None] & (segments[:, :, None] == segments[:, None, :])
    return m


@pytest.mark.parametrize(
    "causal, window, use_segments", [(True, None, False), (True, 3, True), (False, None, True)]
)
def test_materialized_mask_matches_reference(causal, window, use_segments):
    Pos = hax.Axis("position", 10)
    segments = np.array([[0] * 4 + [1] * 6, [0] * 10]) if use_segments else None
    mask = AttentionMask(
        is_causal=causal,
        segment_ids=hax.named(jnp.array(segments), (Batch, Pos)) if use_segments else None,
        sliding_window=window,
    )
    got = mask.materialize(Pos, Pos.alias("key_position"))
    expected = _reference_mask(10, causal, window, segments)
    got = got.rearrange((Batch, "position", "key_position")).array if use_segments else got.array
    np.testing.assert_array_equal(got, expected)


def _qkv(n, seed=0, gqa=True):
    Pos = hax.Axis("position", n)
    KPos = Pos.alias("key_position")
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    q_axes = (Batch, KvHeads, Group, Pos, HeadSize) if gqa else (Batch, KvHeads, Pos, HeadSize)
    q = hax.random.normal(k1, q_axes)
    k = hax.random.normal(k2, (Batch, KvHeads, KPos, HeadSize))
    v = hax.random.normal(k3, (Batch, KvHeads, KPos, HeadSize))
    return Pos, KPos, q, k, v


def _segments(Pos):
    n = Pos.size
    first = np.array([0] * (n // 3) + [1] * (n - n // 3))
    second = np.array([5] * (n // 2) + [6] * (n - n // 2 - 2) + [-1, -1])
    return hax.named(jnp.array(np.stack([first, second])), (Batch, Pos))


CASES = {
    "none": (None, False, None),
    "causal": (True, False, None),
    "causal_segments": (True, True, None),
    "causal_window": (True, False, 5),
    "segments_window": (True, True, 7),
    "bidirectional_segments": (False, True, None),
}


PARAMS = [(case, 32, 8) for case in CASES if case != "segments_window"] + [
    ("segments_window", 37, 8),
    ("causal", 16, 64),
]


@pytest.fixture(params=["unrolled", "loops"])
def flash_impl(request, monkeypatch):
    """Both flash implementations: tiles unrolled (short sequences) and the tile loops."""
    if request.param == "loops":
        monkeypatch.setattr(flash_attention, "MAX_UNROLLED_TILES", 0)
    return request.param


@pytest.mark.parametrize("case, n, block", PARAMS, ids=[f"{c}-{n}-{b}" for c, n, b in PARAMS])
def test_flash_matches_vanilla_values_and_gradients(case, n, block, flash_impl):
    causal, use_segments, window = CASES[case]
    Pos, KPos, q, k, v = _qkv(n)
    if causal is None:
        mask = None
    else:
        mask = AttentionMask(causal, _segments(Pos) if use_segments else None, window)

    def run(backend, q, k, v):
        def f(q, k, v):
            out = dot_product_attention(
                Pos.name,
                KPos.name,
                HeadSize.name,
                q,
                k,
                v,
                mask,
                backend=backend,
                flash_block_size=block,
            )
            # A non-uniform cotangent, so every gradient term is exercised.
            return (out * hax.cos(out)).sum().array, out

        (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    (van_out, van_grads), (fl_out, fl_grads) = jax.jit(
        lambda q, k, v: (run("vanilla", q, k, v), run("jax_flash", q, k, v))
    )(q, k, v)
    assert fl_out.axes == van_out.axes == q.axes
    np.testing.assert_allclose(fl_out.array, van_out.array, rtol=1e-5, atol=1e-5)
    for a, b in zip(fl_grads, van_grads, strict=True):
        np.testing.assert_allclose(a.array, b.array, rtol=1e-5, atol=1e-5)


def test_flash_multi_head_without_groups_and_bf16_inputs(flash_impl):
    Pos, KPos, q, k, v = _qkv(24, gqa=False)
    mask = AttentionMask.causal()
    van = dot_product_attention(
        Pos.name, KPos.name, HeadSize.name, q, k, v, mask, backend="vanilla"
    )
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    fl = dot_product_attention(
        Pos.name, KPos.name, HeadSize.name, *bf, mask, backend="jax_flash", flash_block_size=8
    )
    assert fl.dtype == jnp.bfloat16
    # bf16 inputs (8 bits of mantissa): agreement to a few 1e-2 is all bf16 can give.
    np.testing.assert_allclose(np.asarray(fl.array, np.float32), van.array, atol=5e-2)


def _exp_dtypes(upcast):
    Pos, KPos, q, k, v = _qkv(16, gqa=False)
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]

    def f(q, k, v):
        return dot_product_attention(
            Pos.name,
            KPos.name,
            HeadSize.name,
            q,
            k,
            v,
            AttentionMask.causal(),
            backend="vanilla",
            upcast=upcast,
        ).array

    jaxpr = jax.make_jaxpr(f)(*bf)
    return {
        str(e.outvars[0].aval.dtype) for e in all_eqns(jaxpr.jaxpr) if e.primitive.name == "exp"
    }


def test_upcast_computes_softmax_in_float32():
    assert _exp_dtypes(upcast=True) == {"float32"}
    assert _exp_dtypes(upcast=False) == {"bfloat16"}


def test_backend_resolution():
    assert resolve_attention_backend(None) == CPU_DEFAULT_BACKEND
    assert resolve_attention_backend("default") == CPU_DEFAULT_BACKEND
    assert resolve_attention_backend(None, dropout_active=True) == AttentionBackend.vanilla
    assert resolve_attention_backend("jax_flash") == AttentionBackend.jax_flash
    with pytest.raises(ValueError, match="does not support attention dropout"):
        resolve_attention_backend("jax_flash", dropout_active=True)
    with pytest.raises(ValueError, match="'splash' .* is not available in this build"):
        resolve_attention_backend("splash")
    with pytest.raises(ValueError, match="'nvte' runs NVIDIA's fused attention .* needs a GPU"):
        resolve_attention_backend("nvte")
    with pytest.raises(ValueError, match="'nvte' does not support attention dropout"):
        resolve_attention_backend("nvte", dropout_active=True)


@pytest.fixture
def fused_on_xla(monkeypatch):
    """`nvte`'s plumbing (layouts, GQA head order, masks) over JAX's reference implementation,
    which runs on the CPU; the cuDNN kernel itself needs a GPU."""
    monkeypatch.setattr(attention_module, "FUSED_IMPLEMENTATION", "xla")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("gqa", [True, False], ids=["gqa", "mha"])
def test_nvte_matches_vanilla_values_and_gradients(case, gqa, fused_on_xla):
    causal, use_segments, window = CASES[case]
    Pos, KPos, q, k, v = _qkv(12, gqa=gqa)
    if causal is None:
        mask = None
    else:
        mask = AttentionMask(causal, _segments(Pos) if use_segments else None, window)
    # the models' layout: (batch, position, heads, head size), which the kernel takes as is
    k = k.rearrange((Batch, KPos, KvHeads, HeadSize))
    v = v.rearrange((Batch, KPos, KvHeads, HeadSize))

    def run(backend):
        def f(q, k, v):
            out = dot_product_attention(
                Pos.name, KPos.name, HeadSize.name, q, k, v, mask, backend=backend
            )
            return (out * hax.cos(out)).sum().array, out

        (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    (van_out, van_grads), (nv_out, nv_grads) = jax.jit(lambda: (run("vanilla"), run("nvte")))()
    assert nv_out.axes == van_out.axes == q.axes
    np.testing.assert_allclose(nv_out.array, van_out.array, rtol=1e-5, atol=1e-5)
    for a, b in zip(nv_grads, van_grads, strict=True):
        np.testing.assert_allclose(a.array, b.array, rtol=1e-5, atol=1e-5)


def test_nvte_wants_half_precision_inputs(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    Pos, KPos, q, k, v = _qkv(8)
    with pytest.raises(ValueError, match="takes bfloat16 or float16 inputs, got float32"):
        dot_product_attention(
            Pos.name, KPos.name, HeadSize.name, q, k, v, AttentionMask.causal(), backend="nvte"
        )


def test_vanilla_dropout_needs_prng():
    Pos, KPos, q, k, v = _qkv(8, gqa=False)
    drop = hnn.Dropout(0.5)
    attend = jax.jit(
        lambda q, k, v, prng: dot_product_attention(
            Pos.name, KPos.name, HeadSize.name, q, k, v, dropout=drop, prng=prng
        )
    )
    a = attend(q, k, v, None)
    b = attend(q, k, v, jax.random.PRNGKey(0))
    assert not np.allclose(a.array, b.array)


def _model_order_qkv(n):
    """Queries, keys and values in the models' own axis order: positions before heads."""
    Pos = hax.Axis("position", n)
    KPos = Pos.alias("key_position")
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    q = hax.random.normal(k1, (Batch, Pos, KvHeads, Group, HeadSize))
    k = hax.random.normal(k2, (Batch, KPos, KvHeads, HeadSize))
    v = hax.random.normal(k3, (Batch, KPos, KvHeads, HeadSize))
    return Pos, KPos, q, k, v


def test_vanilla_in_model_axis_order_matches_reference_formula():
    n = 12
    Pos, KPos, q, k, v = _model_order_qkv(n)
    segments = _segments(Pos)
    mask = AttentionMask(True, segments, None)
    out = dot_product_attention(
        Pos.name, KPos.name, HeadSize.name, q, k, v, mask, backend="vanilla"
    )
    assert out.axes == q.axes

    qa, ka, va = (np.asarray(x.array, np.float64) for x in (q, k, v))
    scores = np.einsum("bqhgd,bkhd->bhgqk", qa, ka) / np.sqrt(HeadSize.size)
    allowed = _reference_mask(n, True, None, np.asarray(segments.array))  # (batch, q, k)
    scores = np.where(allowed[:, None, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = np.einsum("bhgqk,bkhd->bqhgd", weights, va)
    np.testing.assert_allclose(out.array, expected, rtol=1e-5, atol=1e-5)


def test_vanilla_never_transposes_the_scores():
    """Forward and backward, the (.., QPos, KPos) scores and probabilities go straight from one
    batched matmul to the next: no transpose of a score-sized array (a copy of the biggest
    tensors in the layer: 12-15% of a GPT-2 loss + gradient at seq 512 before)."""
    n = 24  # no other axis has this size
    Pos, KPos, q, k, v = _model_order_qkv(n)

    def loss(q, k, v):
        out = dot_product_attention(
            Pos.name, KPos.name, HeadSize.name, q, k, v, AttentionMask.causal(), backend="vanilla"
        )
        return (out * hax.cos(out)).sum().array

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    transposed = [
        e.invars[0].aval.shape
        for e in all_eqns(jaxpr.jaxpr)
        if e.primitive.name == "transpose"
        and list(e.invars[0].aval.shape).count(n) >= 2
        and e.invars[0].aval.size >= Batch.size * KvHeads.size * n * n  # not the (q, k) mask
    ]
    assert transposed == []


def test_flash_backward_reduces_no_product_with_a_size_one_axis(flash_impl):
    """With one query head per key head the flash kernels' arrays carry a size-1 group axis.
    XLA:CPU's fused multiply-then-reduce runs 20-50x slower when its operands keep such an
    axis (the backward's rowsum(dO * O) was 137 of 3,500 ms of a GPT-2 step), so no
    multiply-reduce in the backward may have one."""
    Pos, KPos, q, k, v = _qkv(32, gqa=False)

    def loss(q, k, v):
        out = dot_product_attention(
            Pos.name,
            KPos.name,
            HeadSize.name,
            q,
            k,
            v,
            AttentionMask.causal(),
            backend="jax_flash",
            flash_block_size=8,
        )
        return (out * hax.cos(out)).sum().array

    eqns = list(all_eqns(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v).jaxpr))
    products = {id(e.outvars[0]) for e in eqns if e.primitive.name == "mul"}
    reduced = [
        e.invars[0].aval.shape
        for e in eqns
        if e.primitive.name == "reduce_sum" and id(e.invars[0]) in products
    ]
    assert reduced, "expected the backward's rowsum(dO * O)"
    assert [shape for shape in reduced if 1 in shape] == []
