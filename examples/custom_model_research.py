"""Your first research script: your own model, loss and data, trained by lm's `Trainer`.

An MLP learns to tell two interleaved spirals apart. Nothing here is a language model:
the Trainer only needs a model (any Equinox module), a loss `loss_fn(model, batch)` and a
dataset. It brings the jitted step, evaluation, metrics, checkpoints and hooks.
Walkthrough: docs/tutorial.md. Run (CPU is fine, about 20 s):

    python examples/custom_model_research.py --steps 400 --out /tmp/spirals
"""

import argparse

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
import numpy as np
import optax

from lm.checkpoint import CheckpointerConfig
from lm.data import AsyncDataset
from lm.tracker import JsonLoggerConfig
from lm.trainer import Trainer, TrainerConfig

Point, Hidden, Class = hax.Axis("point", 2), hax.Axis("hidden", 64), hax.Axis("class", 2)


class Example(eqx.Module):
    x: hax.NamedArray  # (point,) coordinates
    label: hax.NamedArray  # () which spiral, 0 or 1


class Spirals(AsyncDataset[Example]):
    """Example i is drawn from a generator seeded by (seed, i): any index, any order."""

    def __init__(self, seed: int, size: int | None = None):
        self.seed, self.size = seed, size

    def is_finite(self) -> bool:
        return self.size is not None

    def __len__(self) -> int:
        return self.size

    def get_batch(self, indices):
        out = []
        for i in indices:
            rng = np.random.default_rng([self.seed, int(i)])
            label, t = rng.integers(2), rng.uniform(0.25, 1.0) * 3 * np.pi
            x = t * np.array([np.cos(t + np.pi * label), np.sin(t + np.pi * label)]) / 10
            x = (x + rng.normal(scale=0.02, size=2)).astype(np.float32)
            out.append(Example(hax.named(x, Point), hax.named(np.int32(label), ())))
        return out


class Mlp(eqx.Module):
    hidden: hnn.Linear
    inner: hnn.Linear
    out: hnn.Linear

    @staticmethod
    def init(*, key) -> "Mlp":
        k1, k2, k3 = jax.random.split(key, 3)
        return Mlp(
            hnn.Linear.init(Point, Hidden, key=k1),
            hnn.Linear.init(Hidden, Hidden.alias("inner"), key=k2),
            hnn.Linear.init(Hidden.alias("inner"), Class, key=k3),
        )

    def __call__(self, x):
        h = hnn.gelu(self.hidden(x))
        return self.out(hnn.gelu(self.inner(h)))


def loss_fn(model: Mlp, batch: Example):
    """Mean cross-entropy; the metrics dict is logged as train/accuracy and eval/<set>/accuracy."""
    logits = model(batch.x)
    targets = hax.nn.one_hot(batch.label, Class)
    loss = hnn.cross_entropy_loss(logits, Class, targets, reduction=hax.mean)
    accuracy = hax.mean(hax.argmax(logits, Class) == batch.label)
    return loss, {"accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default="spirals_run", help="logs and checkpoints go here")
    args = parser.parse_args()

    config = TrainerConfig(
        num_train_steps=args.steps,
        train_batch_size=128,
        steps_per_eval=100,
        require_accelerator=False,
        tracker=JsonLoggerConfig(),
        log_dir=f"{args.out}/logs",
        id="spirals",
        checkpointer=CheckpointerConfig(base_path=f"{args.out}/checkpoints"),
    )
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, min(50, args.steps // 2), args.steps)
    trainer = Trainer(config, optax.adamw(schedule), loss_fn)

    @trainer.add_hook(every=100)
    def report(info, force=False):
        if not force:  # forced: the extra call after the last step
            print(f"step {info.step:4d}  loss {float(info.loss):.4f}", flush=True)

    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(0), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(1))
        )
        trainer.add_eval_hook(Spirals(seed=1, size=1024), "heldout")
        info = trainer.train(state, trainer.data_loader(Spirals(seed=0)))
    print(f"done at step {info.step}; metrics in {config.run_dir}/metrics.jsonl")


if __name__ == "__main__":
    main()
