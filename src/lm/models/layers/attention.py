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
- `nvte`: NVIDIA's fused attention on GPUs: cuDNN's flash-attention kernels (the ones
  Transformer Engine's JAX attention runs) through `jax.nn.dot_product_attention(
  implementation="cudnn")`, without the Transformer Engine package. GPU only, bfloat16 or
  float16 inputs; anything else is an error naming the alternatives, never a silent
  substitution. Not the GPU `default` until measured on a GPU (docs/benchmarks.md).
- `splash` (TPU Pallas) is a reference backend that this build does not ship; asking for it
  explicitly is an error.
"""

from __future__ import annotations

import enum
import logging
import math

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
from haliax import Axis, NamedArray
from haliax.axis import AxisSelector
from jaxtyping import PRNGKeyArray

from lm.config.errors import FieldError, SetupConfigError

logger = logging.getLogger(__name__)


class AttentionBackend(enum.Enum):
    """Which attention implementation to run (`attn_backend:`)."""

    default = "default"
    vanilla = "vanilla"
    jax_flash = "jax_flash"
    nvte = "nvte"
    splash = "splash"


_IMPLEMENTED = (AttentionBackend.vanilla, AttentionBackend.jax_flash, AttentionBackend.nvte)

FUSED_IMPLEMENTATION = "cudnn"
"""`jax.nn.dot_product_attention`'s implementation behind `nvte` (tests run the same plumbing
with "xla", JAX's reference implementation, on the CPU)."""
_FUSED_DTYPES = (jnp.bfloat16, jnp.float16)

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
        raise FieldError(
            field, f"unknown attention backend {backend!r}; allowed: {allowed}"
        ) from None
    if backend == AttentionBackend.splash:
        raise FieldError(
            field,
            f"{backend.value!r} (a vendor kernel) is not available in this build; use "
            "'jax_flash' (blockwise attention in pure JAX), 'vanilla', or 'default'",
        )
    return backend


def check_backend_platform(
    backend: AttentionBackend | str | None, *, field: str = "attn_backend"
) -> None:
    """An error if this run's platform cannot run `backend` (`nvte` needs a GPU); `train_lm`
    calls it at start-up, before anything is written."""
    backend = validate_attention_backend(backend, field=field)
    if backend == AttentionBackend.nvte and FUSED_IMPLEMENTATION == "cudnn":
        platform = jax.default_backend()
        if platform != "gpu":
            # a configuration problem (exit 2), though found only once JAX knows the platform
            raise SetupConfigError(
                f"{field}: 'nvte' runs NVIDIA's fused attention (cuDNN) and needs a GPU; this "
                f"run is on {platform}: use jax_flash or default"
            )


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
    if backend in (AttentionBackend.jax_flash, AttentionBackend.nvte) and dropout_active:
        raise ValueError(
            f"attn_backend {backend.value!r} does not support attention dropout (attn_pdrop > 0); "
            "use attn_backend: vanilla or set attn_pdrop: 0"
        )
    check_backend_platform(backend)
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
    elif resolved == AttentionBackend.nvte:
        out = _fused_attention(QPos, KPos, HeadSize, query, key, value, mask)
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


def _fused_attention(QPos, KPos, HeadSize, query, key, value, mask):
    """`nvte`: `jax.nn.dot_product_attention` on already-scaled queries.

    Its layout is (batch, position, heads, head size), keys with K heads and queries with
    N = K * G. Axes the keys share with the queries are batch axes when they come before the
    key position in the keys' order and head axes after it (the models' (batch, position,
    heads, head size)); query-only axes (query heads per KV group) are the groups. Causal
    masks and causal sliding windows are the kernel's own (it skips the masked tiles);
    segment ids (and a non-causal window) go in as a boolean mask."""
    names = {QPos.name, KPos.name, HeadSize.name}
    q_names = {ax.name for ax in query.axes}
    key_names = [ax.name for ax in key.axes]
    shared = [ax for ax in key.axes if ax.name not in names]
    missing = [ax.name for ax in shared if ax.name not in q_names]
    if missing:
        raise ValueError(f"key axes {missing} are not in the query axes {query.axes}")
    kpos_at = key_names.index(KPos.name)
    batch = tuple(ax for ax in shared if key_names.index(ax.name) < kpos_at)
    heads = tuple(ax for ax in shared if key_names.index(ax.name) > kpos_at)
    shared_names = {ax.name for ax in shared}
    group = tuple(ax for ax in query.axes if ax.name not in names | shared_names)
    VHead = value.resolve_axis(HeadSize.name)
    if FUSED_IMPLEMENTATION == "cudnn" and not all(
        x.dtype in _FUSED_DTYPES for x in (query, key, value)
    ):
        raise ValueError(
            "attn_backend 'nvte' (cuDNN fused attention) takes bfloat16 or float16 inputs, got "
            f"{query.dtype}; compute in bfloat16 (trainer.mp: p=f32,c=bfloat16) or use "
            "attn_backend: jax_flash"
        )
    B, K, G = (math.prod(ax.size for ax in axes) for axes in (batch, heads, group))
    T, S = QPos.size, KPos.size
    q = query.rearrange((*batch, QPos, *heads, *group, HeadSize)).array
    k = key.rearrange((*batch, KPos, *heads, HeadSize)).array
    v = value.rearrange((*batch, KPos, *heads, VHead)).array
    q = q.reshape(B, T, K * G, HeadSize.size)
    k = k.reshape(B, S, K, HeadSize.size)
    v = v.reshape(B, S, K, VHead.size)

    causal = mask is not None and mask.is_causal
    window = mask.sliding_window if mask is not None else None
    local = (window - 1, 0) if causal and window is not None else None
    allowed = None
    if mask is not None and (mask.segment_ids is not None or (window is not None and not causal)):
        rest = AttentionMask(False, mask.segment_ids, None if causal else window)
        allowed = hax.broadcast_to(rest.materialize(QPos, KPos), (*batch, QPos, KPos))
        allowed = allowed.array.reshape(B, 1, T, S)
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=allowed,
        scale=1.0,
        is_causal=causal,
        local_window_size=local,
        implementation=FUSED_IMPLEMENTATION,
    )
    out = out.reshape(*(ax.size for ax in batch), T, *(ax.size for ax in (*heads, *group)), -1)
    return hax.named(out, (*batch, QPos, *heads, *group, VHead))


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
