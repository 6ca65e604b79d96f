"""Vanilla vs jax_flash attention, forward + backward, on CPU (picks the CPU default backend).

Usage: PYTHONPATH=src python bench/attention_cpu.py [--batch 8] [--repeats 10] [--block 128]

Times are the minimum over `repeats` calls after a compile/warm-up call, with the two backends
interleaved call by call (the minimum is the least disturbed by other load on a shared box):
- the attention op alone on a GPT-2-nano-shaped input (heads 4, seq 256, head size 32);
- a full GPT-2-nano (hidden 128, 4 layers, 4 heads, seq 256) loss + gradient.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import equinox as eqx
import haliax as hax
import jax
from bench_args import positive_int

from lm.models import AttentionMask, Gpt2Config, LmExample, compute_next_token_loss
from lm.models.layers.attention import dot_product_attention


def _time_interleaved(calls: dict, repeats: int) -> dict[str, float]:
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: min(ts) for name, ts in times.items()}


def bench_op(batch, repeats, block):
    Batch, Heads = hax.Axis("batch", batch), hax.Axis("heads", 4)
    Pos, HeadSize = hax.Axis("position", 256), hax.Axis("head_size", 32)
    KPos = Pos.alias("key_position")
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q = hax.random.normal(keys[0], (Batch, Heads, Pos, HeadSize))
    k = hax.random.normal(keys[1], (Batch, Heads, KPos, HeadSize))
    v = hax.random.normal(keys[2], (Batch, Heads, KPos, HeadSize))
    calls = {}
    for backend in ("vanilla", "jax_flash"):

        def loss(q, k, v, backend=backend):
            out = dot_product_attention(
                "position",
                "key_position",
                "head_size",
                q,
                k,
                v,
                AttentionMask.causal(),
                backend=backend,
                flash_block_size=block,
            )
            return hax.square(out).sum().array

        calls[backend] = (jax.jit(jax.grad(loss, argnums=(0, 1, 2))), (q, k, v))
    return _time_interleaved(calls, repeats)


def bench_model(batch, repeats, block):
    config = Gpt2Config(
        seq_len=256, hidden_dim=128, num_layers=4, num_heads=4, flash_attention_block_size=block
    )
    Vocab = hax.Axis("vocab", 4096)
    tokens = hax.named(
        jax.random.randint(jax.random.PRNGKey(1), (batch, 256), 0, 4096), ("batch", "position")
    )
    example = LmExample.causal(tokens)
    calls = {}
    for backend in ("vanilla", "jax_flash"):
        cfg = dataclasses.replace(config, attn_backend=backend)
        model = cfg.build(Vocab, key=jax.random.PRNGKey(0))
        fn = eqx.filter_jit(
            eqx.filter_value_and_grad(lambda m: compute_next_token_loss(m, example).array)
        )
        calls[backend] = (fn, (model,))
    return _time_interleaved(calls, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--repeats", type=positive_int, default=10)
    parser.add_argument("--block", type=positive_int, default=128, help="jax_flash tile size")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}, batch {args.batch}, block {args.block}")
    for name, res in (
        ("attention op fwd+bwd", bench_op(args.batch, args.repeats, args.block)),
        ("gpt2-nano loss+grad", bench_model(args.batch, args.repeats, args.block)),
    ):
        line = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in res.items())
        print(f"{name}: {line} (flash/vanilla = {res['jax_flash'] / res['vanilla']:.2f})")


if __name__ == "__main__":
    main()
