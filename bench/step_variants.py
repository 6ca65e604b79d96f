"""Loss + gradient of one benchmark model under several settings, interleaved in one process.

Usage:
    PYTHONPATH=src python bench/step_variants.py --config bench/configs/gpt2_512.yaml \
        [--policies true,save_projections,false] [--levels default,1,lm] [--repeats 5]

A policy may carry model overrides and a level XLA options, each as `+name=value`, e.g.
`--policies save_projections+attn_backend=vanilla --levels 1+xla_cpu_use_fusion_emitters=false`.

For every (`gradient_checkpointing` policy, XLA:CPU backend optimisation level) pair it compiles
the model's jitted loss + gradient on random tokens (the config's batch and seq_len), checks that
every pair computes the same loss and gradients, then times the pairs call by call in turn, so
load from other jobs hits all of them alike. Prints per pair: compile time, XLA's temporary
memory, and the minimum / median wall and process-CPU time per call.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import equinox as eqx
import haliax as hax
import jax
import numpy as np

import lm.config
from lm.compile_options import xla_compiler_options
from lm.main.train_lm import TrainLmConfig
from lm.models import LmExample, compute_next_token_loss

POLICIES = {"true": True, "false": False}


def _options(variant: str) -> dict | None:
    """`default`, `lm` (what lm compiles its steps with, `lm.compile_options`), a level (`1`),
    or any of them followed by `+flag=value` XLA options."""
    level, *flags = variant.split("+")
    if level == "default":
        options = {}
    elif level == "lm":
        options = dict(xla_compiler_options("cpu") or {})
    else:
        options = {"xla_backend_optimization_level": int(level)}
    options.update(_parse_flag(flag) for flag in flags)
    return options or None


def _parse_flag(flag: str) -> tuple[str, bool | int | str]:
    """`name=value` with the value as a bool, an int or a string."""
    name, _, value = flag.partition("=")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    return name, int(value) if value.lstrip("-").isdigit() else value


def _variants(config: TrainLmConfig, policies, levels, vocab: int):
    Vocab = hax.Axis("vocab", vocab)
    Pos = config.model.Pos
    batch = config.trainer.train_batch_size
    tokens = hax.named(
        jax.random.randint(jax.random.PRNGKey(1), (batch, Pos.size), 0, vocab),
        ("batch", Pos.name),
    )
    example = LmExample.causal(tokens)
    out = {}
    for policy in policies:
        name, *fields = policy.split("+")
        overrides = dict(_parse_flag(field) for field in fields)
        model_config = dataclasses.replace(
            config.model, gradient_checkpointing=POLICIES.get(name, name), **overrides
        )
        model = model_config.build(Vocab, key=jax.random.PRNGKey(0))
        params, static = eqx.partition(model, eqx.is_array)

        def loss(p, static=static):
            return compute_next_token_loss(eqx.combine(p, static), example).array

        lowered = jax.jit(jax.value_and_grad(loss)).lower(params)
        for level in levels:
            options = _options(level)
            start = time.perf_counter()
            compiled = lowered.compile(options)
            compile_s = time.perf_counter() - start
            memory = compiled.memory_analysis()
            temp = memory.temp_size_in_bytes / 2**20 if memory is not None else float("nan")
            out[f"{policy} @ {level}"] = (compiled, params, compile_s, temp)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--policies",
        default="true,save_projections,false",
        help="remat policies, each optionally with +field=value model overrides",
    )
    parser.add_argument(
        "--levels",
        default="default,1",
        help="XLA:CPU backend levels, each optionally with +flag=value XLA options",
    )
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = lm.config.parse(TrainLmConfig, config_path=args.config)
    variants = _variants(config, args.policies.split(","), args.levels.split(","), vocab=args.vocab)
    reference = None
    for name, (compiled, params, _, _) in variants.items():
        out = jax.block_until_ready(compiled(params))
        if reference is None:
            reference = out
            continue
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(reference), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (compiled, params, _, _) in variants.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled(params))
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.config}, {args.repeats} repeats"
    )
    print(
        f"{'policy @ level':32s} {'compile':>8s} {'temp MiB':>9s} {'min s':>7s} {'median s':>9s} {'cpu min s':>10s}"
    )
    for name, (_, _, compile_s, temp) in variants.items():
        print(
            f"{name:32s} {compile_s:8.2f} {temp:9.0f} {min(wall[name]):7.3f} "
            f"{statistics.median(wall[name]):9.3f} {min(cpu[name]):10.2f}"
        )


if __name__ == "__main__":
    main()
