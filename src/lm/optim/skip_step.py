"""Skipping bad steps (OPT-12): leave the model alone when a step's loss or gradient norm
is far above its recent history.

The decision is a pure function of the history and the current step (`skip_decision`);
`SkipStepConfig.wrap` turns it into an optax wrapper. A skipped step returns zero updates
and keeps the inner optimizer state as it was, so moments, counters and clipping histories
do not see the bad step. The history does record it (when finite), as in OLMo-core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import lm.tracker
from lm.config import invalid


class SkipStepState(NamedTuple):
    inner_opt_state: Any
    losses: jax.Array
    """Circular buffer of recent losses."""
    grad_norms: jax.Array
    """Circular buffer of recent gradient norms (of the updates the wrapper receives)."""
    index: jax.Array
    count: jax.Array
    """Valid entries in the buffers (saturates at the buffer length)."""


class SkipDecision(NamedTuple):
    skip: jax.Array
    loss_threshold: jax.Array
    grad_norm_threshold: jax.Array


def _mean_std(values: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    valid = jnp.arange(values.shape[0]) < count
    n = jnp.maximum(count, 1)
    mean = jnp.sum(jnp.where(valid, values, 0.0)) / n
    var = jnp.sum(jnp.where(valid, (values - mean) ** 2, 0.0)) / n
    return mean, jnp.sqrt(var)


def skip_decision(
    state: SkipStepState, loss: jax.Array, grad_norm: jax.Array, *, min_history: int, sigma: float
) -> SkipDecision:
    """Skip when the loss or grad norm exceeds mean + sigma * std of the history.

    With fewer than `min_history` entries in the history only non-finite steps are skipped.
    """
    loss_mean, loss_std = _mean_std(state.losses, state.count)
    norm_mean, norm_std = _mean_std(state.grad_norms, state.count)
    loss_threshold = loss_mean + sigma * jnp.maximum(loss_std, 1e-6)
    norm_threshold = norm_mean + sigma * jnp.maximum(norm_std, 1e-6)
    enough = state.count >= min_history
    too_big = (loss > loss_threshold) | (grad_norm > norm_threshold)
    not_finite = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    skip = not_finite | (enough & too_big)
    return SkipDecision(skip, loss_threshold, norm_threshold)


def check_rolling_statistics(rolling_interval_length: int, sigma_factor: float) -> None:
    """The fields of a rule over recent history (`skip_bad_steps`, `clip_update_norm`): a
    history of at least 2 entries and a positive threshold; `FieldError`s naming them."""
    if isinstance(rolling_interval_length, bool) or rolling_interval_length < 2:
        raise invalid("rolling_interval_length", rolling_interval_length, "an integer >= 2")
    if not sigma_factor > 0:
        raise invalid("sigma_factor", sigma_factor, "a number > 0")


@dataclass(frozen=True)
class SkipStepConfig:
    """Skip a step whose loss or gradient norm is far above the recent history.

    "Far above" is more than `sigma_factor` standard deviations over the mean of the last
    `rolling_interval_length` steps. Until `max(2, rolling_interval_length // 2)` steps are in
    the history, every finite step is taken. Non-finite steps are always skipped.
    """

    rolling_interval_length: int = 128
    """How many recent steps the statistics cover."""
    sigma_factor: float = 6.0
    """Threshold in standard deviations above the mean."""

    def __post_init__(self):
        check_rolling_statistics(self.rolling_interval_length, self.sigma_factor)

    @staticmethod
    def from_bool_int_or_config(
        config: bool | int | SkipStepConfig | None,
    ) -> SkipStepConfig | None:
        """True -> defaults, False/None -> off, an int >= 2 -> that history length.

        YAML `true`/`false` reach us as 1/0 (draccus decodes the `bool | int` union as an
        int), so 1 means the defaults and 0 means off: neither is a usable history length.
        Anything else raises a `FieldError` for `skip_bad_steps`.
        """
        if config is None or config is False or config == 0:
            return None
        if config is True or config == 1:
            return SkipStepConfig()
        if isinstance(config, SkipStepConfig):
            return config
        if isinstance(config, int) and config >= 2:
            return SkipStepConfig(rolling_interval_length=config)
        raise invalid(
            "skip_bad_steps",
            config,
            "a bool, an int >= 2 (the history length, rolling_interval_length) or a mapping "
            "with rolling_interval_length / sigma_factor",
        )

    def wrap(self, inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
        """`inner`, but skipping bad steps. `update` must be called with `loss=`.

        Logs `optim/skip_step/{skipped, loss_threshold, grad_norm_threshold}`.
        """
        length = self.rolling_interval_length
        min_history = max(2, length // 2)
        sigma = self.sigma_factor
        inner = optax.with_extra_args_support(inner)

        def init_fn(params):
            return SkipStepState(
                inner_opt_state=inner.init(params),
                losses=jnp.zeros((length,), jnp.float32),
                grad_norms=jnp.zeros((length,), jnp.float32),
                index=jnp.zeros((), jnp.int32),
                count=jnp.zeros((), jnp.int32),
            )

        def update_fn(updates, state: SkipStepState, params=None, *, loss=None, **extra_args):
            if loss is None:
                raise ValueError(
                    "Loss must be provided as a keyword argument to the update function when "
                    "skip_bad_steps is enabled: call update(grads, opt_state, params, loss=loss)"
                )
            loss = jnp.asarray(loss, jnp.float32)
            grad_norm = optax.tree.norm(updates).astype(jnp.float32)
            decision = skip_decision(state, loss, grad_norm, min_history=min_history, sigma=sigma)
            # Both branches are computed and selected with `where` (not lax.cond): the inner
            # update may log metrics, which must not be traced inside a cond branch.
            new_updates, new_inner = inner.update(
                updates, state.inner_opt_state, params, loss=loss, **extra_args
            )
            skip = decision.skip
            out_updates = jax.tree_util.tree_map(
                lambda u: jnp.where(skip, jnp.zeros_like(u), u), new_updates
            )
            out_inner = jax.tree_util.tree_map(
                lambda old, new: jnp.where(skip, old, new), state.inner_opt_state, new_inner
            )
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            lm.tracker.log(
                {
                    "optim/skip_step/skipped": skip.astype(jnp.float32),
                    "optim/skip_step/loss_threshold": decision.loss_threshold,
                    "optim/skip_step/grad_norm_threshold": decision.grad_norm_threshold,
                }
            )
            new_state = SkipStepState(
                inner_opt_state=out_inner,
                losses=jnp.where(finite, state.losses.at[state.index].set(loss), state.losses),
                grad_norms=jnp.where(
                    finite, state.grad_norms.at[state.index].set(grad_norm), state.grad_norms
                ),
                index=jnp.where(finite, (state.index + 1) % length, state.index),
                count=jnp.where(finite, jnp.minimum(state.count + 1, length), state.count),
            )
            return out_updates, new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
