"""The plan as text: mesh, mappings, parameter table, counts, FLOPs, memory, verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lm.models.layers.scan import policy_name
from lm.plan.planner import ParamInfo, Plan
from lm.units import format_count, format_size


def _mapping(mapping: Mapping[str, Any]) -> str:
    if not mapping:
        return "(nothing sharded)"

    def target(v: Any) -> str:
        if isinstance(v, str):
            return v
        return "(" + ", ".join(str(x) for x in v) + ")"

    return ", ".join(f"{k} -> {target(v)}" for k, v in sorted(mapping.items()))


def _pspec(p: ParamInfo) -> str:
    parts = []
    for entry in p.pspec:
        if entry is None:
            parts.append("-")
        elif isinstance(entry, str):
            parts.append(entry)
        else:
            parts.append("+".join(entry))
    parts += ["-"] * (len(p.shape) - len(parts))
    return "(" + ", ".join(parts) + ")"


def _axes(p: ParamInfo) -> str:
    if not p.axes:
        return "x".join(str(d) for d in p.shape) or "scalar"
    return " x ".join(f"{name}:{size}" for name, size in p.axes)


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def format_plan(plan: Plan, *, title: str | None = None) -> str:
    """A human-readable report of `plan` (no verdict; see `format_verdict`)."""
    facts = plan.facts
    lines: list[str] = []
    mesh = " ".join(f"{k}={v}" for k, v in plan.mesh_shape.items())
    lines.append(title or f"Plan for {facts.get('model', 'the model')}")
    lines.append(f"Devices: {plan.num_devices} x {plan.device_kind} ({plan.platform})")
    lines.append(f"Mesh: {mesh}")
    lines.append(f"Compute axis mapping:   {_mapping(plan.compute_axis_mapping)}")
    lines.append(f"Parameter axis mapping: {_mapping(plan.parameter_axis_mapping)}")
    if facts.get("gradient_checkpointing_requested") == "auto":
        resolved = policy_name(facts.get("gradient_checkpointing"))
        lines.append(f"Gradient checkpointing: auto -> {resolved} (as train_lm resolves it)")
    if plan.warnings:
        lines.append("Warnings:")
        lines += [f"  - {warning}" for warning in plan.warnings]

    lines.append("")
    lines.append("Parameters:")
    rows = [("path", "logical axes", "dtype", "partition spec", "per device", "trainable")]
    for p in plan.params:
        rows.append(
            (
                p.path,
                _axes(p),
                p.dtype,
                _pspec(p),
                "x".join(str(d) for d in p.shard_shape) or "scalar",
                "yes" if p.trainable else "no",
            )
        )
    lines += _table(rows)

    lines.append("")
    lines.append("Counts:")
    counted = f"{plan.num_params:,} ({format_count(plan.num_params)})"
    if plan.num_trainable_params != plan.num_params:
        counted += f", trainable {plan.num_trainable_params:,}"
    expected = facts.get("expected_params")
    if expected is not None and expected != plan.num_trainable_params:
        counted += f"; the model config's formula says {expected:,}"
    lines.append(f"  parameters:        {counted}")
    lines.append(
        f"  parameter bytes:   {format_size(plan.param_bytes)} total, "
        f"{format_size(plan.param_bytes_per_device)} per device"
    )
    lines.append(f"  optimizer state:   {format_size(plan.opt_state_bytes)} total")
    lines.append(f"  training state:    {format_size(plan.state_bytes_per_device)} per device")

    lines.append("")
    lines.append("Compute:")
    batch = f"{plan.batch_size} examples"
    if plan.tokens_per_example is not None:
        batch += f" x {plan.tokens_per_example} tokens = {plan.tokens_per_step:,} tokens/step"
    lines.append(f"  batch:             {batch}")
    lines.append(
        f"  microbatches:      {plan.num_microbatches} "
        f"({plan.examples_per_device} example(s) per device per forward/backward)"
    )
    if plan.flops_per_token is not None:
        lines.append(
            f"  FLOPs/token:       {plan.flops_per_token:.3g} forward, "
            f"{3 * plan.flops_per_token:.3g} per training token"
        )
        lines.append(f"  FLOPs/step:        {plan.train_flops_per_step:.3g}")
    if plan.planned_tokens is not None:
        budget = 20 * max(plan.num_trainable_params, 1)
        lines.append(
            f"  planned tokens:    {format_count(plan.planned_tokens)} over "
            f"{plan.num_train_steps:,} steps = {plan.planned_tokens / budget:.3g} x the "
            "20-tokens-per-parameter budget"
        )

    lines.append("")
    memory = plan.memory
    if memory is None:
        lines.append("Memory: not estimated (compile_step: false)")
    else:
        lines.append(
            f"Memory per device (XLA memory analysis of the compiled train step, "
            f"compiled in {plan.compile_seconds:.1f} s):"
        )
        rows = [
            ("arguments (state + batch)", format_size(memory.argument_bytes), ""),
            (
                "outputs",
                format_size(memory.output_bytes),
                f"({format_size(memory.alias_bytes)} reuse donated arguments)",
            ),
            ("temporaries", format_size(memory.temp_bytes), "(activations, gradients, scratch)"),
            ("generated code", format_size(memory.generated_code_bytes), ""),
            ("total", format_size(memory.total_bytes), ""),
        ]
        lines += _table(rows)
        if plan.platform == "cpu":
            lines.append(
                "  (compiled by XLA:CPU; GPU and TPU compilers fuse and schedule differently, "
                "so read this as an estimate of the accelerator's number)"
            )
    return "\n".join(lines)


def format_verdict(plan: Plan, budget_bytes: int, advice: Sequence[str]) -> str:
    """Whether the step fits in `budget_bytes` per device, with `advice` when it does not."""
    assert plan.memory is not None
    total = plan.memory.total_bytes
    used = 100.0 * total / budget_bytes
    if not advice and total <= budget_bytes:
        return (
            f"FITS: {format_size(total)} of {format_size(budget_bytes)} per device ({used:.1f}%)."
        )
    lines = [
        f"DOES NOT FIT: the step needs {format_size(total)} per device, the budget is "
        f"{format_size(budget_bytes)} ({used:.0f}%). To reduce it:"
    ]
    lines += [f"  - {a}" for a in advice]
    return "\n".join(lines)
