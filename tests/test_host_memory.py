"""glibc allocator settings for CPU runs (`lm.host_memory`): when they apply, and what they do."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)

# Started like `python -m lm.main.<tool>`: the package is imported while argv[0] is "-m". The
# arguments after the code must survive a re-execution.
_APPLIED = (
    "import sys, os; sys.argv[:1] = ['-m']; {before}"
    "import lm.main, lm.host_memory as h; "
    "print(h.applied, h.mode, os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
)

# Fewest page faults of a call of a jitted matmul whose 64 MiB output is freed between calls
# (after a pause: the runtime may free a deleted buffer asynchronously).
_FAULTS = """
import sys, json, resource, time
sys.argv[:1] = ['-m']
import lm.main, lm.host_memory
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: a @ b)
a, b = jnp.ones((4096, 64)), jnp.ones((64, 4096))
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = f(a, b).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del out
    time.sleep(0.05)
print(json.dumps({"mode": lm.host_memory.mode, "faults": min(faults[1:])}))
"""


def _proc(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, "a1", "--b", "c d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _run(code: str, env: dict[str, str]) -> str:
    proc = _proc(code, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def _thp() -> str | None:
    from lm.host_memory import _transparent_huge_pages

    return _transparent_huge_pages()


ARGS = "['a1', '--b', 'c d']"


@pytest.mark.parametrize(
    "extra_env, before, expected",
    [
        ({"LM_HOST_MALLOC": "arena"}, "", f"True arena None {ARGS}"),
        # re-executed with the tunable, same arguments
        ({"LM_HOST_MALLOC": "hugepages"}, "", f"True hugepages glibc.malloc.hugetlb=1 {ARGS}"),
        # the user's own tunables are kept, ours appended
        (
            {"LM_HOST_MALLOC": "hugepages", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=8"},
            "",
            f"True hugepages glibc.malloc.tcache_count=8:glibc.malloc.hugetlb=1 {ARGS}",
        ),
        # the user's explicit hugetlb setting wins
        (
            {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
            "",
            f"False None glibc.malloc.hugetlb=0 {ARGS}",
        ),
        ({"LM_HOST_MALLOC": "0"}, "", f"False None None {ARGS}"),
        ({"LM_HOST_MALLOC": "off", "JAX_PLATFORMS": "cuda"}, "", f"False None None {ARGS}"),
        ({"JAX_PLATFORMS": "cuda"}, "", f"False None None {ARGS}"),  # not a CPU-only run
        ({}, "import numpy; ", f"False None None {ARGS}"),  # too late: threads may have arenas
        ({"LM_HOST_MALLOC": "arena"}, "import jax; ", f"False None None {ARGS}"),
    ],
)
def test_applied_only_early_in_cpu_runs(subprocess_env, extra_env, before, expected):
    env = {"JAX_PLATFORMS": "cpu", **subprocess_env, **extra_env}
    env = {k: v for k, v in env.items() if k != "GLIBC_TUNABLES" or "GLIBC_TUNABLES" in extra_env}
    assert _run(_APPLIED.format(before=before), env) == expected


def test_auto_picks_by_the_kernels_huge_page_mode():
    from lm.host_memory import choose_mode

    assert choose_mode("auto", "madvise", (2, 36)) == "hugepages"
    assert choose_mode("auto", "madvise", (2, 31)) == "arena"  # no hugetlb tunable yet
    assert choose_mode("auto", "never", (2, 36)) == "arena"
    assert choose_mode("auto", None, (2, 36)) == "arena"
    assert choose_mode("auto", "always", (2, 36)) is None  # already huge pages
    assert choose_mode("arena", "madvise", (2, 36)) == "arena"
    assert choose_mode("off", "madvise", (2, 36)) is None


def test_a_misspelt_setting_is_an_error(subprocess_env):
    env = {**subprocess_env, "JAX_PLATFORMS": "cpu", "LM_HOST_MALLOC": "hugepage"}
    proc = _proc(_APPLIED.format(before=""), env)
    assert proc.returncode != 0
    assert "LM_HOST_MALLOC='hugepage' is not a setting" in proc.stderr
    assert "hugepages, arena" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", ["arena", "hugepages"])
def test_freed_xla_buffers_are_reused_without_page_faults(subprocess_env, mode):
    if mode == "hugepages" and _thp() not in ("madvise", "always"):
        pytest.skip(f"no transparent huge pages here ({_thp()})")
    env = {k: v for k, v in subprocess_env.items() if k != "GLIBC_TUNABLES"}
    env["JAX_PLATFORMS"] = "cpu"
    tuned = json.loads(_run(_FAULTS, {**env, "LM_HOST_MALLOC": mode}))
    default = json.loads(_run(_FAULTS, {**env, "LM_HOST_MALLOC": "0"}))
    assert tuned["mode"] == mode and default["mode"] is None
    pages = 4096 * 4096 * 4 // 4096  # the output, in 4 KiB pages
    if default["faults"] < pages // 2:
        pytest.skip(f"glibc's defaults fault in only {default['faults']} pages here (huge pages?)")
    assert tuned["faults"] < pages // 10, (tuned, default)
