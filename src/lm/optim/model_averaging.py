"""Model averaging (`trainer.model_averaging`): an averaged copy of the weights for
evaluation and export.

`ModelAveragingConfig.create(model)` gives a `ModelAveraging`, an `eqx.Module` the trainer
keeps in `TrainerState.model_averaging` (so it is checkpointed with the state). After every
optimizer step the trainer calls `averaging = averaging.update(new_model, step)` (pure and
jittable, `step` may be traced); `averaging.model_params` is the averaged model.

Only floating-point array leaves are averaged; other leaves follow the newest model.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import draccus
import equinox as eqx
import jax
import jax.numpy as jnp

from lm.config import invalid

M = TypeVar("M")


def _blend(old: M, new: M, weight_new: jax.Array) -> M:
    """`(1 - w) * old + w * new` on floating-point leaves; other leaves from `new`."""

    def leaf(o, n):
        if eqx.is_inexact_array(n):
            w = jnp.asarray(weight_new, jnp.float32)
            return ((1.0 - w) * o.astype(jnp.float32) + w * n.astype(jnp.float32)).astype(n.dtype)
        return n

    return jax.tree_util.tree_map(leaf, old, new)


class ModelAveraging(eqx.Module, Generic[M]):
    """An average of the models seen so far."""

    @abc.abstractmethod
    def update(self, new_model: M, step: jax.Array | int) -> ModelAveraging[M]:
        """The average after also seeing `new_model`, the model after step `step`."""

    @property
    @abc.abstractmethod
    def model_params(self) -> M:
        """The averaged model."""


class EmaModelAveraging(ModelAveraging[M]):
    """Exponential moving average: `avg <- beta * avg + (1 - beta) * model`, starting from
    the model it was created with."""

    model: M
    beta: float = eqx.field(static=True)

    def update(self, new_model: M, step: jax.Array | int) -> EmaModelAveraging[M]:
        del step
        return dataclasses.replace(self, model=_blend(self.model, new_model, 1.0 - self.beta))

    @property
    def model_params(self) -> M:
        return self.model


class EmaDecaySqrtModelAveraging(ModelAveraging[M]):
    """EMA until `switch_step`, then the new models' weight decays like `1 - sqrt(x)`.

    Each model `t` gets a raw weight `a_t = (1 - beta) * s(t)`, where `s(t) = 1` before
    `switch_step` and `s(t) = 1 - sqrt(clip((t - switch_step) / decay_steps, 0, 1))` after.
    The average is the bias-corrected EMA with these weights:
    `tot_weight <- (1 - a_t) * tot_weight + a_t`,
    `avg <- avg + (a_t / tot_weight) * (model - avg)`,
    so the first update replaces the starting model, the average is a plain EMA before the
    switch, and it freezes once `decay_steps` have passed after the switch (a_t = 0).
    """

    model: M
    tot_weight: jax.Array
    beta: float = eqx.field(static=True)
    switch_step: int = eqx.field(static=True)
    decay_steps: int = eqx.field(static=True)

    def raw_weight(self, step: jax.Array | int) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        frac = jnp.clip((step - self.switch_step) / self.decay_steps, 0.0, 1.0)
        s = jnp.where(step < self.switch_step, 1.0, 1.0 - jnp.sqrt(frac))
        return (1.0 - self.beta) * s

    def update(self, new_model: M, step: jax.Array | int) -> EmaDecaySqrtModelAveraging[M]:
        a = self.raw_weight(step)
        tot = (1.0 - a) * self.tot_weight + a
        alpha = jnp.where(tot > 0, a / jnp.where(tot > 0, tot, 1.0), 0.0)
        return dataclasses.replace(self, model=_blend(self.model, new_model, alpha), tot_weight=tot)

    @property
    def model_params(self) -> M:
        return self.model


@dataclass(frozen=True)
class ModelAveragingConfig(draccus.ChoiceRegistry, abc.ABC):
    """How to average weights: `type: ema` (default) or `type: ema_decay_sqrt`."""

    @classmethod
    def default_choice_name(cls) -> str | None:
        return "ema"

    @abc.abstractmethod
    def create(self, model: Any) -> ModelAveraging:
        """Start averaging from `model` (usually the trainable part of the initial model)."""


def _check_beta(beta: float) -> None:
    if not 0.0 <= beta < 1.0:
        raise invalid("beta", beta, "a number in [0, 1)")


@ModelAveragingConfig.register_subclass("ema")
@dataclass(frozen=True)
class EmaModelAveragingConfig(ModelAveragingConfig):
    """Classic EMA of the weights."""

    beta: float = 0.999
    """Weight of the old average; the new model gets 1 - beta."""

    def __post_init__(self):
        _check_beta(self.beta)

    def create(self, model: Any) -> EmaModelAveraging:
        return EmaModelAveraging(model=model, beta=self.beta)


@ModelAveragingConfig.register_subclass("ema_decay_sqrt")
@dataclass(frozen=True)
class EmaDecaySqrtConfig(ModelAveragingConfig):
    """EMA until `switch_step`, then the new-model weight decays with `1 - sqrt(x)` over
    `decay_steps` (see `EmaDecaySqrtModelAveraging`)."""

    beta: float = 0.999
    """EMA coefficient: new models get weight (1 - beta), times the decay after the switch."""
    switch_step: int = 100_000
    """Step at which the decay starts."""
    decay_steps: int = 100_000
    """Steps over which the new-model weight falls to 0 (the average then freezes)."""

    def __post_init__(self):
        _check_beta(self.beta)
        if isinstance(self.switch_step, bool) or self.switch_step < 0:
            raise invalid("switch_step", self.switch_step, "a step >= 0")
        if isinstance(self.decay_steps, bool) or self.decay_steps < 1:
            raise invalid("decay_steps", self.decay_steps, "a number of steps >= 1")

    def create(self, model: Any) -> EmaDecaySqrtModelAveraging:
        return EmaDecaySqrtModelAveraging(
            model=model,
            tot_weight=jnp.zeros((), jnp.float32),
            beta=self.beta,
            switch_step=self.switch_step,
            decay_steps=self.decay_steps,
        )
