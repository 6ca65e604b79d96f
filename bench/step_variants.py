"""Loss + gradient of one benchmark model under several settings, interleaved in one process.

Usage:
    PYTHONPATH=src python bench/step_variants.py --config bench/configs/gpt2_512.yaml \
        [--policies true,save_projections,false] [--levels default,1,lm] [--repeats 5]

`auto` is resolved as train_lm resolves it for this machine and the config's batch (on CPU:
`save_projections` if its estimate fits in memory, else `true`), and what it became is printed.
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
from bench_args import positive_int

import lm.config
from lm.compile_options import xla_compiler_options
from lm.main.train_lm import TrainLmConfig
from lm.models import LmExample, compute_next_token_loss
from lm.models.layers.scan import checkpoint_policy, policy_name, resolve_gradient_checkpointing

POLICIES = {"true": True, "false": False}
"""Command-line spellings of the boolean `gradient_checkpointing` values; any other name is
passed as it is (`save_projections`, `full`, `auto`, ...)."""


def remat_value(name: str) -> bool | str:
    """A `gradient_checkpointing` policy named on the command line, as the config takes it.
    ValueError, naming the allowed values, for one lm does not know (also used by
    compare_loss_grad.py)."""
    value = POLICIES.get(name.lower(), name)
    checkpoint_policy(value)  # FieldError (a ValueError) with the allowed names
    return value


def resolve_remat(model_config, *, vocab_size: int, batch: int):
    """`model_config` with `gradient_checkpointing: auto` resolved as train_lm resolves it for
    a step of `batch` sequences on one device (`lm.models.layers.scan`); a model built with
    an unresolved `auto` would silently use `true`."""
    return resolve_gradient_checkpointing(
        model_config, vocab_size=vocab_size, tokens_per_device=batch * model_config.Pos.size
    )


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


def _model_config(config: TrainLmConfig, policy: str, vocab: int):
    """The model config for one `--policies` item (`name+field=value...`), `auto` resolved.
    ValueError/TypeError for an unknown policy, field or value."""
    name, *fields = policy.split("+")
    overrides = dict(_parse_flag(field) for field in fields)
    known = {f.name for f in dataclasses.fields(config.model)}
    for field in overrides.keys() - known:
        raise ValueError(f"{type(config.model).__name__} has no field {field!r}")
    model_config = dataclasses.replace(
        config.model, gradient_checkpointing=remat_value(name), **overrides
    )
    model_config = resolve_remat(
        model_config, vocab_size=vocab, batch=config.trainer.train_batch_size
    )
    if name == "auto":
        print(f"auto -> {policy_name(model_config.gradient_checkpointing)}", flush=True)
    return model_config


def _variants(config: TrainLmConfig, model_configs: dict, levels, vocab: int):
    Vocab = hax.Axis("vocab", vocab)
    Pos = config.model.Pos
    batch = config.trainer.train_batch_size
    tokens = hax.named(
        jax.random.randint(jax.random.PRNGKey(1), (batch, Pos.size), 0, vocab),
        ("batch", Pos.name),
    )
    example = LmExample.causal(tokens)
    out = {}
    for policy, model_config in model_configs.items():
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
    parser.add_argument("--vocab", type=positive_int, default=8192)
    parser.add_argument("--repeats", type=positive_int, default=5)
    args = parser.parse_args()
    try:
        config = lm.config.parse(TrainLmConfig, config_path=args.config)
    except lm.config.ConfigError as e:
        parser.error(f"--config {args.config}: " + "; ".join(str(p) for p in e.problems))
    levels = args.levels.split(",")
    for level in levels:
        try:
            _options(level)
        except ValueError:
            parser.error(
                f"--levels {level!r}: give default, lm or an XLA:CPU optimisation level (an "
                "int), each optionally followed by +flag=value"
            )
    model_configs = {}
    for policy in args.policies.split(","):
        try:
            model_configs[policy] = _model_config(config, policy, args.vocab)
        except (TypeError, ValueError) as e:
            parser.error(f"--policies {policy!r}: {e}")
    variants = _variants(config, model_configs, levels, vocab=args.vocab)
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
