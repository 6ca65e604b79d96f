"""Time one optimizer update (jitted) for each registered optimizer.

The parameters are a GPT-2-shaped stack of blocks (hnn.Stacked over layers; attention
c_attn/c_proj and MLP c_fc/c_proj Linears, LayerNorms) plus token embeddings.

    PYTHONPATH=src python bench/optim_update.py --layers 4 --embed 256 --repeats 20
"""

import argparse
import time

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from bench_args import positive_int

import lm.tracker
from lm.optim import AdamConfig, AdoptConfig, LionConfig, MuonConfig, SgdConfig


def build_params(layers: int, embed: int, vocab: int):
    Embed, Vocab = hax.Axis("embed", embed), hax.Axis("vocab", vocab)
    Mlp, Layers = hax.Axis("mlp", 4 * embed), hax.Axis("layers", layers)
    Qkv, Heads, HeadSize = (
        hax.Axis("qkv", 3),
        hax.Axis("heads", embed // 64),
        hax.Axis("head_size", 64),
    )

    class Block(eqx.Module):
        ln_1: hnn.LayerNorm
        c_attn: hnn.Linear
        c_proj: hnn.Linear
        ln_2: hnn.LayerNorm
        c_fc: hnn.Linear
        mlp_proj: hnn.Linear

        @staticmethod
        def init(*, key):
            k = jax.random.split(key, 4)
            return Block(
                hnn.LayerNorm.init(Embed),
                hnn.Linear.init(Embed, (Qkv, Heads, HeadSize), key=k[0]),
                hnn.Linear.init((Heads, HeadSize), Embed, key=k[1]),
                hnn.LayerNorm.init(Embed),
                hnn.Linear.init(Embed, Mlp, key=k[2]),
                hnn.Linear.init(Mlp, Embed, key=k[3]),
            )

    class Model(eqx.Module):
        token_embeddings: hnn.Embedding
        blocks: hnn.Stacked

    def init(key):
        k1, k2 = jax.random.split(key)
        return Model(
            hnn.Embedding.init(Vocab, Embed, key=k1),
            hnn.Stacked.init(Layers, Block)(key=jax.random.split(k2, layers)),
        )

    shapes = eqx.filter_eval_shape(init, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda s: (
            jnp.asarray(rng.normal(size=s.shape) * 0.02, s.dtype)
            if isinstance(s, jax.ShapeDtypeStruct)
            else s
        ),
        shapes,
    )


def time_update(config, params, repeats: int) -> tuple[float, float]:
    tx = config.build(1000)

    @eqx.filter_jit(donate="all-except-first")
    def step(grads, params, state):
        with lm.tracker.capture_metrics():  # clipping and skip-step log from inside the update
            updates, state = tx.update(grads, state, params, loss=jnp.float32(1.0))
        return optax.apply_updates(params, updates), state

    grads = jax.tree_util.tree_map(lambda x: x * 0.1, params)
    params = jax.tree_util.tree_map(jnp.copy, params)  # this run donates its own copy
    state = tx.init(params)
    t0 = time.perf_counter()
    params, state = step(grads, params, state)
    jax.block_until_ready(params)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, state = step(grads, params, state)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=positive_int, default=4)
    parser.add_argument("--embed", type=int, default=256, help="a multiple of 64 (heads of 64)")
    parser.add_argument("--vocab", type=positive_int, default=8192)
    parser.add_argument("--repeats", type=positive_int, default=20)
    args = parser.parse_args()
    if args.embed < 64 or args.embed % 64:
        parser.error(f"--embed {args.embed}: must be a positive multiple of 64 (64-wide heads)")
    params = build_params(args.layers, args.embed, args.vocab)
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"device: {jax.devices()[0].device_kind}; {n / 1e6:.2f}M parameters")
    configs = {
        "adam": AdamConfig(),
        "adam+rms_clip+skip": AdamConfig(update_rms_clipping=1.0, skip_bad_steps=True),
        "lion": LionConfig(),
        "adopt": AdoptConfig(),
        "sgd": SgdConfig(),
        "muon": MuonConfig(),
    }
    print(f"{'optimizer':<22}{'compile s':>10}{'update ms':>11}")
    for name, config in configs.items():
        compile_s, step_s = time_update(config, params, args.repeats)
        print(f"{name:<22}{compile_s:>10.2f}{step_s * 1e3:>11.2f}")


if __name__ == "__main__":
    main()
