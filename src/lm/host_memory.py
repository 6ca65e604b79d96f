"""glibc allocator settings for training on the CPU.

XLA:CPU allocates each run's temporary buffer (hundreds of MiB for a small GPT-2 step) with
`malloc` from one of its worker threads. glibc serves an allocation that large from a fresh
`mmap` and unmaps it when it is freed, so every step page-faults the whole temporary area back
in, 4 KiB at a time: ~84,000 minor faults and ~0.2 s of kernel time per step on
`bench/configs/gpt2_256.yaml`. Two ways out, chosen by `LM_HOST_MALLOC`:

* `hugepages` (what `auto`, the default, picks where the kernel offers transparent huge pages
  on request): glibc's `glibc.malloc.hugetlb=1` tunable, which asks for 2 MiB pages for its
  large blocks and heap: ~550 faults per step. Tunables are read when a process starts, so
  the process re-executes itself once with the tunable added to `GLIBC_TUNABLES` (same
  arguments, same pid), before anything else happens.
* `arena` (what `auto` picks without transparent huge pages): one arena, no `mmap` for large
  blocks and a trim threshold above the temporaries, so the block is carved from the heap
  once and reused: no faults after the first step. It makes XLA's multi-threaded compiler
  contend for that arena (a train step compiled 0.8-1.5 s slower on 2 cores). Two arenas
  compile almost as fast as glibc's defaults but are not reliable: a block of 64 MiB or more
  taken by a thread of the second arena was served fresh, and faulted in, on every call in
  about a quarter of the processes (tests/test_host_memory.py).
* `0` (or `off`): glibc's defaults.

Both need to be in place before any thread other than the main one has allocated, so
`tune_host_allocator` refuses once jax or numpy has been imported. `python -m lm.main.<tool>`
applies them as the process starts when the run is CPU-only (`JAX_PLATFORMS=cpu`, or no
accelerator plugin installed). Where the kernel already backs every large mapping with huge
pages (`always` mode) glibc's defaults fault little, and `auto` changes nothing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys

ENV_VAR = "LM_HOST_MALLOC"
MODES = ("auto", "hugepages", "arena", "off")
_ALIASES = {"1": "auto", "on": "auto", "true": "auto", "yes": "auto", "": "auto"}
_ALIASES.update({"0": "off", "false": "off", "no": "off"})

HUGETLB_TUNABLE = "glibc.malloc.hugetlb"
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int)
_ARENAS = 1  # see the module docstring (`arena`)

_ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin")

applied: bool | None = None
"""Whether `tune_host_allocator` changed the settings in this process (None: not asked)."""
mode: str | None = None
"""What it applied: "hugepages" or "arena" (None when nothing was applied)."""

DESCRIPTIONS = {
    "hugepages": f"huge pages for large blocks, GLIBC_TUNABLES={HUGETLB_TUNABLE}=1",
    "arena": f"{_ARENAS} arena{'' if _ARENAS == 1 else 's'}, no mmap for large blocks",
}


def requested_mode(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """`LM_HOST_MALLOC` as one of `MODES`; any other value is an error (SystemExit)."""
    raw = environ.get(ENV_VAR, "auto")
    value = raw.strip().lower()
    value = _ALIASES.get(value, value)
    if value not in MODES:
        raise SystemExit(
            f"{ENV_VAR}={raw!r} is not a setting: use auto (the default), hugepages, arena, "
            "or 0/off for glibc's defaults"
        )
    return value


def choose_mode(wanted: str, thp: str | None, glibc_version: tuple[int, int]) -> str | None:
    """The mode to apply for `LM_HOST_MALLOC=wanted` given the kernel's transparent huge page
    mode and glibc's version (None: leave glibc's defaults)."""
    if wanted != "auto":
        return None if wanted == "off" else wanted
    if thp == "always":
        return None  # glibc's large blocks already get huge pages
    if thp == "madvise" and glibc_version >= (2, 35):  # the hugetlb tunable is from 2.35
        return "hugepages"
    return "arena"


def cpu_only() -> bool:
    """Whether jax will run on the CPU only (`JAX_PLATFORMS=cpu`, or no accelerator plugin)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return all(p.strip() == "cpu" for p in platforms.split(","))
    return not any(importlib.util.find_spec(m) is not None for m in _ACCELERATOR_MODULES)


def _transparent_huge_pages() -> str | None:
    """The kernel's THP mode ("always", "madvise", "never"), or None if it has none."""
    try:
        with open(_THP_ENABLED) as f:
            found = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return found.group(1) if found else None


def _glibc() -> tuple[ctypes.CDLL, tuple[int, int]] | None:
    """The C library and its (major, minor) version, if it is glibc."""
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version  # glibc only: musl has mallopt but not this
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    major, minor = (int(p) for p in version().decode().split(".")[:2])
    return libc, (major, minor)


def _tunable(name: str) -> str | None:
    for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        key, _, value = item.partition("=")
        if key == name:
            return value
    return None


def tune_host_allocator() -> bool:
    """Apply the allocator settings `LM_HOST_MALLOC` asks for, if this is a CPU-only run on
    glibc and it is still early enough (no jax or numpy imported yet). Returns whether they
    were applied. In `hugepages` mode the first call re-executes the process (it does not
    return); the re-executed process's call returns True."""
    global applied, mode
    if applied is not None:
        return applied
    applied = False
    wanted = requested_mode()
    if wanted == "off" or not sys.platform.startswith("linux") or not cpu_only():
        return False
    if any(m in sys.modules for m in ("jax", "jaxlib", "numpy")):
        return False
    glibc = _glibc()
    if glibc is None:
        return False
    libc, glibc_version = glibc
    hugetlb = _tunable(HUGETLB_TUNABLE) if wanted != "arena" else None
    if hugetlb is not None:  # set by our re-execution, or by the user: theirs to keep
        applied = hugetlb not in ("", "0")
        mode = "hugepages" if applied else None
        return applied
    wanted = choose_mode(wanted, _transparent_huge_pages(), glibc_version)
    if wanted is None:
        return False
    if wanted == "hugepages":
        _reexecute_with_tunable(f"{HUGETLB_TUNABLE}=1")
        return False  # could not re-execute: keep the defaults
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    applied = bool(
        mallopt(_M_ARENA_MAX, _ARENAS)
        and mallopt(_M_MMAP_MAX, 0)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    mode = "arena" if applied else None
    return applied


def _reexecute_with_tunable(setting: str) -> None:
    """Replace this process by itself (same interpreter, arguments and pid) with `setting`
    added to GLIBC_TUNABLES. Returns only if that is impossible."""
    argv = getattr(sys, "orig_argv", None)
    if not argv or not sys.executable:
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES", ""), setting]))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:
        return
