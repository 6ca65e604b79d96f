"""Training state and the record of one completed step.

`TrainerState` is an Equinox module (a pytree) holding everything a step reads and
writes; it is what gets checkpointed. `StepInfo` is what hooks receive after a step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jmp
import optax
from jaxtyping import PRNGKeyArray, PyTree

M = TypeVar("M", bound=PyTree)
S = TypeVar("S", bound="TrainerState")

# A filter spec: a bool, a callable leaf -> bool, or a pytree of those matching the model.
FilterTree = Any


class TrainerState(eqx.Module, Generic[M]):
    """Everything that changes during training.

    Attributes:
        step: number of optimizer steps taken so far (int32 scalar array).
        model: the model, parameters in the policy's param dtype.
        opt_state: optimizer state for the trainable part of the model only.
        training_key: PRNG key, split once per step.
        model_averaging: an averaged copy of the model (EMA), or None.
        is_trainable: filter spec marking trainable leaves; the rest get no gradient,
            no optimizer state and are not checkpointed.
        mp: the mixed-precision policy.

    Subclass it to carry more state (give the new fields defaults, or `kw_only=True`, as they
    follow fields with defaults) and build it in `Trainer._initialize_state_from_scratch`.
    The train step updates its fields with `dataclasses.replace`, so extra fields pass through
    each step unchanged, and are checkpointed and restored with the rest.
    """

    step: jax.Array
    model: M
    opt_state: optax.OptState
    training_key: PRNGKeyArray
    model_averaging: Any = None
    is_trainable: FilterTree = eqx.field(static=True, default=True)
    mp: jmp.Policy = eqx.field(static=True, default=None)

    @classmethod
    def from_state(cls: type[S], state: TrainerState, **extra: Any) -> S:
        """A `cls` (a `TrainerState` subclass) holding `state`'s fields plus the subclass's
        own fields given in `extra`; for `Trainer._initialize_state_from_scratch` overrides."""
        fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
        return cls(**fields, **extra)

    @property
    def int_step(self) -> int:
        """The step as a Python int (a host sync)."""
        return int(self.step)

    @property
    def trainable_model(self) -> M:
        return trainables_only(self.model, self.is_trainable)

    @property
    def eval_model(self) -> M:
        """The model evaluation and export use: the averaged one when averaging is on."""
        if self.model_averaging is not None:
            averaged = self.model_averaging.model_params
            return eqx.combine(averaged, non_trainables_only(self.model, self.is_trainable))
        return self.model


def trainables_only(model: M, is_trainable: FilterTree) -> M:
    """The trainable leaves of `model`; other leaves become None."""
    return eqx.filter(model, _full_filter(model, is_trainable))


def non_trainables_only(model: M, is_trainable: FilterTree) -> M:
    return eqx.filter(model, _full_filter(model, is_trainable), inverse=True)


def _is_inexact(leaf: Any) -> bool:
    """Float arrays, concrete or abstract (`jax.ShapeDtypeStruct` from `eval_shape`)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jnp.issubdtype(leaf.dtype, jnp.inexact)
    return eqx.is_inexact_array(leaf)


def _is_filter_leaf(x: Any) -> bool:
    # Equinox modules are callable too; only plain functions are filter functions.
    return isinstance(x, bool) or (callable(x) and not isinstance(x, eqx.Module))


def _full_filter(model: Any, is_trainable: FilterTree) -> PyTree[bool]:
    """Expand a filter spec into a bool per array leaf (non-arrays are never trainable).

    `is_trainable` is True/False, a function `leaf -> bool`, or a pytree prefix of the model
    holding those (e.g. `MyModel(encoder=False, head=True)`)."""
    if is_trainable is True:
        return jax.tree_util.tree_map(_is_inexact, model)
    if is_trainable is False:
        return jax.tree_util.tree_map(lambda _: False, model)

    def expand(spec, sub):
        return jax.tree_util.tree_map(
            lambda leaf: bool(spec(leaf) if callable(spec) else spec) and _is_inexact(leaf), sub
        )

    try:
        return jax.tree_util.tree_map(expand, is_trainable, model, is_leaf=_is_filter_leaf)
    except ValueError as e:  # jax's pytree-structure error names key paths only
        raise ValueError(
            f"is_trainable must be True/False, a function leaf -> bool, or a prefix of the "
            f"model's structure holding those (e.g. {type(model).__name__}(<field>=False, ...), "
            "a copy of the model with each part replaced by a bool: "
            f"eqx.tree_at or jax.tree_util.tree_map(lambda _: True, model)); got a "
            f"{type(is_trainable).__name__} that does not match the {type(model).__name__} "
            f"({' '.join(str(e).split())[:300]})"
        ) from None


def has_trainable(model: Any, is_trainable: FilterTree) -> bool:
    """Whether `is_trainable` selects any float array of `model` (concrete or shapes)."""
    return any(jax.tree_util.tree_leaves(_full_filter(model, is_trainable)))


def saveable_state(state: TrainerState) -> TrainerState:
    """The part of `state` that is checkpointed: non-trainable parameters are dropped."""
    return dataclasses.replace(state, model=trainables_only(state.model, state.is_trainable))


def init_step() -> jax.Array:
    return jnp.zeros((), dtype=jnp.int32)


@dataclasses.dataclass(frozen=True)
class StepInfo(Generic[S]):
    """What hooks see after a step.

    `step` is the step just completed (0-based); `state.step` is the number of steps taken,
    i.e. `step + 1`.
    """

    state: S
    loss: float | jax.Array
    step_duration: float
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The trainer passes the step it already knows, so hooks don't force a device sync.
    completed_step: int | None = None

    @property
    def step(self) -> int:
        if self.completed_step is not None:
            return self.completed_step
        return int(self.state.step) - 1

    @property
    def next_step(self) -> int:
        return self.step + 1

    @property
    def model(self):
        return self.state.model

    @property
    def opt_state(self):
        return self.state.opt_state
