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

# Started like `python -m lm.main.<tool>`: the package is imported while argv[0] is "-m".
_APPLIED = (
    "import sys; sys.argv[:1] = ['-m']; {before}"
    "import lm.main, lm.host_memory; print(lm.host_memory.applied)"
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
print(json.dumps({"applied": lm.host_memory.applied, "faults": min(faults[1:])}))
"""


def _run(code: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "extra_env, before, expected",
    [
        ({}, "", "True"),
        ({"LM_HOST_MALLOC": "0"}, "", "False"),
        ({"JAX_PLATFORMS": "cuda"}, "", "False"),  # not a CPU-only run
        ({}, "import numpy; ", "False"),  # too late: other threads may have arenas
        ({}, "import jax; ", "False"),
    ],
)
def test_applied_only_early_in_cpu_runs(subprocess_env, extra_env, before, expected):
    env = {**subprocess_env, "JAX_PLATFORMS": "cpu", **extra_env}
    assert _run(_APPLIED.format(before=before), env) == expected


def test_freed_xla_buffers_are_reused_without_page_faults(subprocess_env):
    env = {**subprocess_env, "JAX_PLATFORMS": "cpu"}
    tuned = json.loads(_run(_FAULTS, env))
    default = json.loads(_run(_FAULTS, {**env, "LM_HOST_MALLOC": "0"}))
    assert tuned["applied"] and not default["applied"]
    pages = 4096 * 4096 * 4 // 4096  # the output, in 4 KiB pages
    if default["faults"] < pages // 2:
        pytest.skip(f"glibc's defaults fault in only {default['faults']} pages here (huge pages?)")
    assert tuned["faults"] < pages // 10, (tuned, default)
