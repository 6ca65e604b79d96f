"""A tiny regression problem for trainer tests: no language model involved."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np

from lm.checkpoint import CheckpointerConfig
from lm.data import ListDataset
from lm.tracker import JsonLoggerConfig
from lm.trainer import TrainerConfig

Feature = hax.Axis("feature", 4)
Hidden = hax.Axis("hidden", 8)


class Example(eqx.Module):
    x: hax.NamedArray  # (feature,)
    y: hax.NamedArray  # ()


class Mlp(eqx.Module):
    w1: hax.NamedArray  # (feature, hidden)
    w2: hax.NamedArray  # (hidden,)
    bias: hax.NamedArray  # ()

    @staticmethod
    def init(*, key) -> Mlp:
        k1, k2 = jax.random.split(key)
        return Mlp(
            w1=hax.random.normal(k1, (Feature, Hidden)) * 0.5,
            w2=hax.random.normal(k2, (Hidden,)) * 0.5,
            bias=hax.named(jnp.zeros(()), ()),
        )

    def __call__(self, x):
        h = hax.tanh(hax.dot(x, self.w1, axis=Feature))
        return hax.dot(h, self.w2, axis=Hidden) + self.bias


def mse(model: Mlp, batch: Example):
    err = model(batch.x) - batch.y
    return hax.mean(err * err).scalar()


def mse_with_metrics(model: Mlp, batch: Example):
    err = model(batch.x) - batch.y
    loss = hax.mean(err * err).scalar()
    return loss, {"abs_err": hax.mean(hax.abs(err)).scalar()}


def make_dataset(n: int = 512, seed: int = 0) -> ListDataset:
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=4).astype(np.float32)
    items = []
    for _ in range(n):
        x = rng.normal(size=4).astype(np.float32)
        y = np.float32(np.sin(x @ true_w))
        items.append(
            Example(x=hax.named(jnp.asarray(x), (Feature,)), y=hax.named(jnp.asarray(y), ()))
        )
    return ListDataset(items)


def trainer_config(tmp_path, **overrides) -> TrainerConfig:
    base = dict(
        num_train_steps=10,
        train_batch_size=16,
        steps_per_eval=5,
        require_accelerator=False,
        tracker=JsonLoggerConfig(),
        log_dir=tmp_path / "logs",
        id="toy",
        checkpointer=CheckpointerConfig(base_path=str(tmp_path / "ckpt"), keep=[{"every": 1000}]),
        watch=dataclasses.replace(TrainerConfig().watch, interval=0),
    )
    base.update(overrides)
    return TrainerConfig(**base)


def assert_leaves_equal(a, b) -> None:
    """Two pytrees with the same number of leaves, each pair bit for bit equal."""
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
