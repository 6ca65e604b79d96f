"""XLA compile options for lm's large jitted programs (state init, train step, eval step).

On CPU, XLA's default backend optimisation level (LLVM's full pipeline over every fused
kernel) makes compiling a model's init and train step take seconds, while the time these
programs run is spent mostly in the matmul library calls, which the level does not change.
Level 1 compiled them 1.6-3x faster at the same step time in docs/benchmarks.md, so lm uses it
for these programs on CPU. Other backends keep XLA's defaults. A user's own
`--xla_backend_optimization_level` in `XLA_FLAGS` wins.
"""

from __future__ import annotations

import os
from typing import Any

import jax

CPU_BACKEND_OPTIMIZATION_LEVEL = 1


class _Options(dict):
    """A hashable dict: jit wrappers cache on their keyword arguments."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def xla_compiler_options(platform: str | None = None) -> dict[str, Any] | None:
    """`compiler_options` for `jax.jit` / `named_jit` of the big programs (None: defaults)."""
    if platform is None:
        platform = jax.default_backend()
    if platform != "cpu":
        return None
    if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return None
    return _Options(xla_backend_optimization_level=CPU_BACKEND_OPTIMIZATION_LEVEL)
