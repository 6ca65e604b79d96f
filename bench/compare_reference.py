"""lm vs the reference (levanter) on the same model, batch and steps, back to back.

Usage:
    PYTHONPATH=src python bench/compare_reference.py \
        [--configs bench/configs/gpt2_256.yaml bench/configs/gpt2_512.yaml] \
        [--steps 20] [--warmup 3] [--repeats 1] [--json out.json]

The reference runs in its own virtualenv outside the repository
(`~/.cache/lm-bench/levanter-venv`, created on first use with `levanter==1.2.dev1644`,
`haliax==1.4.dev453`, `jax[cpu]==0.10.2`, GitPython and chex: see docs/benchmarks.md).
None of levanter's code is in this repository: the reference is driven by a small script
(`REFERENCE_DRIVER` below, written next to the venv at run time) that builds levanter's
`Gpt2Config` model and `Trainer` with its defaults (gradient checkpointing on, its default
hooks, its JSON tracker), feeds it random token batches (token values do not change the
step time), and stamps the end of every step from a trainer hook. Workarounds it applies,
as listed in docs/benchmarks.md: the float loss mask is cast to bool before it reaches
`jnp.mean(where=...)` (jax >= 0.8 rejects a float mask), `require_accelerator: false`, no
Ray cluster, no HF checkpoint converter (nothing reaches for the hub).

A config the driver would not reproduce is refused before anything runs, naming the fields
(`reference_spec`): a model other than `type: gpt2`, or a model, trainer, optimizer or run field
(in the file or in --lm-args) away from lm's default that the driver does not pass on.

For each config and repeat the reference and lm run one after the other, so both see the
same machine load; the order alternates between repeats. Both sides are summarised by
`bench/train.py`'s `summarize` (median step after `--warmup`, MFU from 3 x the model's
forward `flops_per_token` over a float32 2048^2 matmul measured in the same process).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as lm_bench  # noqa: E402  (bench/train.py)
from bench_args import non_negative_int, positive_int  # noqa: E402  (bench/bench_args.py)

BENCH_HOME = os.path.expanduser("~/.cache/lm-bench")
VENV = os.path.join(BENCH_HOME, "levanter-venv")
REQUIREMENTS = [
    "levanter==1.2.dev1644",
    "haliax==1.4.dev453",
    "jax[cpu]==0.10.2",
    "GitPython",
    "chex",
]
MARKER = "BENCH_REFERENCE_RESULT "

# jax >= 0.8: jnp.mean(where=) needs a boolean mask; levanter passes its float loss mask
# (dense path: cross_entropy_and_logsumexp_penalty; blockwise: the fused variant). Part of every
# generated reference driver (needs `jnp` and `levanter_loss` imported).
FLOAT_MASK_WORKAROUND = r"""
def _bool_where(fn):
    def wrapper(*args, where=None, **kwargs):
        if where is not None:
            where = where.astype(jnp.bool_)
        return fn(*args, where=where, **kwargs)

    return wrapper


for _name in ("cross_entropy_and_logsumexp_penalty", "fused_cross_entropy_loss_and_logsumexp_penalty"):
    setattr(levanter_loss, _name, _bool_where(getattr(levanter_loss, _name)))
"""

REFERENCE_DRIVER = (
    r'''
"""Drives the reference (levanter) trainer for bench/compare_reference.py. Generated."""
import json, os, pathlib, sys, time

T0 = float(os.environ["BENCH_T0"])
spec = json.loads(sys.argv[1])

import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np

import levanter
import levanter.models.loss as levanter_loss
from levanter.callbacks import log_performance_stats
from levanter.checkpoint import CheckpointerConfig
from levanter.data.dataset import ListAsyncDataset
from levanter.distributed import RayConfig
from levanter.models.gpt2 import Gpt2Config
from levanter.models.lm_model import LmExample, compute_next_token_loss
from levanter.optim import AdamConfig
from levanter.tracker.json_logger import JsonLoggerConfig
from levanter.trainer import Trainer, TrainerConfig

'''
    + FLOAT_MASK_WORKAROUND
    + r"""
model = Gpt2Config(**spec["model"])
trainer_config = TrainerConfig(
    num_train_steps=spec["steps"],
    train_batch_size=spec["batch"],
    steps_per_eval=10**9,
    max_eval_batches=0,
    require_accelerator=False,
    ray=RayConfig(auto_start_cluster=False),
    tracker=JsonLoggerConfig(),
    log_dir=pathlib.Path(spec["run_dir"]) / "logs",
    checkpointer=CheckpointerConfig(base_path=os.path.join(spec["run_dir"], "checkpoints")),
    jax_compilation_cache_dir=spec.get("compile_cache_dir"),
)
levanter.initialize(trainer_config)
optimizer = AdamConfig(learning_rate=spec["learning_rate"], warmup=spec["warmup"]).build(spec["steps"])
vocab = spec["vocab_size"]
Vocab = hax.Axis("vocab", vocab)
Pos = model.Pos
rng = np.random.default_rng(0)
examples = [
    LmExample.causal(hax.named(jnp.asarray(rng.integers(0, vocab, Pos.size, dtype=np.int32)), Pos))
    for _ in range(spec["steps"] * spec["batch"])
]

step_ends = {}

def stamp(info):
    step_ends.setdefault(info.step, time.time() - T0)

with Trainer(trainer_config, optimizer, compute_next_token_loss) as trainer:
    state = trainer.initial_state(jax.random.PRNGKey(1), model_init=lambda: model.build(Vocab, key=jax.random.PRNGKey(0)))
    flops = model.flops_per_token(vocab)
    trainer.add_hook(log_performance_stats(Pos.size, trainer.config.batch_schedule, 3 * flops * Pos.size), every=1)
    trainer.add_hook(stamp, every=1)
    loader = trainer.data_loader(ListAsyncDataset(examples, is_complete=True)).iter_from_step(0)
    trainer.train(state, loader)

n = spec["peak_n"]
a = jnp.ones((n, n), jnp.float32)
f = jax.jit(lambda x: x @ x)
f(a).block_until_ready()
best = float("inf")
for _ in range(spec["peak_repeats"]):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
device = jax.devices()[0]
result = {
    "step_ends": [step_ends[s] for s in sorted(step_ends)],
    "train_flops_per_token": 3 * flops,
    "tokens_per_step": spec["batch"] * Pos.size,
    "peak_flops_per_device": 2 * n**3 / best / jax.local_device_count(),
    "devices": jax.device_count(),
    "device_kind": device.device_kind,
    "platform": device.platform,
    "peak_device_gb": None,
    "jax": jax.__version__,
    "levanter": levanter.__version__ if hasattr(levanter, "__version__") else "1.2.dev1644",
}
print("BENCH_REFERENCE_RESULT " + json.dumps(result), flush=True)
"""
)


def ensure_venv() -> str:
    python = os.path.join(VENV, "bin", "python")
    check = [python, "-c", "import levanter, git, chex, haliax, jax; print(jax.__version__)"]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    os.makedirs(BENCH_HOME, exist_ok=True)
    print(f"Installing the reference into {VENV} ...", file=sys.stderr, flush=True)
    for cmd in (
        [sys.executable, "-m", "venv", VENV],
        [python, "-m", "pip", "install", "-q", *REQUIREMENTS],
    ):
        code = subprocess.run(cmd).returncode
        if code != 0:
            raise SystemExit(f"error: `{' '.join(cmd)}` failed (exit {code}; output above)")
    return python


# lm's `Gpt2Config` fields the reference driver passes on to levanter's `Gpt2Config`.
PASSED_MODEL_FIELDS = ("seq_len", "hidden_dim", "num_layers", "num_heads")
# lm's own fields that choose how lm computes the same model (remat, attention kernel, loss
# blocking): lm's side of the comparison, free to differ from lm's defaults.
LM_SIDE_MODEL_FIELDS = (
    "gradient_checkpointing",
    "attn_backend",
    "use_flash_attention",
    "flash_attention_block_size",
    "cross_entropy_block_size",
)
# Trainer fields that are passed on (batch size; steps come from --steps), set alike on the
# reference side (no evaluation, no accelerator required), or only say where lm writes.
LM_SIDE_TRAINER_FIELDS = (
    "num_train_steps",
    "train_batch_size",
    "steps_per_eval",
    "max_eval_batches",
    "require_accelerator",
    "seed",
    "id",
    "log_dir",
    "tracker",
    "checkpointer",
    "load_checkpoint",
    "jax_compilation_cache_dir",
    "ray",
    "shutdown_at_exit",
)
PASSED_OPTIMIZER_FIELDS = ("learning_rate", "warmup")


def _changed_fields(value, skip) -> list[tuple[str, object, object]]:
    """(field, value, default) for each field of the dataclass `value` that differs from a
    default-constructed one, except those in `skip`."""
    default = type(value)()
    return [
        (f.name, getattr(value, f.name), getattr(default, f.name))
        for f in dataclasses.fields(value)
        if f.name not in skip and getattr(value, f.name) != getattr(default, f.name)
    ]


def _show(value) -> str:
    return str(value.value if isinstance(value, enum.Enum) else value)


def reference_spec(config_path: str, steps: int, overrides: list[str] | tuple = ()) -> dict:
    """The model/batch/optimizer fields of an lm bench config (with lm's command-line
    `overrides`, which must pass the same checks), for the reference driver.

    Exits with an error for a config the driver would not reproduce: a model other than GPT-2,
    or a model, trainer, optimizer or run field away from lm's default that the driver does
    not pass on (it builds levanter's `Gpt2Config` from `PASSED_MODEL_FIELDS` alone)."""
    import lm.config
    from lm.main.train_lm import TrainLmConfig
    from lm.models import Gpt2Config
    from lm.optim import AdamConfig

    try:
        cfg = lm.config.parse(TrainLmConfig, config_path=config_path, args=overrides)
    except lm.config.ConfigError as e:
        raise SystemExit(
            f"error: {config_path}: " + "; ".join(str(p) for p in e.problems)
        ) from None
    m = cfg.model
    if not isinstance(m, Gpt2Config):
        raise SystemExit(
            f"error: {config_path}: model type {type(m).__name__} is not supported: the "
            "reference driver builds only levanter's GPT-2 (model.type: gpt2)"
        )
    if not isinstance(cfg.optimizer, AdamConfig):
        raise SystemExit(
            f"error: {config_path}: optimizer {type(cfg.optimizer).__name__} is not supported: "
            "the reference driver uses only Adam (optimizer.type: adam)"
        )
    changed = [
        (f"model.{name}", value, default)
        for name, value, default in _changed_fields(m, PASSED_MODEL_FIELDS + LM_SIDE_MODEL_FIELDS)
    ]
    changed += [
        (f"trainer.{name}", value, default)
        for name, value, default in _changed_fields(cfg.trainer, LM_SIDE_TRAINER_FIELDS)
    ]
    changed += [
        (f"optimizer.{name}", value, default)
        for name, value, default in _changed_fields(cfg.optimizer, PASSED_OPTIMIZER_FIELDS)
    ]
    changed += _changed_fields(cfg, ("data", "model", "trainer", "optimizer"))
    if changed:
        fields = ", ".join(
            f"{name} is {_show(value)} (default {_show(default)})"
            for name, value, default in changed
        )
        raise SystemExit(
            f"error: {config_path}: {fields}: the reference driver does not pass "
            f"{'this' if len(changed) == 1 else 'these'} on (only model."
            + ", model.".join(PASSED_MODEL_FIELDS)
            + ", the batch size, optimizer.learning_rate and optimizer.warmup), so the two "
            "sides would train different things; leave them at lm's defaults"
        )
    if cfg.trainer.max_eval_batches != 0:
        raise SystemExit(
            f"error: {config_path}: trainer.max_eval_batches is {cfg.trainer.max_eval_batches!r}: "
            "set it to 0, as the reference driver runs no evaluation"
        )
    if not isinstance(cfg.trainer.train_batch_size, int):
        raise SystemExit(
            f"error: {config_path}: trainer.train_batch_size is a schedule: the reference "
            "driver takes one batch size"
        )
    return {
        "model": {name: getattr(m, name) for name in PASSED_MODEL_FIELDS},
        "batch": cfg.trainer.batch_schedule.batch_size_at_step(0),
        "steps": steps,
        "vocab_size": len(cfg.data.the_tokenizer),
        "learning_rate": cfg.optimizer.learning_rate,
        "warmup": cfg.optimizer.warmup,
    }


def reference_env() -> dict[str, str]:
    """The environment for a reference process: none of lm's `PYTHONPATH` or XLA flags, no
    wandb."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env["WANDB_MODE"] = "disabled"
    return env


def run_reference(python: str, spec: dict) -> tuple[dict, float]:
    driver = os.path.join(BENCH_HOME, "levanter_driver.py")
    with open(driver, "w") as f:
        f.write(REFERENCE_DRIVER)
    with tempfile.TemporaryDirectory(prefix="lm-bench-ref-") as run_dir:
        spec = {
            **spec,
            "run_dir": run_dir,
            "peak_n": lm_bench.PEAK_N,
            "peak_repeats": lm_bench.PEAK_REPEATS,
        }
        env = reference_env()
        return lm_bench.run_marked(
            [python, driver, json.dumps(spec)],
            env,
            marker=MARKER,
            what="reference run",
            cwd=run_dir,
        )


def _aggregate(impl: str, config: str, runs: list[tuple[dict, dict]], args) -> dict:
    med = lambda key: statistics.median(s[key] for s, _ in runs)  # noqa: E731
    raw = runs[0][1]
    return {
        "impl": impl,
        "config": config,
        "repeats": len(runs),
        "steps": args.steps,
        "warmup": args.warmup,
        "tokens_per_step": raw["tokens_per_step"],
        "train_flops_per_token": raw["train_flops_per_token"],
        "jax": raw["jax"],
        "step_s": med("step_s"),
        "tokens_per_s": med("tokens_per_s"),
        "tokens_per_s_all": [s["tokens_per_s"] for s, _ in runs],
        "mfu": med("mfu"),
        "first_step_s": med("first_step_s"),
        "steady_s": med("steady_s"),
        "peak_rss_gb": med("peak_rss_gb"),
        "peak_device_gb": raw.get("peak_device_gb"),
        "first_step_cold_s": runs[0][0]["first_step_s"],
        "first_step_warm_s": (
            statistics.median(s["first_step_s"] for s, _ in runs[1:]) if len(runs) > 1 else None
        ),
        "runs": [s for s, _ in runs],
    }


def _run_pairs(python: str, config: str, spec: dict, lm_args: list[str], args):
    """`args.repeats` runs of each side on `config`, alternating which goes first."""
    ref_runs, lm_runs = [], []
    for i in range(args.repeats):
        order = ("ref", "lm") if i % 2 == 0 else ("lm", "ref")
        for who in order:
            if who == "ref":
                raw, rss = run_reference(python, spec)
                runs = ref_runs
            else:
                with tempfile.TemporaryDirectory(prefix="lm-bench-") as run_dir:
                    raw, rss = lm_bench.run_once(
                        config,
                        args.steps,
                        lm_args,
                        cache_dir=args.cache_dir,
                        run_dir=run_dir,
                    )
                runs = lm_runs
            summary = lm_bench.summarize(raw, args.warmup)
            summary["peak_rss_gb"] = rss
            runs.append((summary, raw))
            print(
                f"  [{who} {os.path.basename(config)} #{i}] {summary['tokens_per_s']:,.0f} tok/s, "
                f"first step {summary['first_step_s']:.1f} s, load {os.getloadavg()[0]:.1f}",
                file=sys.stderr,
                flush=True,
            )
    return ref_runs, lm_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[
            os.path.join(here, "configs", "gpt2_256.yaml"),
            os.path.join(here, "configs", "gpt2_512.yaml"),
        ],
    )
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--warmup", type=non_negative_int, default=3)
    parser.add_argument("--repeats", type=positive_int, default=1)
    parser.add_argument("--cache-dir", default=lm_bench.DEFAULT_CACHE)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--compile-cache",
        action="store_true",
        help="give both sides a fresh persistent JAX compilation cache per config: repeat 0 "
        "is cold and fills it, later repeats start warm (use --repeats >= 2)",
    )
    parser.add_argument(
        "--lm-args", nargs=argparse.REMAINDER, default=[], help="extra train_lm args"
    )
    args = parser.parse_args()
    lm_bench.check_run_args(parser, args)

    # Every config is checked before anything is installed, built or run.
    specs = {config: reference_spec(config, args.steps, args.lm_args) for config in args.configs}
    python = ensure_venv()
    lm_bench.ensure_bytecode()
    results = []
    for config in args.configs:
        lm_bench.ensure_cache(config, args.cache_dir)
        spec = dict(specs[config])
        lm_args = list(args.lm_args)
        with contextlib.ExitStack() as stack:
            if args.compile_cache:
                cache_root = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="lm-bench-jaxcache-")
                )
                spec["compile_cache_dir"] = os.path.join(cache_root, "reference")
                lm_args += ["--trainer.jax_compilation_cache_dir", os.path.join(cache_root, "lm")]
            ref_runs, lm_runs = _run_pairs(python, config, spec, lm_args, args)
        ref = _aggregate("reference", config, ref_runs, args)
        ours = _aggregate("lm", config, lm_runs, args)
        results.append(
            {
                "config": config,
                "reference": ref,
                "lm": ours,
                "tokens_per_s_ratio": ours["tokens_per_s"] / ref["tokens_per_s"],
                # tokens/s over each run's own matmul peak (both count the same FLOPs per
                # token): cancels the machine's speed drifting between runs
                "mfu_ratio": ours["mfu"] / ref["mfu"] if ours["mfu"] and ref["mfu"] else None,
                "first_step_ratio": ours["first_step_s"] / ref["first_step_s"],
                "steady_ratio": ours["steady_s"] / ref["steady_s"],
                "compile_cache": args.compile_cache,
            }
        )
    out = {"results": results, "load_avg_1m": os.getloadavg()[0], "time": time.time()}
    print(json.dumps(out, indent=2))
    if args.json:
        text = json.dumps(out, indent=2)  # serialised first: no half-written file
        with open(args.json, "w") as f:
            f.write(text)
    for r in results:
        print(lm_bench.summary_line(r["reference"]))
        print(lm_bench.summary_line(r["lm"]))
        print(
            f"=> {os.path.basename(r['config'])}: lm/reference tokens/s {r['tokens_per_s_ratio']:.2f}x, "
            f"time to first step {r['first_step_ratio']:.2f}x, to steady state {r['steady_ratio']:.2f}x"
        )
        if r["mfu_ratio"] is not None:
            print(
                f"   MFU {r['lm']['mfu']:.1f}% vs {r['reference']['mfu']:.1f}%: tokens/s per unit of "
                f"each run's measured peak {r['mfu_ratio']:.2f}x"
            )
        if r["compile_cache"] and r["lm"]["first_step_warm_s"] is not None:
            print(
                f"   first step cold/warm compilation cache: reference "
                f"{r['reference']['first_step_cold_s']:.1f}/{r['reference']['first_step_warm_s']:.1f} s, "
                f"lm {r['lm']['first_step_cold_s']:.1f}/{r['lm']['first_step_warm_s']:.1f} s"
            )


if __name__ == "__main__":
    main()
