"""Shared test setup.

Fakes 8 CPU devices before jax is imported, so mesh, FSDP and TP tests run without an
accelerator. Keep this the first thing pytest imports.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
# Tests never talk to the W&B servers.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC_DIR = REPO_ROOT / "src"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for tests that run `python -m lm...` as a subprocess.

    Puts this checkout's `src` first on PYTHONPATH, so a worktree tests its own code even
    when the shared virtualenv has another checkout installed in editable mode.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    # Subprocesses get one CPU device unless a test asks for more.
    env["XLA_FLAGS"] = ""
    env["PYTHONUNBUFFERED"] = "1"
    return env
