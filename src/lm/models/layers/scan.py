"""Layer stacks: `Stacked` (scan over layers) or `BlockSeq` (unrolled), with remat policies.

`gradient_checkpointing:` accepts what Haliax's `ScanCheckpointPolicy` does:
- `true`: save each block's input carry only, recompute the block internals ("simple").
- `false`: no rematerialisation, save everything.
- `"full"` / `"recompute"`: save nothing, recompute every block from the stack input.
- `"offload"`: save carries and inputs in host memory.
- `"save_all"`: save carries, inputs and block internals.
- `"nested"`: a two-level scan with sqrt(num_layers) outer blocks.
- `"auto"`: on accelerators, no rematerialisation when the step fits in memory, else
  `true`; on CPU always `true` (measured no slower there). The training
  entry point resolves it (`resolve_gradient_checkpointing`) from an estimate of the step's
  peak memory without remat (parameters, gradients and Adam state in float32, the
  activations every layer saves for the backward pass, the float32 logits of the loss)
  against the device's memory; a model built with an unresolved `"auto"` uses `true`.
- a mapping with `ScanCheckpointPolicy` fields (`save_carries`, `save_inputs`,
  `save_block_internals`, `offload_block_internals`, `prevent_cse`, `disable`, `simple`,
  `nested`).
All produce the same gradients; they trade memory for recomputation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Union

import haliax.nn as hnn
import jax
import jax.numpy as jnp
from haliax import Axis, ScanCheckpointPolicy

GradientCheckpointing = Union[bool, ScanCheckpointPolicy, str]  # noqa: UP007 (draccus needs Union)

logger = logging.getLogger(__name__)

AUTO = "auto"
_POLICY_STRINGS = ("full", "recompute", "offload", "save_all", "nested", AUTO)

AUTO_MEMORY_FRACTION = 0.6
"""`"auto"` turns remat off only if the no-remat estimate fits in this fraction of the
device's memory (headroom for XLA's temporaries, fragmentation and the estimate's error)."""


def checkpoint_policy(value: GradientCheckpointing, *, field: str = "gradient_checkpointing"):
    """Validate a `gradient_checkpointing` value and return Haliax's policy object."""
    if isinstance(value, ScanCheckpointPolicy):
        return value
    if isinstance(value, bool):
        return ScanCheckpointPolicy.from_bool_or_str(value)
    if value == AUTO:
        return ScanCheckpointPolicy.from_bool_or_str(True)
    if isinstance(value, str) and value in _POLICY_STRINGS:
        return ScanCheckpointPolicy.from_bool_or_str(value)
    allowed = "true, false, " + ", ".join(repr(s) for s in _POLICY_STRINGS)
    raise ValueError(
        f"{field}: unknown checkpointing policy {value!r}; allowed: {allowed}, or a policy mapping"
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
    config: Any, *, vocab_size: int, tokens_per_device: int, compute_bytes: int = 4
) -> int:
    """Peak bytes per device of a training step with no rematerialisation (an estimate).

    Counts float32 parameters, gradients and two Adam moments (16 bytes per parameter,
    unsharded: a replicated upper bound), the activations each layer saves for the backward
    pass (per token: ~10 hidden-sized and 3 MLP-sized tensors; the vanilla attention backend
    also keeps two (heads x seq_len) score/probability rows per token), the embeddings,
    and the loss's float32 logits and their gradient (2 x vocab per token).
    """
    E = config.Embed.size
    M = config.Mlp.size
    H = config.Heads.size
    L = config.num_layers
    S = config.seq_len
    params = config.total_trainable_params(vocab_size)
    per_token_layer = 10 * E + 3 * M
    backend = getattr(config, "attention_backend", None)
    if backend is not None and getattr(backend, "value", backend) == "vanilla":
        per_token_layer += 2 * H * S
    activations = tokens_per_device * (L * per_token_layer + 2 * E) * compute_bytes
    logits = tokens_per_device * 2 * vocab_size * 4
    return int(16 * params + activations + logits)


def device_memory_bytes() -> int:
    """Memory one local device can use: the allocator limit on accelerators, the host's
    physical memory split over the local devices on CPU."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total // max(1, jax.local_device_count())


def resolve_gradient_checkpointing(
    config: Any,
    *,
    vocab_size: int,
    tokens_per_device: int,
    compute_dtype: Any = jnp.float32,
    bytes_available: int | None = None,
    platform: str | None = None,
) -> Any:
    """`config` with `gradient_checkpointing: "auto"` replaced by `False` (no remat) when the
    no-remat step fits in `AUTO_MEMORY_FRACTION` of `bytes_available` (default: the device's
    memory), else by `True`. On CPU (`platform`, default `jax.default_backend()`) it is
    always `True`: there the recomputation measured no slower than storing the activations.
    Other values are returned unchanged."""
    if getattr(config, "gradient_checkpointing", None) != AUTO:
        return config
    if platform is None:
        platform = jax.default_backend()
    if platform == "cpu":
        # Measured (docs/benchmarks.md): on XLA:CPU the no-remat step is no faster (often
        # 3-10% slower: storing and re-reading every layer's activations through the scan
        # costs more memory traffic than recomputing them), so keep the memory saving.
        logger.info("gradient_checkpointing: auto -> true (CPU: recomputing is not slower)")
        return dataclasses.replace(config, gradient_checkpointing=True)
    if bytes_available is None:
        bytes_available = device_memory_bytes()
    need = estimate_step_bytes(
        config,
        vocab_size=vocab_size,
        tokens_per_device=tokens_per_device,
        compute_bytes=jnp.dtype(compute_dtype).itemsize,
    )
    fits = need <= AUTO_MEMORY_FRACTION * bytes_available
    logger.info(
        "gradient_checkpointing: auto -> %s (estimated %.2f GiB per device without remat; "
        "%.2f GiB available, limit %.0f%%)",
        "false" if fits else "true",
        need / 2**30,
        bytes_available / 2**30,
        100 * AUTO_MEMORY_FRACTION,
    )
    return dataclasses.replace(config, gradient_checkpointing=not fits)
