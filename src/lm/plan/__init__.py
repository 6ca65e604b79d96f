"""Planning a run before it runs: shardings, sizes, FLOPs, per-device memory and advice.

`python -m lm.main.plan --config_path run.yaml --device_memory 16GiB` is the command-line
face of this package (see docs/trainer.md, "Planning a run").
"""

from lm.plan.advice import memory_advice
from lm.plan.planner import (
    MemoryEstimate,
    ParamInfo,
    Plan,
    abstract_batch,
    describe_parameters,
    plan_lm,
    plan_training,
    tree_nbytes,
    with_shardings,
)
from lm.plan.report import format_plan, format_verdict
from lm.units import format_count, format_size, parse_size

__all__ = [
    "MemoryEstimate",
    "ParamInfo",
    "Plan",
    "abstract_batch",
    "describe_parameters",
    "format_count",
    "format_plan",
    "format_size",
    "format_verdict",
    "memory_advice",
    "parse_size",
    "plan_lm",
    "plan_training",
    "tree_nbytes",
    "with_shardings",
]
