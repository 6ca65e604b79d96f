"""Scaled dot-product attention over named axes: masks and backend selection.

`AttentionMask` describes which keys a query may see: causal order, packed documents
(segment ids: a query only sees keys of its own segment) and an optional sliding window
(query `i` sees keys `j` with `i - j < window`, as in HF Mistral). The mask is data, not
a materialised matrix, so blockwise backends build only the tiles they visit.

Backends (`attn_backend:` in model configs):
- `vanilla`: materialises the (QPos, KPos) score matrix; supports attention dropout.
- `jax_flash`: blockwise (flash) attention in pure JAX with a hand-written backward
  (`lm.models.layers.flash_attention`); never materialises the score matrix and skips
  tiles the mask rules out (causal, sliding window).
- `default`: `jax_flash` on every platform (on CPU it measured faster in a GPT-2-nano
  training step; see docs/benchmarks.md), `vanilla` when attention dropout is active.
- `nvte` (NVIDIA Transformer Engine) and `splash` (TPU Pallas) are reference backends
  that this build does not ship; asking for them explicitly is an error, never a silent
  substitution.
"""

from __future__ import annotations

import enum
import logging

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
from haliax import Axis, NamedArray
from haliax.axis import AxisSelector
from jaxtyping import PRNGKeyArray

logger = logging.getLogger(__name__)


class AttentionBackend(enum.Enum):
    """Which attention implementation to run (`attn_backend:`)."""

    default = "default"
    vanilla = "vanilla"
    jax_flash = "jax_flash"
    nvte = "nvte"
    splash = "splash"


_IMPLEMENTED = (AttentionBackend.vanilla, AttentionBackend.jax_flash)

CPU_DEFAULT_BACKEND = AttentionBackend.jax_flash
"""What `default` means on CPU (chosen by `bench/attention_cpu.py`; see docs/benchmarks.md)."""

DEFAULT_FLASH_BLOCK_SIZE = 128
"""Tile size for `jax_flash` when `flash_attention_block_size` is unset."""


def validate_attention_backend(
    backend: AttentionBackend | str | None, *, field: str = "attn_backend"
) -> AttentionBackend | None:
    """Config-time check: a known name that this build implements (or `default`/None)."""
    if backend is None:
        return None
    try:
        backend = AttentionBackend(backend)
    except ValueError:
        allowed = ", ".join(b.value for b in AttentionBackend)
        raise ValueError(
            f"{field}: unknown attention backend {backend!r}; allowed: {allowed}"
        ) from None
    if backend in (AttentionBackend.nvte, AttentionBackend.splash):
        raise ValueError(
            f"{field}: {backend.value!r} (a vendor kernel) is not available in this build; use "
            "'jax_flash' (blockwise attention in pure JAX), 'vanilla', or 'default'"
        )
    return backend


def resolve_attention_backend(
    backend: AttentionBackend | str | None, *, dropout_active: bool = False
) -> AttentionBackend:
    """Turn `None`/`default` into a concrete backend for the current platform.

    `default` means `jax_flash` on accelerators (memory-efficient, no score matrix) and
    `CPU_DEFAULT_BACKEND` (also `jax_flash`) on CPU. Attention dropout needs the
    probability matrix, so with dropout active `default` resolves to `vanilla`.
    """
    backend = validate_attention_backend(backend)
    if backend is None or backend == AttentionBackend.default:
        if dropout_active:
            return AttentionBackend.vanilla
        if jax.default_backend() == "cpu":
            return CPU_DEFAULT_BACKEND
        return AttentionBackend.jax_flash
    if backend == AttentionBackend.jax_flash and dropout_active:
        raise ValueError(
            "attn_backend 'jax_flash' does not support attention dropout (attn_pdrop > 0); "
            "use attn_backend: vanilla or set attn_pdrop: 0"
        )
    assert backend in _IMPLEMENTED
    return backend


class AttentionMask(eqx.Module):
    """Which keys each query may attend to.

    Attributes:
        is_causal: query `i` sees keys `j <= i`.
        segment_ids: int ids over (..., Pos); a query sees only keys with the same id.
            Negative ids mark padding: padding only ever sees padding.
        sliding_window: if set, query `i` sees only keys with `i - j < sliding_window`.
    """

    is_causal: bool = eqx.field(static=True, default=True)
    segment_ids: NamedArray | None = None
    sliding_window: int | None = eqx.field(static=True, default=None)

    @staticmethod
    def causal(*, sliding_window: int | None = None) -> AttentionMask:
        return AttentionMask(is_causal=True, segment_ids=None, sliding_window=sliding_window)

    @staticmethod
    def from_example(example, *, sliding_window: int | None = None) -> AttentionMask:
        """Causal mask for an `LmExample`, with its segment ids when it has them."""
        return AttentionMask(
            is_causal=True, segment_ids=example.segment_ids, sliding_window=sliding_window
        )

    def with_segment_ids(self, segment_ids: NamedArray | None) -> AttentionMask:
        return AttentionMask(self.is_causal, segment_ids, self.sliding_window)

    def with_sliding_window(self, sliding_window: int | None) -> AttentionMask:
        """Narrow to `sliding_window` (the smaller window wins if one is already set)."""
        if sliding_window is None:
            return self
        if self.sliding_window is not None:
            sliding_window = min(sliding_window, self.sliding_window)
        return AttentionMask(self.is_causal, self.segment_ids, sliding_window)

    def materialize(self, QPos: Axis, KPos: Axis) -> NamedArray:
        """The boolean mask over (..., QPos, KPos); True means "may attend"."""
        q = hax.broadcast_to(hax.arange(QPos), (QPos, KPos))
        k = hax.broadcast_to(hax.arange(KPos), (QPos, KPos))
        mask = hax.ones((QPos, KPos), dtype=jnp.bool_)
        if self.is_causal:
            mask = mask & (k <= q)
        if self.sliding_window is not None:
            mask = mask & ((q - k) < self.sliding_window)
        if self.segment_ids is not None:
            q_seg = _segments_on(self.segment_ids, QPos)
            k_seg = q_seg.rename({QPos.name: KPos.name})
            mask = mask & (q_seg.broadcast_axis(KPos) == k_seg.broadcast_axis(QPos))
        return mask


def _segments_on(segment_ids: NamedArray, QPos: Axis) -> NamedArray:
    if QPos.name not in [ax.name for ax in segment_ids.axes]:
        raise ValueError(
            f"segment_ids must have the query position axis {QPos.name!r}; got axes "
            f"{segment_ids.axes}"
        )
    if segment_ids.resolve_axis(QPos.name).size != QPos.size:
        raise ValueError(
            f"segment_ids has {segment_ids.resolve_axis(QPos.name).size} positions but the "
            f"queries have {QPos.size}"
        )
    return segment_ids


def dot_product_attention(
    QPos: AxisSelector,
    KPos: AxisSelector,
    HeadSize: AxisSelector,
    query: NamedArray,
    key: NamedArray,
    value: NamedArray,
    mask: AttentionMask | None = None,
    *,
    scale: float | None = None,
    backend: AttentionBackend | str | None = None,
    flash_block_size: int | None = None,
    upcast: bool = False,
    dropout: hnn.Dropout | None = None,
    prng: PRNGKeyArray | None = None,
) -> NamedArray:
    """softmax(scale * q.k) . v over named axes.

    Args:
        QPos: query position axis. KPos: key position axis. HeadSize: the axis contracted
            between queries and keys (values carry an axis of the same name).
        query: (..., QPos, HeadSize); extra axes (e.g. query heads per KV group) broadcast.
        key: (..., KPos, HeadSize); its batch/head axes must all appear in `query`.
        value: (..., KPos, HeadSize).
        mask: which keys each query may see; None attends everywhere.
        scale: multiplier on the scores; default 1/sqrt(head size).
        backend: see `AttentionBackend`; None means `default`.
        flash_block_size: tile size for `jax_flash`.
        upcast: compute scores and softmax in float32 (vanilla; flash always accumulates in
            float32).
        dropout: dropout on the attention probabilities (vanilla only); active when `prng`
            is given.
        prng: key for dropout; None means inference.

    Returns:
        (..., QPos, HeadSize) in `query`'s axis order and `value`'s dtype.
    """
    QPos = query.resolve_axis(QPos)
    KPos = key.resolve_axis(KPos)
    HeadSize = query.resolve_axis(HeadSize)
    if scale is None:
        scale = 1.0 / float(HeadSize.size) ** 0.5
    dropout_active = dropout is not None and dropout.pdrop > 0 and prng is not None
    resolved = resolve_attention_backend(backend, dropout_active=dropout_active)

    query = query * jnp.asarray(scale, dtype=query.dtype)
    if resolved == AttentionBackend.jax_flash:
        from lm.models.layers.flash_attention import flash_attention

        out = flash_attention(
            QPos,
            KPos,
            HeadSize,
            query,
            key,
            value,
            mask,
            block_size=flash_block_size or DEFAULT_FLASH_BLOCK_SIZE,
        )
    else:
        out = _vanilla_attention(
            QPos, KPos, HeadSize, query, key, value, mask, upcast, dropout, prng
        )
    out_axes = tuple(
        value.resolve_axis(HeadSize.name) if ax == HeadSize else ax for ax in query.axes
    )
    out = out.rearrange(out_axes).astype(value.dtype)
    if resolved != AttentionBackend.jax_flash:
        # For `save_projections`. jax_flash names its own residual (in its internal layout);
        # naming this copy too would store the attention output twice.
        out = hax.tree_checkpoint_name(out, "attn_out")
    return out


def _vanilla_attention(QPos, KPos, HeadSize, query, key, value, mask, upcast, dropout, prng):
    # The axes the keys share with the queries (batch, KV heads) first, then any query-only
    # axes, positions and head size last: both products are then plain batched matmuls and
    # the (..., QPos, KPos) scores are laid out as XLA's dot emits them. In the models' own
    # order (batch, position, heads, ...) every score-sized tensor is transposed on the way
    # into and out of each matmul, forward and backward: 12-15% of a GPT-2 loss + gradient
    # at seq 512 (bench/configs/gpt2_512.yaml), 8% at seq 256.
    names = {QPos.name, KPos.name, HeadSize.name}
    q_names = {ax.name for ax in query.axes}
    shared = tuple(ax.name for ax in key.axes if ax.name not in names and ax.name in q_names)
    query = query.rearrange((*shared, ..., QPos.name, HeadSize.name))
    key = key.rearrange((*shared, ..., KPos.name, HeadSize.name))
    value = value.rearrange((*shared, ..., KPos.name, HeadSize.name))
    scores = hax.dot(query, key, axis=HeadSize)
    if upcast:
        scores = scores.astype(jnp.float32)
    if mask is not None:
        allowed = mask.materialize(QPos, KPos)
        scores = hax.where(allowed, scores, jnp.finfo(scores.dtype).min).rearrange(scores.axes)
    weights = hnn.softmax(scores, axis=KPos).astype(value.dtype)
    if dropout is not None and prng is not None:
        weights = dropout(weights, key=prng)
    return hax.dot(weights, value, axis=KPos)
