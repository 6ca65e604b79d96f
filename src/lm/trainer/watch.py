"""`watch`: norms (and optionally histograms) of gradients, parameters, updates and
optimizer state, computed inside the jitted step every `interval` steps (TRN-15)."""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp

import lm.tracker
from lm.config import FieldError, invalid, raise_problems
from lm.config.errors import is_int
from lm.trainer.hooks import InsideStepInfo, JitCallback
from lm.trainer.state import StepInfo, TrainerState

WATCH_TARGETS = ("grads", "params", "opt_state", "updates")
# The metric prefix of each target; gradients log as `grad/...`, as in Levanter.
_PREFIXES = {"grads": "grad", "params": "params", "opt_state": "opt_state", "updates": "updates"}


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    watch_targets: tuple[str, ...] = ("grads", "params")
    """Which trees to watch: any of grads, params, opt_state, updates."""
    include_norms: bool = True
    """Log the global L2 norm of each target (`<prefix>/norm/total`; the prefix is the
    target's name, except `grad` for grads: `grad/norm/total`)."""
    include_per_parameter_norms: bool = True
    """Log the L2 norm of each parameter (`<prefix>/norm/<path>`)."""
    include_histograms: bool = False
    """Log a histogram of each parameter's values (costly: device -> host copy)."""
    split_scan_layers: bool = True
    """For layers stacked with `Stacked`, report each layer separately (`.../layer_<i>`)."""
    interval: int = 10
    """Every how many steps. 0 disables watching."""

    def __post_init__(self):
        problems: list[FieldError] = []
        bad = [t for t in self.watch_targets if t not in WATCH_TARGETS]
        if bad:
            problems.append(
                FieldError(
                    "watch_targets", f"unknown target(s) {bad}; allowed: {list(WATCH_TARGETS)}"
                )
            )
        if not (is_int(self.interval) and self.interval >= 0):
            problems.append(
                invalid("interval", self.interval, "a number of steps >= 0 (0 disables watching)")
            )
        raise_problems(problems)

    @property
    def is_enabled(self) -> bool:
        return (
            self.interval > 0
            and bool(self.watch_targets)
            and (self.include_norms or self.include_per_parameter_norms or self.include_histograms)
        )

    def build(self) -> WatchCallback:
        return WatchCallback(self)


def _path_name(path) -> str:
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.GetAttrKey):
            parts.append(p.name)
        elif isinstance(p, jax.tree_util.DictKey):
            parts.append(str(p.key))
        elif isinstance(p, jax.tree_util.SequenceKey):
            parts.append(str(p.idx))
        else:
            parts.append(str(p))
    return "/".join(parts)


def _leaves_with_names(tree) -> list[tuple[str, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=hax.is_named_array)[0]
    out = []
    for path, leaf in flat:
        # a frozen parameter (`is_trainable`) is a NamedArray holding None in the trainable
        # model, the gradients and the updates: nothing to measure
        array = leaf.array if hax.is_named_array(leaf) else leaf
        if eqx.is_inexact_array(array):
            out.append((_path_name(path), leaf))
    return out


def _layer_axis(leaf) -> str | None:
    if hax.is_named_array(leaf):
        for axis in leaf.axes:
            if axis.name in ("layers", "layer"):
                return axis.name
    return None


class WatchCallback(JitCallback[TrainerState, dict[str, Any]]):
    def __init__(self, config: WatchConfig):
        self.config = config

    def inside_step(self, state: TrainerState, inside_info: InsideStepInfo) -> dict[str, Any]:
        """Each leaf's sum of squares is taken once (per layer for stacked layers, a vector);
        the total norm is the root of their sum. Layer vectors are split on the host."""
        trees = {
            "grads": inside_info.grads,
            "params": state.trainable_model,
            "updates": inside_info.updates,
            "opt_state": state.opt_state,
        }
        out: dict[str, Any] = {}
        for target in self.config.watch_targets:
            prefix = _PREFIXES[target]
            total = jnp.float32(0)
            for name, leaf in _leaves_with_names(trees[target]):
                array = leaf.array if hax.is_named_array(leaf) else leaf
                squares = jnp.square(array.astype(jnp.float32))
                layer_axis = _layer_axis(leaf) if self.config.split_scan_layers else None
                if layer_axis is not None and self.config.include_per_parameter_norms:
                    layer = leaf.axis_indices(layer_axis)
                    per_layer = jnp.sum(
                        squares, axis=tuple(i for i in range(array.ndim) if i != layer)
                    )
                    total = total + jnp.sum(per_layer)
                    out[f"{prefix}/norm/{name}"] = jnp.sqrt(per_layer)  # one entry per layer
                else:
                    sq = jnp.sum(squares)
                    total = total + sq
                    if self.config.include_per_parameter_norms:
                        out[f"{prefix}/norm/{name}"] = jnp.sqrt(sq)
                if self.config.include_histograms:
                    out[f"{prefix}/hist/{name}"] = array
            if self.config.include_norms:
                out[f"{prefix}/norm/total"] = jnp.sqrt(total)
        return out

    def on_step(self, step_info: StepInfo, cb_info: dict[str, Any]) -> None:
        scalars = {}
        for key, value in jax.device_get(
            {k: v for k, v in cb_info.items() if "/hist/" not in k}
        ).items():
            if getattr(value, "ndim", 0) == 1:  # a stacked parameter's norm per layer
                scalars.update({f"{key}/layer_{i}": v for i, v in enumerate(value)})
            else:
                scalars[key] = value
        hists = {k: lm.tracker.Histogram.from_array(v) for k, v in cb_info.items() if "/hist/" in k}
        lm.tracker.log({**scalars, **hists}, step=step_info.step)
