"""The pure training step: loss, (accumulated) gradients, optimizer update.

Everything here is traced under jit; nothing syncs with the host. Gradient accumulation
splits the batch axis `B` into `(B / n, n)` with the microbatch index minor, so each
device's microbatch rows are rows it already holds: no data moves between devices. The
result is the mean over microbatches of the per-microbatch loss and gradients, which
equals the full-batch value whenever each microbatch carries equal weight (e.g. a mean
over examples, or a token mean with the same number of loss tokens per microbatch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import haliax as hax
import haliax.quantization as hq
import jax
import jax.numpy as jnp
import optax

import lm.tracker
from lm.trainer.hooks import InsideStepInfo, JitCallback
from lm.trainer.quantization import split_overwrites
from lm.trainer.state import TrainerState, non_trainables_only, trainables_only

MICROBATCH_AXIS = "microbatch"

# loss_fn(model, *batch, key=..., **batch_kwargs) -> (loss, metrics)
WrappedLossFn = Callable[..., tuple[jax.Array, dict[str, Any]]]


def _is_leaf(x) -> bool:
    return hax.is_named_array(x)


def _has_axis(leaf: hax.NamedArray, name: str) -> bool:
    return any(axis.name == name for axis in leaf.axes)


def split_microbatches(batch: Any, batch_axis: str, num_microbatches: int) -> Any:
    """Reshape the batch axis B of every leaf into (B / n, microbatch=n).

    NamedArrays are split along `batch_axis` (those without it, shared by every example,
    are left whole); plain arrays along their leading dimension.

    Raises:
        ValueError: the batch has NamedArrays but none with `batch_axis` (every
            microbatch would get the whole batch), or a batch size that `num_microbatches`
            does not divide.
    """
    leaves = jax.tree_util.tree_leaves(batch, is_leaf=_is_leaf)
    named = [leaf for leaf in leaves if hax.is_named_array(leaf)]
    if named and not any(_has_axis(leaf, batch_axis) for leaf in named):
        axes = ", ".join(
            "(" + ", ".join(f"{a.name}={a.size}" for a in leaf.axes) + ")" for leaf in named[:4]
        )
        raise ValueError(
            f"Cannot split the batch into {num_microbatches} microbatches "
            f"(trainer.per_device_parallelism): none of its NamedArrays has the batch axis "
            f"{batch_axis!r} (trainer.batch_axis); their axes are {axes}. Name the batch axis "
            f"{batch_axis!r} (trainer.data_loader(dataset) does), or set trainer.batch_axis "
            "to your batch axis's name"
        )
    for leaf in named:
        if _has_axis(leaf, batch_axis) and leaf.resolve_axis(batch_axis).size % num_microbatches:
            raise ValueError(
                f"Cannot split a batch of {leaf.resolve_axis(batch_axis).size} examples along "
                f"{batch_axis!r} into {num_microbatches} microbatches: the size must be a "
                "multiple of the number of microbatches (trainer.train_batch_size / "
                "(per_device_parallelism x batch-parallel devices))"
            )

    def split(leaf):
        if hax.is_named_array(leaf):
            if not _has_axis(leaf, batch_axis):
                return leaf
            Batch = leaf.resolve_axis(batch_axis)
            Micro = hax.Axis(MICROBATCH_AXIS, num_microbatches)
            return hax.unflatten_axis(
                leaf, Batch, (Batch.resize(Batch.size // num_microbatches), Micro)
            )
        if isinstance(leaf, jax.Array) and leaf.ndim >= 1:
            b = leaf.shape[0]
            return leaf.reshape((b // num_microbatches, num_microbatches) + leaf.shape[1:])
        return leaf

    return jax.tree_util.tree_map(split, batch, is_leaf=_is_leaf)


def take_microbatch(split_batch: Any, index: jax.Array) -> Any:
    def take(leaf):
        if hax.is_named_array(leaf):
            if not _has_axis(leaf, MICROBATCH_AXIS):
                return leaf
            return leaf[MICROBATCH_AXIS, index]
        if isinstance(leaf, jax.Array) and leaf.ndim >= 2:
            return leaf[:, index]
        return leaf

    return jax.tree_util.tree_map(take, split_batch, is_leaf=_is_leaf)


def loss_and_grads(
    loss_fn: WrappedLossFn,
    trainable: Any,
    frozen: Any,
    batch: Sequence[Any],
    batch_kwargs: Mapping[str, Any],
    key: jax.Array | None,
    *,
    num_microbatches: int,
    batch_axis: str,
    compute_mapping: Mapping[str, Any],
    parameter_mapping: Mapping[str, Any],
) -> tuple[jax.Array, dict[str, Any], Any]:
    """Mean loss, mean metrics and mean gradients over `num_microbatches` microbatches."""

    def objective(trainable, micro_batch, key):
        model = eqx.combine(trainable, frozen)
        with lm.tracker.capture_metrics() as captured:
            loss, metrics = loss_fn(model, *micro_batch, key=key, **batch_kwargs)
        return loss, {**captured, **metrics}

    grad_fn = eqx.filter_value_and_grad(objective, has_aux=True)

    if num_microbatches == 1:
        (loss, metrics), grads = grad_fn(trainable, tuple(batch), key)
        return loss, metrics, hax.shard(grads, parameter_mapping)

    split = split_microbatches(tuple(batch), batch_axis, num_microbatches)
    keys = jax.random.split(key, num_microbatches) if key is not None else None

    def body(carry, index):
        loss_acc, metrics_acc, grads_acc = carry
        micro = hax.shard(take_microbatch(split, index), compute_mapping)
        micro_key = keys[index] if keys is not None else None
        (loss, metrics), grads = grad_fn(trainable, micro, micro_key)
        grads = hax.shard(grads, parameter_mapping)
        grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, grads)
        metrics_acc = jax.tree_util.tree_map(jnp.add, metrics_acc, metrics)
        return (loss_acc + loss, metrics_acc, grads_acc), None

    first_micro = take_microbatch(split, jnp.int32(0))
    (loss_shape, metrics_shape), grads_shape = eqx.filter_eval_shape(
        grad_fn, trainable, first_micro, keys[0] if keys is not None else None
    )
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)  # noqa: E731
    init = (
        jnp.zeros((), jnp.float32),
        jax.tree_util.tree_map(zeros, metrics_shape),
        hax.shard(jax.tree_util.tree_map(zeros, grads_shape), parameter_mapping),
    )
    (loss_sum, metrics_sum, grads_sum), _ = jax.lax.scan(body, init, jnp.arange(num_microbatches))
    inv = 1.0 / num_microbatches
    scale = lambda x: (x * inv).astype(x.dtype)  # noqa: E731
    return (
        loss_sum * inv,
        jax.tree_util.tree_map(scale, metrics_sum),
        jax.tree_util.tree_map(scale, grads_sum),
    )


@dataclasses.dataclass(frozen=True)
class StepOutput:
    loss: jax.Array
    state: TrainerState
    metrics: dict[str, Any]
    jit_callback_infos: list[Any]


def train_step(
    state: TrainerState,
    batch: Sequence[Any],
    batch_kwargs: Mapping[str, Any],
    *,
    loss_fn: WrappedLossFn,
    optimizer: optax.GradientTransformationExtraArgs,
    num_microbatches: int,
    batch_axis: str,
    compute_mapping: Mapping[str, Any],
    parameter_mapping: Mapping[str, Any],
    jit_callbacks: Sequence[JitCallback] = (),
    learning_rate_fn: Callable[[Any], jax.Array | None] | None = None,
) -> tuple[jax.Array, TrainerState, dict[str, Any], list[Any]]:
    """One optimizer step. Returns (loss, new_state, metrics, jit-callback infos)."""
    key, new_key = jax.random.split(state.training_key)
    trainable = trainables_only(state.model, state.is_trainable)
    frozen = non_trainables_only(state.model, state.is_trainable)

    with lm.tracker.capture_metrics() as captured:
        loss, metrics, grads = loss_and_grads(
            loss_fn,
            trainable,
            frozen,
            batch,
            batch_kwargs,
            key,
            num_microbatches=num_microbatches,
            batch_axis=batch_axis,
            compute_mapping=compute_mapping,
            parameter_mapping=parameter_mapping,
        )
        # quantization state (fp8 scales) comes back as its "gradient": written, not optimized
        overwrites, grads = split_overwrites(grads)
        _, optimized = split_overwrites(trainable)
        updates, opt_state = optimizer.update(grads, state.opt_state, optimized, loss=loss)
        new_trainable = hq.apply_updates(trainable, updates, overwrites)
    new_model = hax.shard(eqx.combine(new_trainable, frozen), parameter_mapping)
    averaging = state.model_averaging
    if averaging is not None:
        averaging = averaging.update(new_trainable, state.step)
    new_state = dataclasses.replace(
        state,
        step=state.step + 1,
        model=new_model,
        opt_state=opt_state,
        training_key=new_key,
        model_averaging=averaging,
    )

    out_metrics: dict[str, Any] = {f"train/{k}": v for k, v in metrics.items()}
    out_metrics.update(captured)
    out_metrics["optim/grad_norm"] = optax.tree.norm(grads)
    if learning_rate_fn is not None and (lr := learning_rate_fn(opt_state)) is not None:
        out_metrics["optim/learning_rate"] = lr

    inside = InsideStepInfo(grads=grads, updates=updates)
    cb_infos = [cb.inside_step(new_state, inside) for cb in jit_callbacks]
    return loss, new_state, out_metrics, cb_infos
