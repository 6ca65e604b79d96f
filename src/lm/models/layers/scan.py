"""Layer stacks: `Stacked` (scan over layers) or `BlockSeq` (unrolled), with remat policies.

`gradient_checkpointing:` accepts what Haliax's `ScanCheckpointPolicy` does:
- `true`: save each block's input carry only, recompute the block internals ("simple").
- `false`: no rematerialisation, save everything.
- `"full"` / `"recompute"`: save nothing, recompute every block from the stack input.
- `"offload"`: save carries and inputs in host memory.
- `"save_all"`: save carries, inputs and block internals.
- `"nested"`: a two-level scan with sqrt(num_layers) outer blocks.
- a mapping with `ScanCheckpointPolicy` fields (`save_carries`, `save_inputs`,
  `save_block_internals`, `offload_block_internals`, `prevent_cse`, `disable`, `simple`,
  `nested`).
All produce the same gradients; they trade memory for recomputation.
"""

from __future__ import annotations

from typing import Union

import haliax.nn as hnn
from haliax import Axis, ScanCheckpointPolicy

GradientCheckpointing = Union[bool, ScanCheckpointPolicy, str]  # noqa: UP007 (draccus needs Union)

_POLICY_STRINGS = ("full", "recompute", "offload", "save_all", "nested")


def checkpoint_policy(value: GradientCheckpointing, *, field: str = "gradient_checkpointing"):
    """Validate a `gradient_checkpointing` value and return Haliax's policy object."""
    if isinstance(value, ScanCheckpointPolicy):
        return value
    if isinstance(value, bool):
        return ScanCheckpointPolicy.from_bool_or_str(value)
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
