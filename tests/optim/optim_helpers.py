"""Helpers for optimizer tests: a tiny GPT-2-shaped Haliax module tree, random trees.

Imported by name (`from optim_helpers import ...`); `conftest` is not importable reliably
when several test folders each have one."""

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import numpy as np
from haliax.jax_utils import shaped_rng_split

Embed = hax.Axis("embed", 8)
Vocab = hax.Axis("vocab", 11)
Pos = hax.Axis("position", 6)
Qkv = hax.Axis("qkv", 3)
Heads = hax.Axis("heads", 2)
HeadSize = hax.Axis("head_size", 4)
Mlp = hax.Axis("mlp", 16)
Layers = hax.Axis("layers", 3)


class Attention(eqx.Module):
    c_attn: hnn.Linear
    c_proj: hnn.Linear


class MlpBlock(eqx.Module):
    c_fc: hnn.Linear
    c_proj: hnn.Linear


class Block(eqx.Module):
    ln_1: hnn.LayerNorm
    attn: Attention
    ln_2: hnn.LayerNorm
    mlp: MlpBlock

    @staticmethod
    def init(*, key):
        k = jax.random.split(key, 4)
        return Block(
            ln_1=hnn.LayerNorm.init(Embed),
            attn=Attention(
                c_attn=hnn.Linear.init(Embed, (Qkv, Heads, HeadSize), key=k[0]),
                c_proj=hnn.Linear.init((Heads, HeadSize), Embed, key=k[1]),
            ),
            ln_2=hnn.LayerNorm.init(Embed),
            mlp=MlpBlock(
                c_fc=hnn.Linear.init(Embed, Mlp, key=k[2]),
                c_proj=hnn.Linear.init(Mlp, Embed, key=k[3]),
            ),
        )


class Embeddings(eqx.Module):
    token_embeddings: hnn.Embedding
    position_embeddings: hnn.Embedding


class Transformer(eqx.Module):
    blocks: hnn.Stacked
    ln_f: hnn.LayerNorm


class TinyGpt2(eqx.Module):
    embeddings: Embeddings
    transformer: Transformer

    @staticmethod
    def init(*, key):
        k = jax.random.split(key, 3)
        return TinyGpt2(
            embeddings=Embeddings(
                token_embeddings=hnn.Embedding.init(Vocab, Embed, key=k[0]),
                position_embeddings=hnn.Embedding.init(Pos, Embed, key=k[1]),
            ),
            transformer=Transformer(
                blocks=hnn.Stacked.init(Layers, Block)(key=shaped_rng_split(k[2], Layers.size)),
                ln_f=hnn.LayerNorm.init(Embed),
            ),
        )


def random_like(tree, seed):
    """A tree like `tree` with standard-normal values (numpy, no compiles) in float leaves."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    new = [
        jnp.asarray(rng.normal(size=x.shape), x.dtype) if eqx.is_inexact_array(x) else x
        for x in leaves
    ]
    return jax.tree_util.tree_unflatten(treedef, new)


def build_gpt2_like():
    """GPT-2 field names: embeddings.{token,position}_embeddings, transformer.blocks (Stacked
    over `layers`, each with ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj),
    transformer.ln_f."""
    # Trace the init for the structure only, then fill in values with numpy: compiling the
    # dozens of tiny random-init ops costs ~10 s on a 2-core box.
    shapes = eqx.filter_eval_shape(TinyGpt2.init, key=jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)

    def fill(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jnp.asarray(rng.normal(size=x.shape) * 0.5, dtype=x.dtype)
        return x

    return jax.tree_util.tree_map(fill, shapes)
