"""Update clipping: per-block RMS clipping and clipping against the historical update norm.

Both are optax transformations that log what they did with `lm.tracker.log` from inside
the (jitted) update; the trainer collects those metrics with `lm.tracker.capture_metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import haliax as hax
import jax
import jax.numpy as jnp
import optax

import lm.tracker
from lm.optim.masks import ParamInfo, map_params
from lm.optim.skip_step import check_rolling_statistics


def log_global_norm(name: str) -> optax.GradientTransformationExtraArgs:
    """Pass updates through unchanged, logging their global L2 norm as `name`."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        lm.tracker.log({name: optax.tree.norm(updates)})
        return updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --- update RMS clipping (OPT-10) ----------------------------------------------------------


def block_rms(u, info: ParamInfo):
    """RMS of one parameter's update, per layer for weights of `hnn.Stacked` modules.

    A NamedArray's layer axes are the `Block` axes of the enclosing Stacked modules; a plain
    array inside a Stacked carries them as its leading dimensions. The result broadcasts
    against `u`.
    """
    if hax.is_named_array(u):
        reduce_axes = tuple(a for a in u.axes if a.name not in info.layer_axes)
        if not reduce_axes:
            return hax.abs(u)
        return hax.sqrt(hax.mean(u * u, axis=reduce_axes))
    num_layer = min(len(info.layer_axes), u.ndim)
    reduce = tuple(range(num_layer, u.ndim))
    if not reduce:
        return jnp.abs(u)
    return jnp.sqrt(jnp.mean(u * u, axis=reduce, keepdims=True))


def clip_by_block_rms(threshold: float) -> optax.GradientTransformationExtraArgs:
    """Scale each parameter's update (per layer for scanned layers) to RMS <= `threshold`.

    `u <- u / max(1, rms(u) / threshold)`, like `optax.clip_by_block_rms` but aware of
    `hnn.Stacked` layers, so one layer's large update does not shrink the others.
    """

    def _clip(u, info):
        rms = block_rms(u, info)
        if hax.is_named_array(u):
            return u / hax.maximum(1.0, rms / threshold)
        return u / jnp.maximum(1.0, rms / threshold)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return map_params(_clip, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --- clipping against the history of update norms (OPT-11) ---------------------------------


class ClipUpdateNormState(NamedTuple):
    update_norms: jax.Array
    """Circular buffer of the last `rolling_interval_length` unclipped update norms."""
    valid: jax.Array
    """Which buffer entries hold a value."""
    index: jax.Array
    """Where the next norm goes."""
    count: jax.Array
    """How many entries are valid (saturates at the buffer length)."""


@dataclass(frozen=True)
class ClipUpdateNormConfig:
    """Clip the update's global norm to `mean + sigma_factor * std` of recent update norms.

    A gentler cousin of `skip_bad_steps`: the step is taken, only shortened. No clipping
    happens until `max(2, rolling_interval_length // 2)` norms are in the history. The
    history stores unclipped norms, so clipping cannot ratchet the threshold down.
    """

    rolling_interval_length: int = 128
    """How many recent update norms to keep."""
    sigma_factor: float = 3.0
    """Threshold in standard deviations above the mean."""

    def __post_init__(self):
        check_rolling_statistics(self.rolling_interval_length, self.sigma_factor)

    def build(self) -> optax.GradientTransformationExtraArgs:
        return clip_update_by_historical_norm(self.rolling_interval_length, self.sigma_factor)


def clip_update_by_historical_norm(
    rolling_interval_length: int = 128, sigma_factor: float = 3.0
) -> optax.GradientTransformationExtraArgs:
    """See `ClipUpdateNormConfig`. Logs `optim/clip_update/{did_clip, pre_clip_norm,
    update_norm_threshold, post_clip_norm}`."""
    min_history = max(2, rolling_interval_length // 2)

    def init_fn(params):
        del params
        return ClipUpdateNormState(
            update_norms=jnp.zeros((rolling_interval_length,), jnp.float32),
            valid=jnp.zeros((rolling_interval_length,), jnp.bool_),
            index=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state: ClipUpdateNormState, params=None, **extra_args):
        del params, extra_args
        norm = optax.tree.norm(updates).astype(jnp.float32)
        n = jnp.maximum(state.count, 1)
        mean = jnp.sum(jnp.where(state.valid, state.update_norms, 0.0)) / n
        var = jnp.sum(jnp.where(state.valid, (state.update_norms - mean) ** 2, 0.0)) / n
        threshold = mean + sigma_factor * jnp.maximum(jnp.sqrt(var), 1e-6)
        active = state.count >= min_history
        max_norm = jnp.where(active, threshold, jnp.inf)
        scale = jnp.where(norm > max_norm, max_norm / jnp.maximum(norm, 1e-6), 1.0)
        clipped = jax.tree_util.tree_map(lambda u: (u * scale).astype(u.dtype), updates)
        lm.tracker.log(
            {
                "optim/clip_update/did_clip": (scale < 1.0).astype(jnp.float32),
                "optim/clip_update/pre_clip_norm": norm,
                "optim/clip_update/update_norm_threshold": threshold,
                "optim/clip_update/post_clip_norm": jnp.minimum(norm, max_norm),
            }
        )
        finite = jnp.isfinite(norm)
        new_state = ClipUpdateNormState(
            update_norms=jnp.where(
                finite, state.update_norms.at[state.index].set(norm), state.update_norms
            ),
            valid=jnp.where(finite, state.valid.at[state.index].set(True), state.valid),
            index=jnp.where(finite, (state.index + 1) % rolling_interval_length, state.index),
            count=jnp.where(
                finite, jnp.minimum(state.count + 1, rolling_interval_length), state.count
            ),
        )
        return clipped, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
