"""XLA compile options for lm's large jitted programs (state init, train step, eval step).

On CPU, XLA's default backend optimisation level (LLVM's full pipeline over every fused
kernel) makes compiling a model's init and train step take seconds, while the time these
programs run is spent mostly in the matmul library calls, which the level does not change.
Level 1 compiled them 1.6-3x faster at the same step time in docs/benchmarks.md, so lm uses it
for these programs on CPU; on a CPU with AVX-512 it also has the elementwise kernels
vectorised 512 bits wide (XLA:CPU prefers 256), 1-4% faster train steps in interleaved A/Bs.
Other backends keep XLA's defaults. A user's own `--xla_backend_optimization_level` or
`--xla_cpu_prefer_vector_width` in `XLA_FLAGS` wins.

`use_unrolled_threefry_on_cpu` lowers JAX's threefry PRNG on CPU the way JAX lowers it on
GPU and TPU (straight-line rounds instead of a five-trip loop): the same random bits; a tiny
GPT-2's init compiled 2.6x faster at XLA's default level, parameter-shaped draws ran 2.4x
faster.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import jax

logger = logging.getLogger(__name__)

CPU_BACKEND_OPTIMIZATION_LEVEL = 1
# XLA:CPU's elementwise kernels are vectorised for 256-bit registers unless told otherwise;
# on a CPU with AVX-512 lm asks for 512 (docs/benchmarks.md, ninth session).
CPU_AVX512_VECTOR_WIDTH = 512


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
    flags = os.environ.get("XLA_FLAGS", "")
    options = _Options()
    if "xla_backend_optimization_level" not in flags:
        options["xla_backend_optimization_level"] = CPU_BACKEND_OPTIMIZATION_LEVEL
    if "xla_cpu_prefer_vector_width" not in flags and host_has_avx512():
        options["xla_cpu_prefer_vector_width"] = CPU_AVX512_VECTOR_WIDTH
    return options or None


@functools.cache
def host_has_avx512() -> bool:
    """Whether this (Linux) host's CPU has AVX-512 (`avx512f` in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


@functools.cache
def use_unrolled_threefry_on_cpu() -> bool:
    """Lower `threefry2x32` (every `jax.random` draw and split) on CPU without its loop.

    JAX lowers the threefry hash with its 20 rounds written out on GPU and TPU, but on CPU as
    a `fori_loop` of five trips over the whole output: each trip reads and writes two arrays
    of the output's size, and XLA:CPU compiles every sampler's loop (one per distinct shape)
    as its own set of kernels. The written-out rounds are one elementwise kernel per draw.
    Same function of key and counter, so the same bits (a test checks known-answer vectors and
    the loop's output). Measured in docs/benchmarks.md (ninth session): six normal draws of
    a GPT-2's parameter shapes compiled in 0.34 s instead of 1.7-2.0 s at XLA's default
    level (0.33 instead of 0.49-0.51 s at lm's level 1) and ran in 0.077 instead of 0.185 s;
    a tiny GPT-2's init compiled in 0.55 s instead of 1.43 s.

    Process-wide and idempotent; programs already compiled keep their lowering. Called by
    `TrainerConfig.initialize` and `LmConfig.build`, so importing lm changes nothing. Returns
    whether the lowering is in place: False if this JAX no longer has the private names
    it uses (JAX's own lowering stays, values are the same either way).
    """
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32

        mlir.register_lowering(
            threefry2x32.threefry2x32_p,
            threefry2x32._threefry2x32_lowering_rule,
            platform="cpu",
        )
    except (ImportError, AttributeError) as e:  # a JAX without these private names
        logger.debug("keeping JAX's CPU threefry lowering: %s", e)
        return False
    return True
