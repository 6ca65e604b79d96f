"""glibc allocator settings for training on the CPU.

XLA:CPU allocates each run's temporary buffer (hundreds of MiB for a small GPT-2 step) with
`malloc` from one of its worker threads. glibc serves an allocation that large from a fresh
`mmap` in a worker thread's arena and unmaps it when it is freed, so every step page-faults the
whole temporary area back in: ~84,000 minor faults and ~0.2 s of kernel time per step on
`bench/configs/gpt2_256.yaml`. With one arena, no `mmap` for large blocks and a trim threshold
above the temporaries, the block is carved from the heap once and reused: no page faults
after the first step (numbers in docs/benchmarks.md).

The settings only work if they are made before any thread other than the main one has
allocated (glibc fixes its arena limit then), so `tune_host_allocator` refuses once jax or
numpy has been imported. `python -m lm.main.<tool>` applies them as the process starts when
the run is CPU-only (`JAX_PLATFORMS=cpu`, or no accelerator plugin installed); set
`LM_HOST_MALLOC=0` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

ENV_VAR = "LM_HOST_MALLOC"

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int)

_ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin")

applied: bool | None = None
"""Whether `tune_host_allocator` changed the settings in this process (None: not asked)."""


def _cpu_only() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return all(p.strip() == "cpu" for p in platforms.split(","))
    return not any(importlib.util.find_spec(m) is not None for m in _ACCELERATOR_MODULES)


def tune_host_allocator() -> bool:
    """Apply the allocator settings if this is a CPU-only run on glibc and it is still early
    enough (no jax or numpy imported yet). Returns whether they were applied."""
    global applied
    if applied is not None:
        return applied
    applied = False
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or not _cpu_only():
        return False
    if any(m in sys.modules for m in ("jax", "jaxlib", "numpy")):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has mallopt but not these)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    applied = bool(
        mallopt(_M_ARENA_MAX, 1)
        and mallopt(_M_MMAP_MAX, 0)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    return applied
