"""Blockwise ("flash") attention in pure JAX with a hand-written backward pass.

Queries and keys are cut into tiles of `block_size` positions. For each query tile the
forward pass walks the key tiles with an online softmax (running max, running sum and a
rescaled accumulator), so the (QPos, KPos) score matrix never exists; it saves only the
output and the per-row log-sum-exp. The backward pass recomputes each tile's probabilities
from the saved log-sum-exp in a single sweep over key tiles, each tile pair feeding dK and dV
(accumulated per key tile) and dQ (accumulated into a full-size buffer). Tiles that the mask
rules out entirely (above the causal diagonal, outside the sliding window) are skipped in both
passes; segment ids are applied per element.

Up to `MAX_UNROLLED_TILES` tiles and `MAX_UNROLLED_KEYS` keys (1,024 positions in 128-tiles),
the tiles are unrolled instead: each query tile's scores against all the keys it can see are
one matmul with an exact softmax, forward and backward (same skipped tiles, same saved
residuals; faster on CPU).

Scores, softmax statistics and gradient accumulators are float32 whatever the input dtype.
Inputs whose lengths are not a multiple of the tile size are padded and the padding masked.
"""

from __future__ import annotations

import functools

import haliax as hax
import jax
import jax.numpy as jnp
from haliax import Axis, NamedArray

_MASKED = -1e30  # finite, so fully masked tiles never produce inf - inf

# With at most this many query (and key) tiles and keys, the tiles are unrolled at trace time
# and each query tile takes all the keys it can see in one piece (see `_unrolled`); the key
# bound keeps one piece's scores as small as 8 tiles of 128 (long-sequence runs keep the loops).
MAX_UNROLLED_TILES = 8
MAX_UNROLLED_KEYS = 1024


def flash_attention(
    QPos: Axis,
    KPos: Axis,
    HeadSize: Axis,
    query: NamedArray,
    key: NamedArray,
    value: NamedArray,
    mask,
    *,
    block_size: int,
) -> NamedArray:
    """Attention of already-scaled `query` over `key`/`value` (see `dot_product_attention`).

    `key` and `value` axes other than KPos/HeadSize are batch axes and must appear in
    `query`; query-only axes (e.g. heads per KV group) share the same keys.
    """
    if block_size <= 0:
        raise ValueError(f"flash_attention_block_size must be positive, got {block_size}")
    names = {QPos.name, KPos.name, HeadSize.name}
    batch = tuple(ax for ax in key.axes if ax.name not in names)
    q_names = {ax.name for ax in query.axes}
    missing = [ax.name for ax in batch if ax.name not in q_names]
    if missing:
        raise ValueError(f"key axes {missing} are not in the query axes {query.axes}")
    batch_names = {ax.name for ax in batch}
    group = tuple(ax for ax in query.axes if ax.name not in names | batch_names)
    VHead = value.resolve_axis(HeadSize.name)

    B = _prod(batch)
    G = _prod(group)
    q = query.rearrange((*batch, *group, QPos, HeadSize)).array.reshape(
        B, G, QPos.size, HeadSize.size
    )
    k = key.rearrange((*batch, KPos, HeadSize)).array.reshape(B, KPos.size, HeadSize.size)
    v = value.rearrange((*batch, KPos, VHead)).array.reshape(B, KPos.size, VHead.size)

    causal = mask is not None and mask.is_causal
    window = mask.sliding_window if mask is not None else None
    if mask is not None and mask.segment_ids is not None:
        if QPos.size != KPos.size:
            raise ValueError("segment ids need equal query and key lengths (self-attention)")
        seg = mask.segment_ids
        extra = [ax.name for ax in seg.axes if ax.name != QPos.name and ax.name not in batch_names]
        if extra:
            raise ValueError(f"segment_ids axes {extra} are not batch axes of the keys {key.axes}")
        seg = hax.broadcast_to(seg, (*batch, seg.resolve_axis(QPos.name))).array
        q_seg = k_seg = seg.reshape(B, QPos.size).astype(jnp.int32)
    else:
        q_seg = jnp.zeros((B, QPos.size), jnp.int32)
        k_seg = jnp.zeros((B, KPos.size), jnp.int32)

    bq = min(block_size, QPos.size)
    bk = min(block_size, KPos.size)
    sq = -(-QPos.size // bq) * bq
    sk = -(-KPos.size // bk) * bk
    q = jnp.pad(q, ((0, 0), (0, 0), (0, sq - QPos.size), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, sk - KPos.size), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, sk - KPos.size), (0, 0)))
    q_seg = jnp.pad(q_seg, ((0, 0), (0, sq - QPos.size)), constant_values=-1)
    k_seg = jnp.pad(k_seg, ((0, 0), (0, sk - KPos.size)), constant_values=-1)

    spec = _Spec(causal, window, bq, bk, KPos.size)
    few_tiles = max(sq // bq, sk // bk) <= MAX_UNROLLED_TILES and sk <= MAX_UNROLLED_KEYS
    impl = _unrolled if few_tiles else _flash
    out = jax.vmap(functools.partial(impl, spec))(q, k, v, q_seg, k_seg)
    out = out[:, :, : QPos.size].reshape(
        *(ax.size for ax in (*batch, *group)), QPos.size, VHead.size
    )
    return hax.named(out, (*batch, *group, QPos, VHead))


def _prod(axes) -> int:
    size = 1
    for ax in axes:
        size *= ax.size
    return size


class _Spec:
    """Static description of the mask and tiling (hashable for custom_vjp)."""

    def __init__(self, causal: bool, window: int | None, bq: int, bk: int, kv_len: int):
        self.causal, self.window, self.bq, self.bk, self.kv_len = causal, window, bq, bk, kv_len

    def _key(self):
        return (self.causal, self.window, self.bq, self.bk, self.kv_len)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _Spec) and self._key() == other._key()

    def tile_mask(self, q_idx, k_idx, q_seg, k_seg):
        allowed = (k_idx[None, :] < self.kv_len) & (q_seg[:, None] == k_seg[None, :])
        if self.causal:
            allowed &= k_idx[None, :] <= q_idx[:, None]
        if self.window is not None:
            allowed &= (q_idx[:, None] - k_idx[None, :]) < self.window
        return allowed

    def key_tiles_for(self, i, num_k_tiles):
        """Key tile range [lo, hi) that query tile i can see."""
        lo = 0
        hi = num_k_tiles
        if self.causal:
            hi = _minimum(num_k_tiles, ((i + 1) * self.bq - 1) // self.bk + 1)
        if self.window is not None:
            lo = _maximum(0, i * self.bq - self.window + 1) // self.bk
        return lo, hi

    def query_tiles_for(self, j, num_q_tiles):
        """Query tile range [lo, hi) that can see key tile j."""
        lo = 0
        hi = num_q_tiles
        if self.causal:
            lo = (j * self.bk) // self.bq
        if self.window is not None:
            last_q = (j + 1) * self.bk - 1 + self.window - 1
            hi = _minimum(num_q_tiles, last_q // self.bq + 1)
        return lo, hi


def _minimum(a, b):
    return min(a, b) if isinstance(a, int) and isinstance(b, int) else jnp.minimum(a, b)


def _maximum(a, b):
    return max(a, b) if isinstance(a, int) and isinstance(b, int) else jnp.maximum(a, b)


def _tile(x, i, size, axis):
    return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=axis)


# --- per tile pair (or piece), shared by both forms ---------------------------------------------


def _masked_scores(spec: _Spec, q_t, k_t, q_idx, k_idx, qs, ks):
    """float32 scores of queries q_t [G, q, D] against keys k_t [k, D], and where allowed."""
    s = jnp.einsum("gqd,kd->gqk", q_t, k_t, preferred_element_type=jnp.float32)
    return s, spec.tile_mask(q_idx, k_idx, qs, ks)[None]


def _probabilities(spec: _Spec, q_t, k_t, lse_t, q_idx, k_idx, qs, ks):
    """Softmax probabilities rebuilt from the saved log-sum-exp (0 where masked)."""
    s, allowed = _masked_scores(spec, q_t, k_t, q_idx, k_idx, qs, ks)
    return jnp.where(allowed, jnp.exp(s - lse_t[..., None]), 0.0)


def _pair_grads(p, q_t, k_t, v_t, g_t, delta_t):
    """(dV^T [Dv, k], dK^T [D, k], dQ [G, q, D]) contributions of one block of probabilities
    p [G, q, k].

    dK and dV contract over the query rows. Written as P^T.dO, the matmul's left operand is
    the [q, k] block with its contracted axis first, which XLA:CPU copies transposed before the
    dot; as dO^T.P only the [q, D] tile is copied (2-8x smaller at 128-position tiles and
    64-wide heads), and the transposed results are accumulated and flipped once per key range.
    """
    dv_t = jnp.einsum("gqd,gqk->dk", g_t, p, preferred_element_type=jnp.float32)
    dp = jnp.einsum("gqd,kd->gqk", g_t, v_t, preferred_element_type=jnp.float32)
    ds = p * (dp - delta_t[..., None])
    dk_t = jnp.einsum("gqd,gqk->dk", q_t, ds, preferred_element_type=jnp.float32)
    dq = jnp.einsum("gqk,kd->gqd", ds, k_t, preferred_element_type=jnp.float32)
    return dv_t, dk_t, dq


def _fwd_rule(forward):
    """custom_vjp forward rule: `forward`'s output and log-sum-exp, saved as residuals."""

    def rule(spec, q, k, v, q_seg, k_seg):
        out, lse = forward(spec, q, k, v, q_seg, k_seg)
        # Named so that gradient_checkpointing: save_projections keeps them: then a
        # rematerialised block's backward pass does not rerun the forward pass for them.
        out = jax.ad_checkpoint.checkpoint_name(out, "attn_out")
        lse = jax.ad_checkpoint.checkpoint_name(lse, "attn_lse")
        return out, (q, k, v, q_seg, k_seg, out, lse)

    return rule


def _output_grad_terms(out, d_out):
    """d_out in float32 and delta = rowsum(d_out * out), the softmax backward's correction.

    The product is reduced as rows of one (G * Sq, D) matrix: with one query head per key
    head (G = 1) the (G, Sq, D) form keeps a size-1 axis, and XLA:CPU's fused multiply-reduce
    runs 20-50x slower on operands with a size-1 axis (137 ms of a config-2 step, against 7)."""
    d_out = d_out.astype(jnp.float32)
    rows = (d_out * out.astype(jnp.float32)).reshape(-1, d_out.shape[-1]).sum(axis=-1)
    return d_out, rows.reshape(d_out.shape[:-1])  # [G, Sq]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(spec: _Spec, q, k, v, q_seg, k_seg):
    out, _ = _flash_forward(spec, q, k, v, q_seg, k_seg)
    return out


def _flash_forward(spec: _Spec, q, k, v, q_seg, k_seg):
    """q: [G, Sq, D], k: [Sk, D], v: [Sk, Dv], segs: [Sq], [Sk] -> out [G, Sq, Dv], lse [G, Sq]."""
    G, sq, _ = q.shape
    sk, dv = v.shape
    nq, nk = sq // spec.bq, sk // spec.bk

    def query_tile(i):
        q_t = _tile(q, i, spec.bq, 1)
        q_idx = i * spec.bq + jnp.arange(spec.bq)
        qs = _tile(q_seg, i, spec.bq, 0)

        def body(j, carry):
            row_max, row_sum, acc = carry
            k_t, v_t = _tile(k, j, spec.bk, 0), _tile(v, j, spec.bk, 0)
            k_idx = j * spec.bk + jnp.arange(spec.bk)
            s, allowed = _masked_scores(
                spec, q_t, k_t, q_idx, k_idx, qs, _tile(k_seg, j, spec.bk, 0)
            )
            s = jnp.where(allowed, s, _MASKED)
            new_max = jnp.maximum(row_max, s.max(axis=-1))
            p = jnp.exp(s - new_max[..., None])
            correction = jnp.exp(row_max - new_max)
            row_sum = row_sum * correction + p.sum(axis=-1)
            pv = jnp.einsum(
                "gqk,kd->gqd", p.astype(v.dtype), v_t, preferred_element_type=jnp.float32
            )
            return new_max, row_sum, acc * correction[..., None] + pv

        init = (
            jnp.full((G, spec.bq), _MASKED, jnp.float32),
            jnp.zeros((G, spec.bq), jnp.float32),
            jnp.zeros((G, spec.bq, dv), jnp.float32),
        )
        lo, hi = spec.key_tiles_for(i, nk)
        row_max, row_sum, acc = jax.lax.fori_loop(lo, hi, body, init)
        return acc / row_sum[..., None], row_max + jnp.log(row_sum)

    out, lse = jax.lax.map(query_tile, jnp.arange(nq))
    out = jnp.moveaxis(out, 0, 1).reshape(G, sq, dv).astype(v.dtype)
    lse = jnp.moveaxis(lse, 0, 1).reshape(G, sq)
    return out, lse


def _flash_bwd(spec, residuals, d_out):
    q, k, v, q_seg, k_seg, out, lse = residuals
    G, sq, d = q.shape
    sk, dv = v.shape
    nq, nk = sq // spec.bq, sk // spec.bk
    d_out, delta = _output_grad_terms(out, d_out)

    def key_tile(j, dq):
        k_t, v_t = _tile(k, j, spec.bk, 0), _tile(v, j, spec.bk, 0)
        k_idx = j * spec.bk + jnp.arange(spec.bk)
        ks = _tile(k_seg, j, spec.bk, 0)

        def body(i, carry):
            dk_t, dv_t, dq = carry
            q_t, g_t = _tile(q, i, spec.bq, 1), _tile(d_out, i, spec.bq, 1)
            lse_t, delta_t = _tile(lse, i, spec.bq, 1), _tile(delta, i, spec.bq, 1)
            q_idx = i * spec.bq + jnp.arange(spec.bq)
            qs = _tile(q_seg, i, spec.bq, 0)
            p = _probabilities(spec, q_t, k_t, lse_t, q_idx, k_idx, qs, ks)
            dv_p, dk_p, dq_p = _pair_grads(p, q_t, k_t, v_t, g_t, delta_t)
            dv_t, dk_t = dv_t + dv_p, dk_t + dk_p
            dq_t = _tile(dq, i, spec.bq, 1) + dq_p
            dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_t, i * spec.bq, axis=1)
            return dk_t, dv_t, dq

        lo, hi = spec.query_tiles_for(j, nq)
        init = (jnp.zeros((d, spec.bk), jnp.float32), jnp.zeros((dv, spec.bk), jnp.float32), dq)
        dk_t, dv_t, dq = jax.lax.fori_loop(lo, hi, body, init)
        return dq, (dk_t, dv_t)

    # One sweep over key tiles: each (query tile, key tile) pair's probabilities are computed
    # once and feed dK, dV (transposed, see `_pair_grads`) and (accumulated in place into the
    # full-size buffer) dQ.
    dq, (dk_t, dv_t) = jax.lax.scan(
        lambda dq, j: key_tile(j, dq), jnp.zeros((G, sq, d), jnp.float32), jnp.arange(nk)
    )
    dk = jnp.swapaxes(dk_t, 1, 2).reshape(sk, d)
    dv_ = jnp.swapaxes(dv_t, 1, 2).reshape(sk, dv)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv_.astype(v.dtype), None, None


_flash.defvjp(_fwd_rule(_flash_forward), _flash_bwd)


# --- few tiles: unrolled, one piece of keys per query tile ------------------------------------
#
# For short sequences (at most MAX_UNROLLED_TILES tiles) each query tile's scores against every
# key tile it can see are one matmul, so its softmax is exact (no running max or rescaling) and
# the tile loops become straight-line code. The same tiles are skipped as in the loops above and
# the same residuals (output and log-sum-exp) are saved; on CPU this runs the config-2 benchmark
# attention's forward and backward 25-30% faster than the loops (docs/benchmarks.md).


def _piece(spec: _Spec, i: int, num_k_tiles: int):
    """Query rows [a, b) of tile i and the keys [ka, kb) it can see."""
    lo, hi = spec.key_tiles_for(i, num_k_tiles)
    return i * spec.bq, (i + 1) * spec.bq, lo * spec.bk, hi * spec.bk


def _piece_index(q_seg, k_seg, a, b, ka, kb):
    """The (q_idx, k_idx, qs, ks) arguments of the per-pair helpers for one piece."""
    return jnp.arange(a, b), jnp.arange(ka, kb), q_seg[a:b], k_seg[ka:kb]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _unrolled(spec: _Spec, q, k, v, q_seg, k_seg):
    return _unrolled_forward(spec, q, k, v, q_seg, k_seg)[0]


def _unrolled_forward(spec: _Spec, q, k, v, q_seg, k_seg):
    """Shapes as `_flash_forward`."""
    nq, nk = q.shape[1] // spec.bq, k.shape[0] // spec.bk
    outs, lses = [], []
    for i in range(nq):
        a, b, ka, kb = _piece(spec, i, nk)
        index = _piece_index(q_seg, k_seg, a, b, ka, kb)
        s, allowed = _masked_scores(spec, q[:, a:b], k[ka:kb], *index)
        s = jnp.where(allowed, s, _MASKED)
        row_max = s.max(axis=-1)
        p = jnp.exp(s - row_max[..., None])
        row_sum = p.sum(axis=-1)
        pv = jnp.einsum(
            "gqk,kd->gqd", p.astype(v.dtype), v[ka:kb], preferred_element_type=jnp.float32
        )
        outs.append(pv / row_sum[..., None])
        lses.append(row_max + jnp.log(row_sum))
    return jnp.concatenate(outs, axis=1).astype(v.dtype), jnp.concatenate(lses, axis=1)


def _unrolled_bwd(spec, residuals, d_out):
    q, k, v, q_seg, k_seg, out, lse = residuals
    nq, nk = q.shape[1] // spec.bq, k.shape[0] // spec.bk
    d_out, delta = _output_grad_terms(out, d_out)
    dq_pieces = []
    dk_t = jnp.zeros(k.shape[::-1], jnp.float32)  # transposed, see `_pair_grads`
    dv_t = jnp.zeros(v.shape[::-1], jnp.float32)
    for i in range(nq):
        a, b, ka, kb = _piece(spec, i, nk)
        q_t, g_t, k_t = q[:, a:b], d_out[:, a:b], k[ka:kb]
        p = _probabilities(spec, q_t, k_t, lse[:, a:b], *_piece_index(q_seg, k_seg, a, b, ka, kb))
        dv_p, dk_p, dq_p = _pair_grads(p, q_t, k_t, v[ka:kb], g_t, delta[:, a:b])
        dv_t, dk_t = dv_t.at[:, ka:kb].add(dv_p), dk_t.at[:, ka:kb].add(dk_p)
        dq_pieces.append(dq_p)
    dq = jnp.concatenate(dq_pieces, axis=1)
    dk, dv = dk_t.T, dv_t.T
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_unrolled.defvjp(_fwd_rule(_unrolled_forward), _unrolled_bwd)
