"""Time to first step of `train_lm` without, then with a cold, then a warm compilation cache.

Usage: PYTHONPATH=src python bench/compile_cache.py [--model llama_tiny] [--repeats 2]

Each start is a fresh `python -m lm.main.train_lm` process on the same run config (a small
jsonl corpus from the stdlib, tokenized once before timing). "First step" is the wall time
from spawning the process to the first progress line (printed after step 0 completes), so
it includes imports, jax start-up, state init, and compiling the train step. Order: no cache,
cold cache (empty directory), then `repeats` warm starts; a final run without the cache
checks that the machine did not get faster meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import yaml
from bench_args import positive_int

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_run(tmp: pathlib.Path, model: str, steps: int) -> pathlib.Path:
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    corpus = tmp / "train.jsonl"
    with open(corpus, "w") as f:
        for name in ["textwrap.py", "string.py", "shlex.py", "fnmatch.py", "json/decoder.py"]:
            lines = (stdlib / name).read_text().splitlines()
            for i in range(0, len(lines), 40):
                f.write(json.dumps({"text": "\n".join(lines[i : i + 40])}) + "\n")
    config = {
        "data": {
            "train_urls": [str(corpus)],
            "cache_dir": str(tmp / "tokens"),
            "cache_options": {"backend": "local"},
        },
        "model": yaml.safe_load((REPO / "config" / "model" / f"{model}.yaml").read_text()),
        "trainer": {
            "num_train_steps": steps,
            "train_batch_size": 8,
            "max_eval_batches": 0,
            "require_accelerator": False,
            "log_dir": str(tmp / "logs"),
            "tracker": {"type": "json"},
            "checkpointer": {"base_path": str(tmp / "ckpt"), "save_interval": "1h"},
        },
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(config: pathlib.Path, run_id: str, cache_dir: str | None) -> tuple[float, float]:
    """(seconds to the end of step 0, seconds to exit)."""
    args = [sys.executable, "-m", "lm.main.train_lm", "--config_path", str(config)]
    args += ["--trainer.id", run_id, "--trainer.load_checkpoint", "false"]
    if cache_dir is not None:
        args += ["--trainer.jax_compilation_cache_dir", cache_dir]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    began = time.perf_counter()
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first = None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if first is None and "| loss " in line:
            first = time.perf_counter() - began
    code = proc.wait()
    total = time.perf_counter() - began
    if code != 0 or first is None:
        raise SystemExit(f"train_lm failed ({code}):\n{''.join(lines[-40:])}")
    return first, total


def main() -> None:
    models = sorted(p.stem for p in (REPO / "config" / "model").glob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="llama_tiny", help=f"a config/model/*.yaml: {', '.join(models)}"
    )
    parser.add_argument("--steps", type=positive_int, default=3)
    parser.add_argument("--repeats", type=positive_int, default=2, help="warm-cache starts")
    args = parser.parse_args()
    if args.model not in models:
        parser.error(f"--model {args.model!r}: not in config/model/; one of {', '.join(models)}")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="compile-cache-"))
    try:
        config = write_run(tmp, args.model, args.steps)
        cache = str(tmp / "jax-cache")
        start(config, "tokenize", None)  # builds the token cache; not timed
        rows = [("no cache", *start(config, "nocache", None))]
        rows.append(("cold cache", *start(config, "cold", cache)))
        entries = len(os.listdir(cache))
        warm = [start(config, f"warm{i}", cache) for i in range(args.repeats)]
        rows.append(
            (
                f"warm cache (median of {args.repeats})",
                statistics.median(w[0] for w in warm),
                statistics.median(w[1] for w in warm),
            )
        )
        rows.append(("no cache, again", *start(config, "nocache2", None)))
        print(
            f"model {args.model}, {args.steps} steps; cache entries after the cold run: {entries}"
        )
        print("| start | to end of step 0 | to exit |")
        print("|---|---:|---:|")
        for name, first, total in rows:
            print(f"| {name} | {first:.1f} s | {total:.1f} s |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
