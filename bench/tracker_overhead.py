"""Host-side cost of one `tracker.log(...)` call per training step, per tracker.

Usage: PYTHONPATH=src python bench/tracker_overhead.py [--steps 2000]

Logs a typical step's metrics (12 scalars, 3 of them 0-d jax arrays already on the host
side of the step) and reports microseconds per call. W&B runs offline.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")
os.environ.setdefault("WANDB_X_DISABLE_STATS", "true")

import jax.numpy as jnp  # noqa: E402
from bench_args import positive_int  # noqa: E402

from lm.tracker import (  # noqa: E402
    CompositeTracker,
    JsonLoggerConfig,
    ProgressReporter,
    TensorboardConfig,
    WandbConfig,
)
from lm.trainer.state import StepInfo  # noqa: E402


def metrics(step: int) -> dict:
    m = {f"train/metric_{i}": float(step + i) for i in range(9)}
    m["train/loss"] = jnp.float32(2.0)
    m["optim/learning_rate"] = jnp.float32(3e-4)
    m["throughput/tokens_per_second"] = jnp.float32(1.0e5)
    return m


def bench(name: str, tracker, steps: int) -> None:
    batches = [metrics(s) for s in range(steps)]
    start = time.perf_counter()
    for s, m in enumerate(batches):
        tracker.log(m, step=s)
    elapsed = time.perf_counter() - start
    t0 = time.perf_counter()
    tracker.finish()
    finish = time.perf_counter() - t0
    print(f"{name:<28} {1e6 * elapsed / steps:9.1f} us/step   finish {finish:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=positive_int, default=2000, help="tracker.log calls per tracker"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WANDB_DIR"] = tmp
        run_dir = f"{tmp}/run"
        print(f"{args.steps} steps, 12 metrics per step")
        bench("json", JsonLoggerConfig(plot=False).init("r", run_dir=run_dir), args.steps)
        bench("tensorboard", TensorboardConfig(logdir=f"{tmp}/tb").init("r"), args.steps)
        wandb_cfg = WandbConfig(mode="offline", save_dir=tmp, save_code=False)
        bench("wandb (offline)", wandb_cfg.init("r1"), args.steps)
        composite = CompositeTracker(
            [
                wandb_cfg.init("r2"),
                TensorboardConfig(logdir=f"{tmp}/tb").init("r2"),
                JsonLoggerConfig(plot=False).init("r2", run_dir=f"{tmp}/r2"),
            ]
        )
        bench("wandb + tensorboard + json", composite, args.steps)

        reporter = ProgressReporter(args.steps, every=100, stream=io.StringIO())
        infos = [
            StepInfo(
                state=None,
                loss=jnp.float32(2.0),
                step_duration=0.1,
                metrics=metrics(s),
                completed_step=s,
            )
            for s in range(args.steps)
        ]
        start = time.perf_counter()
        for info in infos:
            reporter.on_step(info)
        reporter.finish()
        elapsed = time.perf_counter() - start
        print(f"{'progress (plain, every 100)':<28} {1e6 * elapsed / args.steps:9.1f} us/step")
        import wandb

        wandb.teardown()


if __name__ == "__main__":
    main()
