"""Helpers for end-to-end `train_lm` tests: a tiny corpus, a tiny run YAML, subprocess runs."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import sysconfig

import yaml

from lm.tracker import read_json_log

STDLIB_MODULES = [
    "json/decoder.py",
    "json/encoder.py",
    "textwrap.py",
    "string.py",
    "shlex.py",
    "fnmatch.py",
]


def write_tiny_corpus(directory: pathlib.Path) -> tuple[str, str]:
    """Train/validation JSONL from a few stdlib modules, split into ~40-line documents."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for name in STDLIB_MODULES:
        lines = (stdlib / name).read_text().splitlines()
        docs += ["\n".join(lines[i : i + 40]) for i in range(0, len(lines), 40)]
    directory.mkdir(parents=True, exist_ok=True)
    train, val = directory / "train.jsonl", directory / "val.jsonl"
    with open(train, "w") as f:
        for d in docs[4:]:
            f.write(json.dumps({"text": d}) + "\n")
    with open(val, "w") as f:
        for d in docs[:4]:
            f.write(json.dumps({"text": d}) + "\n")
    return str(train), str(val)


def tiny_run_yaml(
    tmp: pathlib.Path, corpus: tuple[str, str], *, steps: int = 20, **trainer
) -> pathlib.Path:
    train, val = corpus
    config = {
        "data": {
            "train_urls": [train],
            "validation_urls": [val],
            "cache_dir": str(pathlib.Path(train).parent / "cache"),
            "cache_options": {"backend": "local"},
            "shuffle": True,
        },
        "model": {
            "type": "gpt2",
            "seq_len": 64,
            "hidden_dim": 32,
            "num_layers": 2,
            "num_heads": 2,
            "gradient_checkpointing": False,
        },
        "trainer": {
            "id": "tiny",
            "num_train_steps": steps,
            "train_batch_size": 8,
            "steps_per_eval": 10,
            "max_eval_batches": 2,
            "require_accelerator": False,
            "log_dir": str(tmp / "logs"),
            "tracker": {"type": "json"},
            "checkpointer": {"base_path": str(tmp / "ckpt"), "keep": [{"every": 1000}]},
            **trainer,
        },
        "optimizer": {"learning_rate": 1e-2, "warmup": 0.1},
    }
    path = tmp / "run.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def run_train_lm(config_path, env, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "lm.main.train_lm", "--config_path", str(config_path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train_lm failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
        )
    return proc


def step_losses(log_dir: pathlib.Path, run_id: str = "tiny") -> dict[int, list[float]]:
    """Every train loss logged per step (several when a step ran again after a restart)."""
    out: dict[int, list[float]] = {}
    for r in read_json_log(str(log_dir / run_id / "metrics.jsonl")):
        if r["event"] == "log" and "train/loss" in r["metrics"]:
            out.setdefault(r["step"], []).append(r["metrics"]["train/loss"])
    return out
