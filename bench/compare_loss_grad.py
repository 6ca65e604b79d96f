"""lm vs the reference on the bare loss + gradient of one model, same remat and attention.

Usage:
    PYTHONPATH=src python bench/compare_loss_grad.py --config bench/configs/gpt2_512.yaml \
        [--remat true] [--attn-backend vanilla] [--calls 5] [--repeats 2] [--profile DIR]

`bench/compare_reference.py` compares whole training runs with each side's defaults; this
compares the compiled loss + gradient program alone, so a difference in the model code shows
up even where the defaults hide it. By default lm is run as the reference runs: full
recompute (`--remat true`) and vanilla attention (what the reference's `jax_flash` falls back
to below 1,024 positions); `--remat save_projections --attn-backend default` gives lm's own
defaults. The reference's remat is a bool: it gets `false` for `--remat false` and its default,
`true`, for every other policy. `--remat auto` is resolved as train_lm resolves it. The
config must be one the reference can build (see `reference_spec` in compare_reference.py),
and the flags are checked before any process starts. Each repeat runs the reference and lm in fresh processes one after the other
(alternating the order), each compiling once and timing `--calls` calls after a warm-up call;
the minimum and median per side are printed, with the ratio of minimums.

`--profile DIR` also records two calls of each side with the JAX profiler and prints, for
each, the kernels with the most time per call and the ops they come from (the optimized HLO's
`op_name`); the traces (`*.xplane.pb`, for TensorBoard / Perfetto) and HLO texts stay in DIR.
The reference runs in the virtualenv `bench/compare_reference.py` installs (outside the
repository) through a driver written at run time; none of its code is in this repository.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_reference as ref_bench  # noqa: E402  (bench/compare_reference.py)
import train as lm_bench  # noqa: E402  (bench/train.py)
from bench_args import positive_int  # noqa: E402  (bench/bench_args.py)
from step_variants import remat_value, resolve_remat  # noqa: E402  (bench/step_variants.py)

MARKER = "BENCH_LOSS_GRAD_RESULT "

# Shared by both sides (exec'd in each process): compile `loss_fn`'s value and gradient for
# `model` (timed), time `spec["calls"]` calls after a warm-up, optionally profile two more.
_TIMING = r"""
def _loss_grad_times(model, example, loss_fn, spec):
    import time
    import equinox as eqx
    import jax
    params, static = eqx.partition(model, eqx.is_array)

    def loss(p):
        return loss_fn(eqx.combine(p, static), example).array

    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(params))
    times = []
    for _ in range(spec["calls"]):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params))
        times.append(time.perf_counter() - start)
    if spec.get("profile_prefix"):
        prefix = spec["profile_prefix"]
        with open(prefix + ".hlo", "w") as f:
            f.write(compiled.as_text())
        jax.profiler.start_trace(prefix + "_trace")
        for _ in range(2):
            jax.block_until_ready(compiled(params))
        jax.profiler.stop_trace()
    return {"times": times, "compile_s": compile_s}
"""

REFERENCE_DRIVER = (
    r'''
"""Times the reference's (levanter) loss + gradient for bench/compare_loss_grad.py. Generated."""
import json, sys
import haliax as hax
import jax
import jax.numpy as jnp
import levanter.models.loss as levanter_loss
from levanter.models.gpt2 import Gpt2Config
from levanter.models.lm_model import LmExample, compute_next_token_loss
'''
    + ref_bench.FLOAT_MASK_WORKAROUND
    + _TIMING
    + r'''
spec = json.loads(sys.argv[1])
config = Gpt2Config(**spec["model"], gradient_checkpointing=spec["remat"])
Vocab = hax.Axis("vocab", spec["vocab_size"])
Batch = hax.Axis("batch", spec["batch"])
tokens = hax.named(
    jax.random.randint(jax.random.PRNGKey(1), (Batch.size, config.Pos.size), 0, Vocab.size),
    (Batch, config.Pos),
)
example = hax.vmap(LmExample.causal, Batch)(tokens)
model = config.build(Vocab, key=jax.random.PRNGKey(0))
result = _loss_grad_times(model, example, compute_next_token_loss, spec)
print("'''
    + MARKER
    + r"""" + json.dumps(result), flush=True)
"""
)


def _lm_child(spec: dict) -> None:
    """lm's side, in its own process (`--child`)."""
    import dataclasses

    import haliax as hax
    import jax

    import lm.config
    from lm.main.train_lm import TrainLmConfig
    from lm.models import LmExample, compute_next_token_loss

    namespace: dict = {}
    exec(_TIMING, namespace)
    config = lm.config.parse(TrainLmConfig, config_path=spec["config"])
    overrides = {"gradient_checkpointing": remat_value(spec["remat"])}
    if spec["attn_backend"] is not None:
        overrides["attn_backend"] = spec["attn_backend"]
    model_config = dataclasses.replace(config.model, **overrides)
    model_config = resolve_remat(model_config, vocab_size=spec["vocab_size"], batch=spec["batch"])
    Vocab = hax.Axis("vocab", spec["vocab_size"])
    Pos = model_config.Pos
    tokens = hax.named(
        jax.random.randint(jax.random.PRNGKey(1), (spec["batch"], Pos.size), 0, Vocab.size),
        ("batch", Pos.name),
    )
    model = model_config.build(Vocab, key=jax.random.PRNGKey(0))
    result = namespace["_loss_grad_times"](
        model, LmExample.causal(tokens), compute_next_token_loss, spec
    )
    print(MARKER + json.dumps(result), flush=True)


def summarize_profile(prefix: str, top: int) -> list[str]:
    """The `top` kernels by time per call in `<prefix>_trace` (two calls), with their ops."""
    from jax._src.lib import _profile_data

    hlo = open(prefix + ".hlo").read()
    ops = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r'%([\w.\-]+) = (\S+) [^\n]*?metadata=\{op_name="([^"]*)"', hlo)
    }
    (path,) = glob.glob(prefix + "_trace/**/*.xplane.pb", recursive=True)
    total: collections.Counter = collections.Counter()
    for plane in _profile_data.ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in ops:  # kernels of the program (not runtime bookkeeping)
                    total[event.name] += event.duration_ns / 2  # per call
    lines = [f"  kernel time per call: {sum(total.values()) / 1e6:.0f} ms (summed over threads)"]
    # XLA:CPU runs a dot that YNNPACK does not take (e.g. one contracting both operands'
    # leading axes) as an Eigen thunk, whose events miss most of its compute (the LM head's
    # 190 ms weight gradient showed 0.1 ms).
    eigen = sorted(
        {m.group(1) for m in re.finditer(r"\n  (?:ROOT )?%(dot[\w.\-]*) = [^\n]* dot\(", hlo)}
        & set(total)
    )
    if eigen:
        lines.append(
            f"  + {len(eigen)} Eigen dot(s), most of whose compute is missing from these "
            f"events: {', '.join(f'{n} {ops[n][0]}' for n in eigen)}"
        )
    for name, ns in total.most_common(top):
        shape, op = ops[name]
        op = re.sub(r"^jit\([^)]*\)/", "", op)
        lines.append(f"  {ns / 1e6:7.1f} ms  {name[:30]:30s} {shape[:30]:30s} {op[-70:]}")
    return lines


def _stats(times: list[float]) -> str:
    return f"min {min(times):.3f} s, median {statistics.median(times):.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="bench/configs/gpt2_512.yaml")
    parser.add_argument(
        "--remat",
        default="true",
        help="lm's gradient_checkpointing (true, false, save_projections, auto, ...; auto is "
        "resolved as train_lm does); the reference gets false for false, else its only "
        "remat, true",
    )
    parser.add_argument(
        "--attn-backend",
        default="vanilla",
        help="lm's attn_backend (vanilla, jax_flash, nvte, default); the reference uses its own",
    )
    parser.add_argument("--calls", type=positive_int, default=5)
    parser.add_argument("--repeats", type=positive_int, default=2)
    parser.add_argument("--profile", help="record and summarise a profile of each side here")
    parser.add_argument("--top", type=positive_int, default=15, help="kernels listed per profile")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _lm_child(json.loads(args.child))
        return

    from lm.models.layers.attention import validate_attention_backend

    try:
        remat = remat_value(args.remat)
    except ValueError as e:
        parser.error(f"--remat {args.remat!r}: {e}")
    try:
        validate_attention_backend(args.attn_backend)
    except ValueError as e:
        parser.error(f"--attn-backend {args.attn_backend!r}: {e}")
    spec = ref_bench.reference_spec(args.config, steps=1)
    lm_bench.ensure_bytecode()
    common = {"batch": spec["batch"], "vocab_size": spec["vocab_size"], "calls": args.calls}
    # levanter's Gpt2Config takes only a bool: lm's other policies face its default, true
    ref_spec = {**common, "model": spec["model"], "remat": remat is not False}
    lm_spec = {**common, "config": args.config, "remat": args.remat}
    lm_spec["attn_backend"] = None if args.attn_backend == "default" else args.attn_backend
    python = ref_bench.ensure_venv()
    driver = os.path.join(ref_bench.BENCH_HOME, "levanter_loss_grad_driver.py")
    with open(driver, "w") as f:
        f.write(REFERENCE_DRIVER)
    ref_env = ref_bench.reference_env()
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)

    def run(side: str, repeat: int) -> dict:
        prefix = None
        if args.profile and repeat == args.repeats - 1:
            prefix = os.path.join(os.path.abspath(args.profile), side)
        if side == "reference":
            cmd = [python, driver, json.dumps({**ref_spec, "profile_prefix": prefix})]
            env = ref_env
        else:
            child = json.dumps({**lm_spec, "profile_prefix": prefix})
            cmd = [sys.executable, os.path.abspath(__file__), "--child", child]
            env = os.environ
        result, _ = lm_bench.run_marked(cmd, env, marker=MARKER, what=f"{side} loss + grad")
        print(f"{side}: compile {result['compile_s']:.2f} s, {_stats(result['times'])}", flush=True)
        return result

    times: dict[str, list[float]] = {"reference": [], "lm": []}
    for repeat in range(args.repeats):
        order = ("reference", "lm") if repeat % 2 == 0 else ("lm", "reference")
        for side in order:
            times[side] += run(side, repeat)["times"]
    print(
        f"{args.config} (lm: gradient_checkpointing {args.remat}, attn_backend "
        f"{args.attn_backend}): reference {_stats(times['reference'])}; lm {_stats(times['lm'])}; "
        f"lm/reference time {min(times['lm']) / min(times['reference']):.2f}x"
    )
    if args.profile:
        for side in ("reference", "lm"):
            print(f"{side} profile ({os.path.join(args.profile, side)}_trace):")
            print("\n".join(summarize_profile(os.path.join(args.profile, side), args.top)))


if __name__ == "__main__":
    main()
