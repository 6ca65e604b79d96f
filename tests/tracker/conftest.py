"""W&B isolation for tracker tests: offline, quiet, every W&B directory under tmp."""

import sys

import pytest


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Offline W&B whose files (runs, staging, cache, config) all live under `tmp_path`."""
    home = tmp_path / "wandb_home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")
    for var, sub in [
        ("WANDB_DIR", "dir"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
        ("WANDB_CONFIG_DIR", "config"),
    ]:
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    for var in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_ENTITY", "RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session", autouse=True)
def _wandb_teardown():
    """Stop the W&B service process once the session is done (no leaked processes)."""
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
