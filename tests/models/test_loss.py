import dataclasses

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_model

from lm.models import Gpt2Config, LmExample, compute_next_token_loss
from lm.models.loss import compute_next_token_loss_and_metrics, next_token_cross_entropy

Batch = hax.Axis("batch", 3)
Pos = hax.Axis("position", 16)
Embed = hax.Axis("embed", 8)
Vocab = hax.Axis("vocab", 37)


def _inputs(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    hidden = hax.random.normal(k1, (Batch, Pos, Embed))
    head = hax.random.normal(k2, (Vocab, Embed))
    targets = hax.random.randint(k3, (Batch, Pos), 0, Vocab.size)
    return hidden, head, targets


def _reference(hidden, head, targets):
    logits = np.einsum(
        "bpe,ve->bpv", np.asarray(hidden.array, np.float64), np.asarray(head.array, np.float64)
    )
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, np.asarray(targets.array)[..., None], -1)[..., 0]
    return lse - picked, lse


def test_dense_cross_entropy_matches_reference_formula():
    hidden, head, targets = _inputs()
    ce, lse = jax.jit(lambda h, w, t: next_token_cross_entropy(h, w, t, Embed=Embed, Vocab=Vocab))(
        hidden, head, targets
    )
    ref_ce, ref_lse = _reference(hidden, head, targets)
    assert ce.dtype == jnp.float32 and ce.axes == (Batch, Pos)
    np.testing.assert_allclose(ce.array, ref_ce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse.array, ref_lse, rtol=1e-5, atol=1e-5)


def test_dense_cross_entropy_gradient_matches_autodiff_of_the_formula():
    """The dense loss has a hand-written backward pass; oracle: autodiff of the plain formula,
    with different per-position weights on the cross-entropy and the log-normaliser so both
    incoming cotangents are exercised."""
    hidden, head, targets = _inputs(2)
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    w_ce = jax.random.uniform(k1, (Batch.size, Pos.size))
    w_lse = jax.random.normal(k2, (Batch.size, Pos.size))

    def ours(h, w):
        ce, lse = next_token_cross_entropy(
            hax.named(h, (Batch, Pos, Embed)),
            hax.named(w, (Vocab, Embed)),
            targets,
            Embed=Embed,
            Vocab=Vocab,
        )
        return (ce.array * w_ce).sum() + (lse.array * w_lse).sum()

    def formula(h, w):
        logits = jnp.einsum("bpe,ve->bpv", h, w)
        lse = jax.nn.logsumexp(logits, axis=-1)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets.array[..., None], -1)[..., 0]
        return (ce * w_ce).sum() + (lse * w_lse).sum()

    value, grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(hidden.array, head.array)
    ref_value, ref_grads = jax.value_and_grad(formula, argnums=(0, 1))(hidden.array, head.array)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
    # bfloat16 inputs: float32 loss, gradients in the inputs' dtype
    bf = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
    bf_grads = jax.grad(ours, argnums=(0, 1))(bf(hidden.array), bf(head.array))
    assert [g.dtype for g in bf_grads] == [jnp.bfloat16, jnp.bfloat16]
    for g, r in zip(bf_grads, ref_grads, strict=True):
        np.testing.assert_allclose(g.astype(jnp.float32), r, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("block_size", [1, 8, 10, 37, 64])
def test_blockwise_matches_dense_value_and_gradient(block_size):
    hidden, head, targets = _inputs(1)

    def total(hidden, head, block):
        ce, lse = next_token_cross_entropy(
            hidden, head, targets, Embed=Embed, Vocab=Vocab, block_size=block
        )
        return (ce + 0.1 * hax.square(lse)).sum().array

    dense_value, dense_grads = jax.value_and_grad(total, argnums=(0, 1))(hidden, head, None)
    value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)), static_argnums=2)(
        hidden, head, block_size
    )
    np.testing.assert_allclose(value, dense_value, rtol=1e-5)
    for g, d in zip(grads, dense_grads, strict=True):
        np.testing.assert_allclose(g.array, d.array, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_size", [None, 8, 64])
def test_padding_rows_of_the_vocabulary_get_no_probability(block_size):
    """A vocabulary padded for the mesh (37 rows rounded up to 40) computes the loss and
    gradients of the 37 real rows, whatever the padding rows hold: the loss does not depend
    on the layout. The padding rows get no gradient."""
    hidden, head, targets = _inputs(4)
    Padded = Vocab.resize(40)
    junk = hax.random.normal(jax.random.PRNGKey(9), (Padded.resize(3), Embed)) * 5.0
    padded_head = hax.named(jnp.concatenate([head.array, junk.array]), (Padded, Embed))

    def total(hidden, head, Vocab, valid):
        ce, lse = next_token_cross_entropy(
            hidden,
            head,
            targets,
            Embed=Embed,
            Vocab=Vocab,
            block_size=block_size,
            valid_vocab=valid,
        )
        return (ce + 0.1 * hax.square(lse)).sum().array

    grad = jax.value_and_grad(total, argnums=(0, 1))
    value, (d_hidden, d_head) = grad(hidden, head, Vocab, None)
    p_value, (p_hidden, p_head) = grad(hidden, padded_head, Padded, 37)
    np.testing.assert_allclose(p_value, value, rtol=1e-6)
    np.testing.assert_allclose(p_hidden.array, d_hidden.array, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p_head.array[:37], d_head.array, rtol=1e-5, atol=1e-6)
    assert not np.any(p_head.array[37:])
    # without valid_vocab the padding rows would count: a different loss
    assert not np.isclose(grad(hidden, padded_head, Padded, None)[0], value, rtol=1e-3)


@pytest.fixture(scope="module")
def model():
    config = Gpt2Config(
        seq_len=16, hidden_dim=16, num_layers=1, num_heads=2, attn_backend="vanilla"
    )
    return random_model(config, hax.Axis("vocab", 37))


@pytest.fixture(scope="module")
def example():
    tokens = hax.random.randint(jax.random.PRNGKey(3), (Batch, Pos), 0, 37)
    extra = hax.random.bernoulli(jax.random.PRNGKey(4), (Batch, Pos), 0.7)
    return LmExample.causal(tokens, loss_mask=extra)


def _per_position_reference(model, example, z_weight=0.0):
    logits = np.asarray(
        eqx.filter_jit(lambda m, t: m(t).array)(model, example.tokens), dtype=np.float64
    )
    tokens = np.asarray(example.tokens.array)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    targets = np.roll(tokens, -1, axis=-1)
    ce = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return ce + z_weight * lse**2, ce


def test_model_loss_reductions_follow_the_masked_formula(model, example):
    per_position, _ = _per_position_reference(model, example)
    mask = np.asarray(example.loss_mask.array)
    per, total, mean = eqx.filter_jit(
        lambda m, ex: tuple(
            compute_next_token_loss(m, ex, reduction=r) for r in (None, "sum", "mean")
        )
    )(model, example)
    assert per.axes == (Batch, Pos) and per.dtype == jnp.float32
    np.testing.assert_allclose(per.array, np.where(mask, per_position, 0.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total.array, (per_position * mask).sum(), rtol=1e-5)
    np.testing.assert_allclose(mean.array, (per_position * mask).sum() / mask.sum(), rtol=1e-5)


def test_last_position_never_counts_even_if_the_mask_says_so(model, example):
    everything = LmExample(example.tokens, hax.ones(example.tokens.axes, dtype=jnp.bool_))
    per = eqx.filter_jit(compute_next_token_loss)(model, everything, reduction=None)
    assert np.all(per.array[:, -1] == 0.0)
    assert np.all(per.array[:, :-1] > 0.0)


def test_z_loss_adds_weighted_squared_normaliser_and_reports_metrics(model, example):
    per_position, ce = _per_position_reference(model, example, z_weight=1e-2)
    mask = np.asarray(example.loss_mask.array)
    loss, metrics = eqx.filter_jit(compute_next_token_loss_and_metrics)(
        model, example, z_loss_weight=1e-2
    )
    np.testing.assert_allclose(loss.array, (per_position * mask).sum() / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics["cross_entropy"], (ce * mask).sum() / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(
        metrics["z_loss"], ((per_position - ce) * mask).sum() / mask.sum(), rtol=1e-5
    )
    _, plain = eqx.filter_jit(compute_next_token_loss_and_metrics)(model, example)
    assert set(plain) == {"cross_entropy"}


def test_blockwise_model_loss_uses_config_block_size(model, example):
    # Gradients of the blockwise loss are checked against the dense one in
    # test_blockwise_matches_dense_value_and_gradient; here: the config knob reaches the loss.
    blocked = dataclasses.replace(
        model,
        transformer=dataclasses.replace(
            model.transformer, config=dataclasses.replace(model.config, cross_entropy_block_size=10)
        ),
    )
    assert blocked.config.cross_entropy_block_size == 10
    loss = eqx.filter_jit(lambda m: compute_next_token_loss(m, example, reduction=None).array)
    blocked_jaxpr = jax.make_jaxpr(lambda m: compute_next_token_loss(m, example).array)(blocked)
    assert any(e.primitive.name == "scan" for e in blocked_jaxpr.jaxpr.eqns)
    np.testing.assert_allclose(loss(blocked), loss(model), rtol=1e-5, atol=1e-6)


def test_empty_mask_gives_zero_not_nan(model, example):
    nothing = LmExample(example.tokens, hax.zeros(example.tokens.axes, dtype=jnp.bool_))
    assert float(eqx.filter_jit(compute_next_token_loss)(model, nothing).array) == 0.0


def test_head_weight_gradient_avoids_contracting_leading_axes_on_cpu():
    """XLA:CPU runs a dot that contracts both operands' leading axes (the tokens, for the LM
    head's weight gradient) in Eigen at about half YNNPACK's speed: the compiled gradient
    must not contain one, and must still equal d_logits^T . h."""
    from lm.models.loss import _head_weight_grad

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    h = jax.random.normal(k1, (256, 32))
    d_logits = jax.random.normal(k2, (256, 128))
    compiled = jax.jit(_head_weight_grad).lower(h, d_logits).compile()
    leading = [
        line.strip()
        for line in compiled.as_text().splitlines()
        if " dot(" in line and "lhs_contracting_dims={0}, rhs_contracting_dims={0}" in line
    ]
    assert leading == []
    np.testing.assert_allclose(
        compiled(h, d_logits),
        np.asarray(d_logits, np.float64).T @ np.asarray(h, np.float64),
        rtol=1e-5,
        atol=1e-4,
    )
