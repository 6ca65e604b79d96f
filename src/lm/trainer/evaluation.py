"""Evaluation: mean loss and metrics over a validation set, every `steps_per_eval` steps."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp

import lm.tracker
from lm.compile_options import xla_compiler_options
from lm.partitioning.jit import sharded_jit
from lm.trainer.checks import as_scalar
from lm.trainer.hooks import Callback
from lm.trainer.state import StepInfo

if TYPE_CHECKING:
    from lm.trainer.trainer import Trainer

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _smaller_than_a_batch(name: str | None, batch_size: int, size: int | None) -> str:
    has = "" if size is None else f" ({size} examples)"
    return (
        f"Evaluation set {name or ''!r}{has} is smaller than one eval batch of {batch_size} "
        "examples: it gives no batch to evaluate. Lower trainer.per_device_eval_parallelism "
        "or use a larger validation set."
    )


class EvalHook(Callback):
    redo_after_resume = True  # an eval cut short by a stop after its step's checkpoint

    def __init__(self, trainer: Trainer, dataset, name: str | None):
        from lm.data import AsyncDataset

        if not isinstance(dataset, AsyncDataset):
            raise TypeError(
                f"add_eval_hook expects an AsyncDataset of examples (the hook batches it with "
                f"EvalBatch), got {type(dataset).__name__}; wrap a list of examples in "
                "lm.data.ListDataset(examples)"
            )
        if trainer.config.max_eval_batches is None and not dataset.is_finite():
            raise ValueError(
                f"Evaluation set {name or ''!r} ({type(dataset).__name__}) is infinite and "
                "trainer.max_eval_batches is None (evaluate the whole set): the evaluation "
                "would never end. Set trainer.max_eval_batches to the number of batches to "
                "evaluate, or pass a finite set (e.g. dataset.slice(0, n))"
            )
        if dataset.is_finite() and len(dataset) < trainer.EvalBatch.size:
            # said when the hook is added, before training, not at the first evaluation
            raise ValueError(_smaller_than_a_batch(name, trainer.EvalBatch.size, len(dataset)))
        self.trainer = trainer
        self.dataset = dataset
        self.name = name
        self._eval_step = None
        self._last_evaluated_step: int | None = None
        self.last_result: dict[str, float] | None = None
        self._warned_partial_batch = False

    @property
    def prefix(self) -> str:
        return f"eval/{self.name}" if self.name else "eval"

    def logged_keys(self) -> tuple[str, ...]:
        return (f"{self.prefix}/loss",)

    def _compiled(self):
        if self._eval_step is None:
            loss_fn = self.trainer.loss_fn

            def eval_step(model, batch):
                model = eqx.nn.inference_mode(model)
                # `lm.tracker.log` inside the loss: averaged like the returned metrics and
                # logged as eval/<set>/<key>, as the train step logs them as train/<key>
                with lm.tracker.capture_metrics() as captured:
                    loss, metrics = loss_fn(model, *batch, key=None)
                logged = {
                    k: as_scalar(v, f"metric {k!r} (logged with lm.tracker.log)")
                    for k, v in captured.items()
                }
                return loss, {**logged, **metrics}

            self._eval_step = sharded_jit(
                eval_step,
                axis_resources=self.trainer.compute_axis_mapping,
                out_mapping={},
                mesh=lambda: self.trainer.device_mesh,
                compiler_options=xla_compiler_options(),
            )
        return self._eval_step

    def evaluate(self, model) -> dict[str, float]:
        """Mean loss and metrics over (up to `max_eval_batches`) batches of the dataset."""
        trainer = self.trainer
        loader = trainer.data_loader(self.dataset, trainer.EvalBatch)
        max_batches = trainer.config.max_eval_batches
        step = self._compiled()
        totals: dict[str, Any] = {}
        n = 0
        start = time.perf_counter()
        # Several processes: one eval step at a time. Steps dispatched ahead run concurrently
        # on the CPU backend, and their cross-process collectives (gloo) can then meet in a
        # different order on each process and wait for each other forever.
        one_at_a_time = jax.process_count() > 1
        with trainer.config.use_device_mesh(), contextlib.closing(iter(loader)) as batches:
            for batch in batches:
                if max_batches is not None and n >= max_batches:
                    break
                batch = batch if isinstance(batch, tuple) else (batch,)
                loss, metrics = step(model, batch)
                if one_at_a_time:
                    loss = jax.block_until_ready(loss)
                values = {"loss": loss, **metrics}
                totals = values if not totals else jax.tree_util.tree_map(jnp.add, totals, values)
                n += 1
        if n == 0:
            size = len(self.dataset) if self.dataset.is_finite() else None
            raise ValueError(_smaller_than_a_batch(self.name, trainer.EvalBatch.size, size))
        capped = max_batches is not None and n >= max_batches
        if not capped:
            self._warn_partial_batch(n)
        means = {k: float(v) / n for k, v in jax.device_get(totals).items()}
        result = {f"{self.prefix}/{k}": v for k, v in means.items()}
        result[f"{self.prefix}/perplexity"] = math.exp(min(means["loss"], 50.0))
        result[f"{self.prefix}/batches"] = n
        result[f"{self.prefix}/time"] = time.perf_counter() - start
        return result

    def _warn_partial_batch(self, num_batches: int) -> None:
        """Once: a finite set whose size is not a multiple of the eval batch loses its last,
        partial batch (the loader yields full batches only; a generic loss cannot be told
        which rows are padding)."""
        if self._warned_partial_batch or not self.dataset.is_finite():
            return
        size = self.trainer.EvalBatch.size
        total, used = len(self.dataset), num_batches * size
        if total <= used:
            return
        self._warned_partial_batch = True
        logger.warning(
            "Evaluation set %r has %d examples; each evaluation uses %d full batches of %d "
            "(%d examples) and leaves out the last %d. To evaluate every example, make the "
            "set a multiple of %d examples or choose trainer.per_device_eval_parallelism so "
            "the eval batch divides %d",
            self.name or "",
            total,
            num_batches,
            size,
            used,
            total - used,
            size,
            total,
        )

    def on_step(self, info: StepInfo, force: bool = False) -> None:
        if self._last_evaluated_step == info.step:
            return  # the forced final run must not repeat an eval that just happened
        self._last_evaluated_step = info.step
        result = self.evaluate(info.state.eval_model)
        self.last_result = result
        logger.info(
            "[step %d] %s loss %.4f over %d batches",
            info.step,
            self.prefix,
            result[f"{self.prefix}/loss"],
            result[f"{self.prefix}/batches"],
        )
        lm.tracker.log(result, step=info.step)


def group_by_tag(items: Mapping[str, T], tags: Mapping[str, Sequence[str]]) -> dict[str, list[T]]:
    """`{tag: [the items of the sets carrying it]}` from `items` (set name -> item: an eval
    hook, a result) and `tags` (set name -> its data tags, `validation_tags()`); sets
    missing from `items` are left out."""
    groups: dict[str, list[T]] = {}
    for name, set_tags in tags.items():
        if name in items:
            for tag in set_tags:
                groups.setdefault(tag, []).append(items[name])
    return groups


class TaggedEvalHook(Callback):
    """`eval/<tag>/loss` and `/perplexity` for each data tag: the mean loss over the evaluation
    sets carrying the tag, weighted by the tokens each was evaluated on.

    Every set is evaluated with the same `EvalBatch` and `seq_len`, so a set's tokens are
    proportional to its batch count. Registered after the sets' `EvalHook`s (hooks run in
    the order added), it combines the results they produced at the same step.
    """

    redo_after_resume = True  # with the EvalHooks it combines

    def __init__(self, hooks_by_tag: dict[str, list[EvalHook]]):
        self.hooks_by_tag = hooks_by_tag
        self._last_step: int | None = None
        self.last_result: dict[str, float] | None = None

    def logged_keys(self) -> tuple[str, ...]:
        return tuple(f"eval/{tag}/loss" for tag in self.hooks_by_tag)

    def on_step(self, info: StepInfo, force: bool = False) -> None:
        if self._last_step == info.step:
            return  # the forced final run must not log a step twice
        self._last_step = info.step
        result: dict[str, float] = {}
        for tag, hooks in self.hooks_by_tag.items():
            done = [h for h in hooks if h._last_evaluated_step == info.step and h.last_result]
            if not done:
                continue
            batches = [h.last_result[f"{h.prefix}/batches"] for h in done]
            losses = [h.last_result[f"{h.prefix}/loss"] for h in done]
            loss = sum(x * n for x, n in zip(losses, batches, strict=True)) / sum(batches)
            result[f"eval/{tag}/loss"] = loss
            result[f"eval/{tag}/perplexity"] = math.exp(min(loss, 50.0))
        if result:
            self.last_result = result
            lm.tracker.log(result, step=info.step)
