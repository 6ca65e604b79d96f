"""What the Trainer's Python API accepts: the loss's return value, the optimizer, the
model arguments, the batches and the state a step is given. Each check raises an error
that names what was wrong and what to do instead."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from lm.trainer.config import TrainerConfig


def as_scalar(value: Any, what: str = "loss") -> jax.Array:
    """`value` (what `loss_fn` returned as `what`: "loss" or "metric 'name'") as a float32
    scalar, or a ValueError/TypeError saying what is wrong with it."""
    if hax.is_named_array(value):
        if value.axes:
            axes = ", ".join(f"{a.name}={a.size}" for a in value.axes)
            raise ValueError(
                f"loss_fn must return a scalar {what}, got a NamedArray with axes ({axes}): "
                "reduce it, e.g. hax.mean(x) (a mean over every axis) or x.mean(Batch)"
            )
        value = value.array
    if value is None:
        raise TypeError(
            f"loss_fn must return a scalar {what}, got None (a missing `return`?): a jax "
            "array, a NamedArray or a number"
        )
    try:
        value = jnp.asarray(value)
    except TypeError:
        raise TypeError(
            f"loss_fn must return a scalar {what}, got {type_name(value)}: a jax array, a "
            "NamedArray or a number"
        ) from None
    if value.ndim != 0:
        raise ValueError(
            f"loss_fn must return a scalar {what}, got shape {value.shape}: reduce it (e.g. "
            "jnp.mean, or hax.mean for a NamedArray)"
        )
    if what == "loss" and not jnp.issubdtype(value.dtype, jnp.floating):
        # an integer or bool loss has no gradient: the step would train nothing, silently
        raise TypeError(
            f"loss_fn must return a floating-point loss, got dtype {value.dtype}: an integer "
            "or boolean loss has zero gradient, so nothing would train. Compute the loss in "
            "floating point (e.g. cast the inputs or the model output with .astype(jnp.float32))"
        )
    return value.astype(jnp.float32)


def split_loss_output(out: Any) -> tuple[Any, Mapping[str, Any]]:
    """`loss_fn`'s return value as (loss, metrics): a scalar, or a (loss, metrics) pair
    (a tuple or a list of two)."""
    if isinstance(out, tuple | list):
        if len(out) != 2 or not isinstance(out[1], Mapping):
            got = ", ".join(type_name(x) for x in out)
            raise ValueError(
                "loss_fn must return a scalar loss or a (loss, metrics) tuple with metrics a "
                f"dict of scalars, got a {type(out).__name__} of {len(out)} ({got})"
            )
        return out[0], out[1]
    if isinstance(out, Mapping):
        raise ValueError(
            "loss_fn must return a scalar loss or a (loss, metrics) tuple, got a "
            f"{type_name(out)} (keys {sorted(map(str, out))}); return (loss, metrics)"
        )
    return out, {}


def type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")


def check_optimizer(optimizer: Any, config: TrainerConfig) -> None:
    """An optax transformation, or a TypeError saying how to get one."""
    from lm.optim import OptimizerConfig

    if isinstance(optimizer, OptimizerConfig):
        name = type(optimizer).__name__
        raise TypeError(
            f"Trainer got an optimizer config ({name}), not an optimizer: build it first, "
            f"e.g. Trainer(config, {name}(...).build(config.num_train_steps), loss_fn) "
            f"(here num_train_steps is {config.num_train_steps})"
        )
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            f"Trainer's optimizer must be an optax.GradientTransformation (with init and "
            f"update), e.g. optax.adamw(3e-4) or OptimizerConfig.build(num_train_steps), got "
            f"{type_name(optimizer)}"
        )


def is_dataset(value: Any) -> bool:
    from lm.data import AsyncDataset

    return isinstance(value, AsyncDataset)


def _deleted_leaf(state: Any) -> str | None:
    """The path of the first array of `state` whose buffer was deleted (donated to a step
    that consumed it), or None."""
    leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=hax.is_named_array)
    for path, leaf in leaves:
        arr = leaf.array if hax.is_named_array(leaf) else leaf
        if isinstance(arr, jax.Array) and arr.is_deleted():
            return jax.tree_util.keystr(path, simple=True, separator=".")
    return None


def check_not_donated(state: Any, method: str) -> None:
    """The state's buffers still exist: `train`/`train_step` donate their input state.

    A donated state loses all its buffers at once, so the first array tells (the whole
    walk with paths, ~16 ms for 3,000 leaves, runs only to name a deleted leaf)."""
    first = next((x for x in jax.tree_util.tree_leaves(state) if isinstance(x, jax.Array)), None)
    if first is None or not first.is_deleted():
        return
    where = _deleted_leaf(state)
    if where is not None:
        raise ValueError(
            f"The state passed to trainer.{method} was already used by an earlier train() or "
            f"train_step() call, which donates its input state's buffers to the step "
            f"(state.{where} has been deleted): continue from the state that call returned, `info.state` "
            "(or trainer.initial_state(...) again to start over)"
        )


def describe_batch_axes(batch: Any) -> str:
    """`(examples=32, point=2), (examples=32)` for the NamedArrays of a batch, shapes for
    plain arrays (at most four leaves)."""
    parts = []
    for leaf in jax.tree_util.tree_leaves(batch, is_leaf=hax.is_named_array):
        if hax.is_named_array(leaf):
            parts.append("(" + ", ".join(f"{a.name}={a.size}" for a in leaf.axes) + ")")
        elif hasattr(leaf, "shape"):
            parts.append(f"shape {tuple(leaf.shape)}")
    shown = ", ".join(parts[:4]) + (", ..." if len(parts) > 4 else "")
    return shown or "no arrays"


def batch_size_of(batch: Any, batch_axis: str) -> int | None:
    """The size of `batch_axis` in `batch`: that axis of its NamedArrays (their leading
    dimension for a batch of plain arrays only). None when no leaf has it, or when leaves
    disagree (-1)."""
    leaves = jax.tree_util.tree_leaves(batch, is_leaf=hax.is_named_array)
    named = [leaf for leaf in leaves if hax.is_named_array(leaf)]
    if named:
        sizes = {axis.size for leaf in named for axis in leaf.axes if axis.name == batch_axis}
    else:
        sizes = {leaf.shape[0] for leaf in leaves if getattr(leaf, "ndim", 0) >= 1}
    if not sizes:
        return None
    return sizes.pop() if len(sizes) == 1 else -1


def has_array_leaves(tree: Any) -> bool:
    """Whether `tree` holds any array (concrete, numpy or a `jax.ShapeDtypeStruct`)."""
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=hax.is_named_array)
    kinds = (jax.Array, jax.ShapeDtypeStruct, np.ndarray, hax.NamedArray)
    return any(isinstance(leaf, kinds) for leaf in leaves)


def check_model_arguments(model: Any, model_init: Any, method: str) -> None:
    if (model is None) == (model_init is None):
        raise ValueError(
            f"{method} needs exactly one of `model` (the model itself) or `model_init` (a "
            "zero-argument function building it)"
        )
    if (
        model_init is not None
        and isinstance(model_init, eqx.Module)
        and has_array_leaves(model_init)
    ):  # a built model is callable too (its __call__), but calling it needs inputs
        raise TypeError(
            f"{method}(model_init=...) got a built model ({type_name(model_init)}): pass it as "
            f"model=..., or model_init=lambda: <build it> to have the trainer build it"
        )
    if model_init is not None and not callable(model_init):
        raise TypeError(
            f"{method}(model_init=...) must be a zero-argument function building the model, "
            f"got {type_name(model_init)}; pass a built model as model=... instead"
        )
    if model is not None and not has_array_leaves(model):
        name = getattr(model, "__qualname__", None) or type_name(model)
        hint = (
            f" ({name} is a function: pass model_init=lambda: {name}(...) to have the "
            "trainer build it, or model=<the built model>)"
            if callable(model) and not isinstance(model, eqx.Module)
            else ""
        )
        raise ValueError(
            f"{method}(model=...) got {name}, which has no array leaves: there is nothing to "
            f"train{hint}"
        )
