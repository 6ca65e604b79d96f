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

# One persistent XLA compilation cache per test session, shared by this process and every
# `python -m lm...` subprocess: the end-to-end tests compile the same tiny train and eval steps
# in many processes (resume, kill/resume trials, reruns), and a cache hit halves their time.
# A fresh directory each session, so no test ever sees a stale entry.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit  # noqa: E402
    import shutil  # noqa: E402
    import tempfile  # noqa: E402

    _jax_cache = tempfile.mkdtemp(prefix="lm-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache
    atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
# A test whose tracker is the default `wandb` without a save_dir wrote W&B's run files to
# ./wandb/ of wherever pytest ran (the repository): they go to a session folder instead.
if "WANDB_DIR" not in os.environ:
    import atexit  # noqa: E402
    import shutil  # noqa: E402
    import tempfile  # noqa: E402

    _wandb_dir = tempfile.mkdtemp(prefix="lm-tests-wandb-")
    os.environ["WANDB_DIR"] = _wandb_dir
    atexit.register(shutil.rmtree, _wandb_dir, ignore_errors=True)

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC_DIR = REPO_ROOT / "src"


@pytest.fixture(autouse=True)
def _no_log_file_outlives_its_test():
    """`TrainerConfig.initialize()` adds a file handler to the root logger for the run's log
    file; one left behind changes what later tests see (the CLI's "traceback is in the run's
    log file" hint). Handlers a test added are closed and removed after it."""
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory) -> dict[str, str]:
    """Environment for tests that run `python -m lm...` as a subprocess.

    Puts this checkout's `src` first on PYTHONPATH, so a worktree tests its own code even
    when the shared virtualenv has another checkout installed in editable mode.

    The subprocesses share one persistent JAX compilation cache, new for each test session:
    most of them train the same tiny models, and a start that finds its steps compiled
    takes ~6 s instead of ~14 s on a 2-core box. A test about compiling itself uses
    `uncached_subprocess_env` instead.
    """
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-compilation-cache"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    # Subprocesses get one CPU device unless a test asks for more.
    env["XLA_FLAGS"] = ""
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def uncached_subprocess_env(subprocess_env) -> dict[str, str]:
    """`subprocess_env` without the shared compilation cache, for tests about compiling."""
    cache_vars = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    return {k: v for k, v in subprocess_env.items() if k not in cache_vars}


@pytest.fixture
def config_problems(tmp_path):
    """`problems(cls, yaml_text, *args)`: {path: (location, message)} of every problem that
    parsing `yaml_text` (written to run.yaml) plus command-line `args` into `cls` reports,
    locations with the file shown as `run.yaml`."""
    import lm.config

    def problems(cls, yaml_text: str, *args: str) -> dict[str, tuple[str | None, str]]:
        run_yaml = tmp_path / "run.yaml"
        run_yaml.write_text(yaml_text)
        with pytest.raises(lm.config.ConfigError) as caught:
            lm.config.parse(cls, str(run_yaml), list(args))
        found = {p.path: (p.location, p.message) for p in caught.value.problems}
        assert len(found) == len(caught.value.problems)
        return {
            path: (None if loc is None else loc.replace(str(run_yaml), "run.yaml"), message)
            for path, (loc, message) in found.items()
        }

    return problems
