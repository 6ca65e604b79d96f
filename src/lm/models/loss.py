"""Next-token cross-entropy (with optional z-loss), dense or blockwise over the vocabulary.

The loss for position `i` is `logsumexp(logits_i) - logits_i[token_{i+1}]`, plus
`z_loss_weight * logsumexp(logits_i)**2` when z-loss is on (PaLM's auxiliary loss that keeps
the softmax normaliser near 1). Everything from the logits on is float32, whatever the
compute dtype of the model.

Only positions where `example.loss_mask` is True count; the last position never does.
The masked mean is `sum(loss * mask) / sum(mask)` (0 when nothing is counted).

Blockwise (`block_size`, or the model config's `cross_entropy_block_size`): the
vocabulary is processed `block_size` entries at a time with a running log-sum-exp, so the
(tokens, vocab) logits never exist at once, in the forward or (via rematerialisation of
each block) the backward pass. Value and gradient equal the dense loss.
"""

from __future__ import annotations

import functools
from typing import Literal

import haliax as hax
import jax
import jax.numpy as jnp
from haliax import Axis, NamedArray
from jaxtyping import PRNGKeyArray

from lm.models.layers.attention import AttentionMask
from lm.models.lm_model import LmExample, LmHeadModel

Reduction = Literal["mean", "sum"] | None


def compute_next_token_loss(
    model: LmHeadModel,
    example: LmExample,
    *,
    key: PRNGKeyArray | None = None,
    reduction: Reduction = "mean",
    z_loss_weight: float = 0.0,
    block_size: int | None = None,
    valid_vocab: int | None = None,
) -> NamedArray:
    """The next-token loss of `model` on `example`.

    Args:
        model: any `LmHeadModel` (possibly cast to a bf16 compute dtype).
        example: tokens, loss mask and segment ids, axes (..., Pos).
        key: dropout key; None runs the model in inference mode.
        reduction: "mean" (masked mean), "sum" (masked sum), or None for the per-position
            loss over (..., Pos), zero where the mask is off.
        z_loss_weight: weight of the `logsumexp**2` term (0 disables it).
        block_size: vocabulary block size for the blockwise loss; None uses
            `model.config.cross_entropy_block_size` (itself None for the dense loss).
        valid_vocab: the vocabulary's real size when `model.Vocab` is padded beyond it
            (rounded up so a mesh axis can split it evenly): the padding rows get no
            probability, so the loss is the same on every layout. None: all rows are real.

    Returns:
        A float32 scalar NamedArray (or per-position NamedArray when reduction is None).
    """
    loss, _ = compute_next_token_loss_and_metrics(
        model,
        example,
        key=key,
        reduction=reduction,
        z_loss_weight=z_loss_weight,
        block_size=block_size,
        valid_vocab=valid_vocab,
    )
    return loss


def compute_next_token_loss_and_metrics(
    model: LmHeadModel,
    example: LmExample,
    *,
    key: PRNGKeyArray | None = None,
    reduction: Reduction = "mean",
    z_loss_weight: float = 0.0,
    block_size: int | None = None,
    valid_vocab: int | None = None,
) -> tuple[NamedArray, dict[str, jax.Array]]:
    """Like `compute_next_token_loss`, plus metrics for the tracker.

    Metrics (float32 scalars, masked means over counted positions): `cross_entropy`
    (without the z-loss term) and, when `z_loss_weight > 0`, `z_loss` (the weighted term).
    """
    if block_size is None:
        block_size = model.config.cross_entropy_block_size
    Pos = example.tokens.resolve_axis(model.Pos.name)
    hidden = model.activations(example.tokens, AttentionMask.from_example(example), key=key)
    targets = hax.roll(example.tokens, -1, Pos)
    not_last = hax.arange(Pos) < Pos.size - 1
    mask = example.loss_mask.astype(jnp.bool_) & not_last

    ce, lse = next_token_cross_entropy(
        hidden,
        model.get_lm_head(),
        targets,
        Embed=model.Embed,
        Vocab=model.Vocab,
        block_size=block_size,
        valid_vocab=valid_vocab,
    )
    per_token = ce
    if z_loss_weight:
        z_term = z_loss_weight * hax.square(lse)
        per_token = ce + z_term
    per_token = hax.where(mask, per_token, 0.0)

    count = mask.sum().astype(jnp.float32)
    denom = hax.maximum(count, 1.0)
    metrics = {"cross_entropy": (hax.where(mask, ce, 0.0).sum() / denom).array}
    if z_loss_weight:
        metrics["z_loss"] = (hax.where(mask, z_term, 0.0).sum() / denom).array

    if reduction is None:
        return per_token, metrics
    if reduction == "sum":
        return per_token.sum(), metrics
    if reduction == "mean":
        return per_token.sum() / denom, metrics
    raise ValueError(f"reduction must be 'mean', 'sum' or None, got {reduction!r}")


def next_token_cross_entropy(
    hidden: NamedArray,
    lm_head: NamedArray,
    targets: NamedArray,
    *,
    Embed: Axis,
    Vocab: Axis,
    block_size: int | None = None,
    valid_vocab: int | None = None,
) -> tuple[NamedArray, NamedArray]:
    """Per-position cross-entropy and log-normaliser, both float32.

    Args:
        hidden: final hidden states, axes (..., Embed).
        lm_head: unembedding, axes (Vocab, Embed).
        targets: int target ids, axes (...) matching `hidden` without Embed.
        block_size: None for dense logits, else the vocabulary block size.
        valid_vocab: rows of `lm_head` at and beyond it are padding: their logits are -inf.

    Returns:
        (cross_entropy, logsumexp), each over `hidden`'s axes without Embed.
    """
    if block_size is not None and block_size <= 0:
        raise ValueError(f"cross-entropy block_size must be positive, got {block_size}")
    batch_axes = tuple(ax for ax in hidden.axes if ax.name != Embed.name)
    h = hidden.rearrange((*batch_axes, Embed)).array.reshape(-1, Embed.size)
    w = lm_head.rearrange((Vocab, Embed)).array
    t = targets.rearrange(batch_axes).array.reshape(-1).astype(jnp.int32)
    valid = Vocab.size if valid_vocab is None else min(int(valid_vocab), Vocab.size)
    if block_size is None:
        ce, lse = _dense_cross_entropy(h, w, t, valid)
    else:
        ce, lse = _blockwise_cross_entropy(h, w, t, block_size, valid)
    shape = tuple(ax.size for ax in batch_axes)
    return hax.named(ce.reshape(shape), batch_axes), hax.named(lse.reshape(shape), batch_axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dense_cross_entropy(h: jax.Array, w: jax.Array, targets: jax.Array, valid: int):
    """h: [N, E], w: [V, E], targets: [N] -> (ce [N], lse [N]), float32, all logits at once;
    the logits of rows `valid..V-1` (vocabulary padding) are -inf.

    The backward pass is written out: the gradient of the logits is formed once,
    `(dce + dlse) * softmax - dce * onehot`, from the saved float32 logits, and feeds both
    matmuls directly. Left to autodiff, XLA:CPU materialised it twice (once transposed for
    the weight gradient) and ran both backward matmuls at about half speed (docs/benchmarks.md)."""
    (ce, lse), _ = _dense_ce_fwd(h, w, targets, valid)
    return ce, lse


def _dense_ce_fwd(h, w, targets, valid):
    logits = jnp.einsum("ne,ve->nv", h, w, preferred_element_type=jnp.float32)
    logits = logits.astype(jnp.float32)
    if valid < logits.shape[1]:
        cols = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
        logits = jnp.where(cols < valid, logits, -jnp.inf)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # A gather (3x faster than a masked sum over the vocabulary on CPU); the backward pass
    # below never differentiates it, so no scatter. Out-of-range ids read 0, as a select would.
    target_logit = jnp.take_along_axis(
        logits, targets[:, None], axis=1, mode="fill", fill_value=0.0
    )[:, 0]
    return (lse - target_logit, lse), (h, w, targets, logits, lse)


def _dense_ce_bwd(valid, residuals, cotangents):
    del valid  # the saved logits are already -inf there: softmax 0, no gradient
    h, w, targets, logits, lse = residuals
    d_ce, d_lse = cotangents
    hit = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1) == targets[:, None]
    d_logits = (d_ce + d_lse)[:, None] * jnp.exp(logits - lse[:, None])
    d_logits = (d_logits - jnp.where(hit, d_ce[:, None], 0.0)).astype(w.dtype)
    d_h = jnp.einsum("nv,ve->ne", d_logits, w, preferred_element_type=jnp.float32)
    return d_h.astype(h.dtype), _head_weight_grad(h, d_logits).astype(w.dtype), None


def _head_weight_grad(h: jax.Array, d_logits: jax.Array) -> jax.Array:
    """d_w [V, E] = d_logits^T . h, contracting the tokens (the leading axis of both).

    On XLA:CPU a dot contracting both operands' leading axes runs in Eigen, not YNNPACK, at
    ~180 GFLOP/s for the LM head's shapes (YNNPACK: ~330). It is computed here as
    (h^T . d_logits)^T: h^T [E, N] and the [E, V] product made real by optimisation
    barriers (XLA otherwise folds both transposes back into the dot), then one transposed
    copy of the [E, V] result: the config-2 benchmark's 187 ms matmul becomes ~115 ms,
    copies included (docs/benchmarks.md). Other backends contract it directly."""
    if jax.default_backend() != "cpu":
        return jnp.einsum("nv,ne->ve", d_logits, h, preferred_element_type=jnp.float32)
    barrier = jax.lax.optimization_barrier
    d_w_t = jnp.einsum("en,nv->ev", barrier(h.T), d_logits, preferred_element_type=jnp.float32)
    return barrier(d_w_t).T


_dense_cross_entropy.defvjp(_dense_ce_fwd, _dense_ce_bwd)


def _blockwise_cross_entropy(
    h: jax.Array, w: jax.Array, targets: jax.Array, block_size: int, valid: int
):
    """h: [N, E], w: [V, E], targets: [N] -> (ce [N], lse [N]), float32; rows `valid..V-1`
    (vocabulary padding) get no probability."""
    num_tokens = h.shape[0]
    vocab = w.shape[0]
    block_size = min(block_size, vocab)
    num_blocks = -(-vocab // block_size)
    padded = num_blocks * block_size
    w_blocks = jnp.pad(w, ((0, padded - vocab), (0, 0))).reshape(num_blocks, block_size, -1)
    starts = jnp.arange(num_blocks, dtype=jnp.int32) * block_size

    # Each step's logits are recomputed in the backward pass instead of being saved, so the
    # scan's residuals are just the (N,)-sized carries.
    @jax.checkpoint
    def step(carry, xs):
        running_max, running_sum, target_logit = carry
        w_block, start = xs
        logits = jnp.einsum("ne,ve->nv", h, w_block, preferred_element_type=jnp.float32)
        logits = logits.astype(jnp.float32)
        cols = start + jnp.arange(block_size, dtype=jnp.int32)
        logits = jnp.where((cols < valid)[None, :], logits, -jnp.inf)
        # The max only stabilises the exponentials; the log-sum-exp does not depend on it.
        new_max = jax.lax.stop_gradient(jnp.maximum(running_max, logits.max(axis=-1)))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(
            logits - new_max[:, None]
        ).sum(axis=-1)
        hit = cols[None, :] == targets[:, None]
        target_logit = target_logit + jnp.where(hit, logits, 0.0).sum(axis=-1)
        return (new_max, running_sum, target_logit), None

    init = (
        jnp.full((num_tokens,), -jnp.inf, dtype=jnp.float32),
        jnp.zeros((num_tokens,), dtype=jnp.float32),
        jnp.zeros((num_tokens,), dtype=jnp.float32),
    )
    (running_max, running_sum, target_logit), _ = jax.lax.scan(step, init, (w_blocks, starts))
    lse = running_max + jnp.log(running_sum)
    return lse - target_logit, lse
