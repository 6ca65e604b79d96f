"""Layer stacks: `Stacked` (scan over layers) or `BlockSeq` (unrolled), with remat policies.

`gradient_checkpointing:` accepts what Haliax's `ScanCheckpointPolicy` does:
- `true`: save each block's input carry only, recompute the block internals ("simple").
- `false`: no rematerialisation, save everything.
- `"full"` / `"recompute"`: save nothing, recompute every block from the stack input.
- `"offload"`: save carries and inputs in host memory.
- `"save_all"`: save carries, inputs and block internals.
- `"nested"`: a two-level scan with sqrt(num_layers) outer blocks.
- `"save_projections"`: save each block's input and the outputs of its matmuls (the names in
  `PROJECTION_NAMES`: attention q/k/v projections, the attention output, its softmax
  log-sum-exp and its output projection, the MLP up/gate projections); recompute only the
  elementwise ops (norms, activations, rotary embeddings) in the backward pass.
- `"auto"`: the fastest of `false` / `"save_projections"` / `true` whose step fits in memory.
  On accelerators `false` (no remat) comes first; on CPU it is skipped, since storing every
  elementwise intermediate measured slower there than recomputing them. The training entry
  point resolves it (`resolve_gradient_checkpointing`) from an estimate of the step's peak
  memory (parameters, gradients and Adam state in float32, the activations each layer keeps
  for the backward pass, the float32 logits of the loss) against the device's memory; a
  model built with an unresolved `"auto"` uses `true`.
- a mapping with `ScanCheckpointPolicy` fields (`save_carries`, `save_inputs`,
  `save_block_internals`, `offload_block_internals`, `prevent_cse`, `disable`, `simple`,
  `nested`).
All produce the same gradients; they trade memory for recomputation.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Union

import haliax.nn as hnn
import jax
import jax.numpy as jnp
from haliax import Axis, ScanCheckpointPolicy

import lm.prefault
from lm.config.errors import FieldError, did_you_mean
from lm.memory_limits import host_memory_bytes, process_rss_bytes

GradientCheckpointing = Union[bool, ScanCheckpointPolicy, str]  # noqa: UP007 (draccus needs Union)

logger = logging.getLogger(__name__)

AUTO = "auto"
SAVE_PROJECTIONS = "save_projections"
_POLICY_STRINGS = ("full", "recompute", "offload", "save_all", "nested", SAVE_PROJECTIONS, AUTO)

PROJECTION_NAMES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "attn_out",
    "attn_lse",
    "attn_proj",
    "mlp_gate",
    "mlp_up",
)
"""`checkpoint_name`s the models give their matmul outputs (and flash attention its residuals);
`"save_projections"` keeps exactly these across the backward pass."""

AUTO_MEMORY_FRACTION = 0.6
"""`"auto"` picks a policy only if its estimate fits in this fraction of the
device's memory (headroom for XLA's temporaries, fragmentation and the estimate's error)."""


def checkpoint_policy(value: GradientCheckpointing, *, field: str = "gradient_checkpointing"):
    """Validate a `gradient_checkpointing` value and return Haliax's policy object."""
    if isinstance(value, ScanCheckpointPolicy):
        return value
    if isinstance(value, bool):
        return ScanCheckpointPolicy.from_bool_or_str(value)
    if value == AUTO:
        return ScanCheckpointPolicy.from_bool_or_str(True)
    if value == SAVE_PROJECTIONS:
        return ScanCheckpointPolicy(
            save_carries=True, save_inputs=False, save_block_internals=PROJECTION_NAMES
        )
    if isinstance(value, str) and value in _POLICY_STRINGS:
        return ScanCheckpointPolicy.from_bool_or_str(value)
    allowed = "true, false, " + ", ".join(repr(s) for s in _POLICY_STRINGS)
    raise FieldError(
        field,
        f"unknown checkpointing policy {value!r}; allowed: {allowed}, or a policy mapping"
        f"{did_you_mean(str(value), _POLICY_STRINGS)}",
    )


def stack_layers(
    Layers: Axis, block_cls, *, scan: bool, gradient_checkpointing: GradientCheckpointing
):
    """`Stacked.init` (scan over layers) or `BlockSeq.init` (unrolled), both with the policy."""
    policy = checkpoint_policy(gradient_checkpointing)
    if scan:
        return hnn.Stacked.init(Layers, block_cls, gradient_checkpointing=policy)
    return hnn.BlockSeq.init(Layers, block_cls, gradient_checkpointing=policy)


def estimate_step_bytes(
    config: Any,
    *,
    vocab_size: int,
    tokens_per_device: int,
    compute_bytes: int = 4,
    policy: bool | str = False,
) -> int:
    """Peak bytes per device of a training step (an estimate), with no rematerialisation
    (`policy=False`, the default), with `"save_projections"` or with every layer recomputed
    (`policy=True`).

    Counts float32 parameters, gradients and two Adam moments (16 bytes per parameter,
    unsharded: a replicated upper bound), the activations each layer keeps for the backward
    pass, the embeddings, and the loss's float32 logits and their gradient (2 x vocab per
    token). Per token and layer, no remat keeps ~10 hidden-sized and 3 MLP-sized tensors (the
    vanilla attention backend also two (heads x seq_len) score/probability rows);
    `"save_projections"` keeps the block input, q/k/v, the attention output, its log-sum-exp
    and output projection and the MLP up (and gate) projections, plus one layer's full set
    while that layer's backward pass recomputes it; `True` keeps only each layer's input, plus
    that one layer's full set.
    """
    if policy not in (False, SAVE_PROJECTIONS, True):
        raise ValueError(f"no memory estimate for gradient_checkpointing {policy!r}")
    E = config.Embed.size
    M = config.Mlp.size
    H = config.Heads.size
    L = config.num_layers
    S = config.seq_len
    params = config.total_trainable_params(vocab_size)
    full_layer = 10 * E + 3 * M
    backend = getattr(config, "attention_backend", None)
    if backend is not None and getattr(backend, "value", backend) == "vanilla":
        full_layer += 2 * H * S
    if policy is False:
        per_token = L * full_layer
    elif policy is True:
        per_token = L * E + full_layer
    else:
        q = H * config.HeadSize.size
        kv = getattr(config, "num_kv_heads", H) * config.HeadSize.size
        gated = getattr(config, "intermediate_dim", None) is not None  # Llama-family GLU MLP
        saved = 2 * E + q + 2 * kv + q + H + M * (2 if gated else 1)
        per_token = L * saved + full_layer
    activations = tokens_per_device * (per_token + 2 * E) * compute_bytes
    logits = tokens_per_device * 2 * vocab_size * 4
    return int(16 * params + activations + logits)


def device_memory_bytes() -> int:
    """Memory one local device can use: the allocator limit on accelerators; on CPU the
    host's memory (its container's limit where that is smaller) less what this process
    holds already (Python, jax, the data pipeline: ~0.3 GiB; not the prefault pool's pages,
    which are the step's), split over the local devices."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    # the prefault pool's pages are resident but held for the step itself: not taken
    held = process_rss_bytes() - lm.prefault.held_bytes()
    free = max(0, host_memory_bytes() - max(0, held))
    return free // max(1, jax.local_device_count())


def policy_name(value: GradientCheckpointing) -> str:
    """How the YAML spells a `gradient_checkpointing` value: `true`/`false`, or the policy name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def resolve_gradient_checkpointing(
    config: Any,
    *,
    vocab_size: int,
    tokens_per_device: int,
    compute_dtype: Any = jnp.float32,
    bytes_available: int | None = None,
    platform: str | None = None,
) -> Any:
    """`config` with `gradient_checkpointing: "auto"` replaced by the first of `False` (no
    remat; accelerators only), `"save_projections"` and `True` whose estimated step fits in
    `AUTO_MEMORY_FRACTION` of `bytes_available` (default: the device's memory). `platform`
    defaults to `jax.default_backend()`. Other values are returned unchanged."""
    if getattr(config, "gradient_checkpointing", None) != AUTO:
        return config
    if platform is None:
        platform = jax.default_backend()
    if bytes_available is None:
        bytes_available = device_memory_bytes()
    # Measured (docs/benchmarks.md): on XLA:CPU no remat is slower than recomputing (it
    # stores and re-reads every elementwise intermediate), so CPU starts at save_projections.
    ladder = [SAVE_PROJECTIONS] if platform == "cpu" else [False, SAVE_PROJECTIONS]
    budget = AUTO_MEMORY_FRACTION * bytes_available

    def estimate(policy: bool | str) -> int:
        return estimate_step_bytes(
            config,
            vocab_size=vocab_size,
            tokens_per_device=tokens_per_device,
            compute_bytes=jnp.dtype(compute_dtype).itemsize,
            policy=policy,
        )

    choice: bool | str = True
    for candidate in ladder:
        need = estimate(candidate)
        if need <= budget:
            choice = candidate
            break
    logger.info(
        "gradient_checkpointing: auto -> %s (estimated %.2f GiB per device %s; %.2f GiB "
        "available, limit %.0f%%)",
        policy_name(choice),
        need / 2**30,
        "with it" if choice is not True else "with save_projections",
        bytes_available / 2**30,
        100 * AUTO_MEMORY_FRACTION,
    )
    if choice is True:
        need = estimate(True)
        # this estimate reads high (~1.3x the compiled step's), the others low (~0.6x):
        # warned against the whole memory, not the 60% the choice uses
        if need > bytes_available:
            logger.warning(
                "even with every layer recomputed a step is estimated at %.2f GiB per device, "
                "more than the %.2f GiB available: it may run out of memory (the estimate is "
                "rough; `python -m lm.main.plan` compiles the step and says). Fewer examples "
                "per device (trainer.per_device_parallelism, or train_batch_size), a shorter "
                "seq_len or more devices need less",
                need / 2**30,
                bytes_available / 2**30,
            )
    return dataclasses.replace(config, gradient_checkpointing=choice)
