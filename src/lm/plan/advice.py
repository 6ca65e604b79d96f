"""What to change when a planned step does not fit in device memory.

`memory_advice(plan, budget)` is pure: it reads the memory estimate's split (arguments,
i.e. training state and batch, versus temporaries, i.e. activations and gradients) and the
run's settings (`Plan.facts`), and returns concrete config changes, the most effective
first, each naming the field to set and why it helps.
"""

from __future__ import annotations

import math

from lm.plan.planner import Plan
from lm.units import format_size


def _activation_advice(plan: Plan) -> list[str]:
    facts = plan.facts
    memory = plan.memory
    assert memory is not None
    temp = format_size(memory.temp_bytes)
    out = []
    checkpointing = facts.get("gradient_checkpointing")
    if checkpointing is False or checkpointing in ("save_all", "save_projections"):
        out.append(
            "set model.gradient_checkpointing: true: each layer's activations are recomputed in "
            f"the backward pass instead of kept (temporaries are {temp} per device now)"
        )
    per_device = plan.examples_per_device
    if per_device > 1:
        half = per_device // 2
        out.append(
            f"set trainer.per_device_parallelism: {half} (now {per_device} examples per device "
            f"per forward): the batch of {plan.batch_size} is then accumulated over "
            f"{plan.num_microbatches * (per_device // half)} microbatches, and temporaries "
            "shrink roughly in proportion"
        )
    elif plan.tokens_per_example is not None:
        out.append(
            f"one example per device already: lower model.seq_len (now "
            f"{plan.tokens_per_example}) or add devices"
        )
    if facts.get("compute_dtype") == "float32":
        out.append(
            'set trainer.mp: "p=f32,c=bfloat16": activations are stored in bfloat16, half the '
            "bytes of float32, on GPU and TPU (parameters and optimizer state stay float32; "
            "XLA:CPU computes in float32, so a CPU plan does not show the saving)"
        )
    vocab, seq = facts.get("vocab_size"), facts.get("seq_len")
    if vocab and seq and facts.get("cross_entropy_block_size") is None:
        logits = per_device * seq * vocab * 4
        block = max(256, 2 ** int(math.log2(max(vocab // 8, 1))))
        if logits >= 0.1 * memory.temp_bytes and block < vocab:
            out.append(
                f"set model.cross_entropy_block_size: {block}: the loss now builds "
                f"the full (tokens x vocab) logits, {format_size(logits)} per device per "
                "forward in float32, plus their gradient"
            )
    return out


def _state_advice(plan: Plan) -> list[str]:
    facts = plan.facts
    out = []
    state = format_size(plan.state_bytes_per_device)
    if facts.get("fsdp_axis") is None:
        out.append(
            "set trainer.fsdp_axis: embed: parameters and optimizer state are replicated on "
            f"every device now ({state} per device); FSDP shards them over the data axis "
            f"({facts.get('data_axis_size', '?')} devices)"
        )
    replicas = facts.get("replica_axis_size", 1)
    if replicas and replicas > 1:
        out.append(
            f"lower trainer.replica_ici_axis_size / replica_dcn_axis_size (now {replicas} "
            "replicas): each replica holds a full copy of the sharded state"
        )
    out.append(
        f"use more devices: the training state takes {state} per device over "
        f"{plan.num_devices} device(s) and shrinks in proportion with FSDP"
    )
    return out


def memory_advice(plan: Plan, budget_bytes: int) -> list[str]:
    """Config changes that reduce the step's per-device memory, most effective first.

    Empty when the estimate fits in `budget_bytes`."""
    memory = plan.memory
    if memory is None:
        raise ValueError("memory_advice needs a plan with a memory estimate (compile_step)")
    if memory.total_bytes <= budget_bytes:
        return []
    activations = _activation_advice(plan)
    state = _state_advice(plan)
    if memory.temp_bytes >= memory.argument_bytes:
        return activations + state
    return state + activations
