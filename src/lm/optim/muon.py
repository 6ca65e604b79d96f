"""Muon (`type: muon`): momentum orthogonalised by Newton-Schulz for matrix weights, AdamW
for everything else (Jordan et al. 2024; Liu et al. 2025, "Muon is scalable", for the
Kimi/Moonlight update scaling).

Which parameters get Muon, and what the matrix is, comes from named axes:

- Muon: the `weight` of every `hnn.Linear` whose path does not contain `lm_head`. The
  matrix is `Out x In`: the Linear's `Out` axes flattened into rows and its `In` axes
  flattened into columns. Every other axis of the weight, e.g. the `layers` axis that
  `hnn.Stacked` adds in front of scanned weights, is a batch axis: each layer (each index
  of the other axes) is orthogonalised on its own.
- AdamW: everything else: embeddings, the LM head, norms, biases, other arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import optax

from lm.config import FieldError, invalid
from lm.optim.adam import common_problems, decayed_weights, unit_interval_problems
from lm.optim.config import OptimizerConfig
from lm.optim.masks import ParamInfo, map_params
from lm.optim.skip_step import SkipStepConfig

# Quintic Newton-Schulz coefficients (Jordan et al.): push all singular values towards ~1
# in a few steps rather than converging exactly.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(x: jax.Array, steps: int = 5, eps: float = 1e-7) -> jax.Array:
    """Approximately orthogonalise a matrix `[m, n]` (`U V^T` of its SVD)."""
    assert x.ndim == 2, x.shape
    a, b, c = NS_COEFFICIENTS
    x = x / (jnp.linalg.norm(x) + eps)
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transpose else x


def _axis_names(spec: Any) -> list[str]:
    axes = spec if isinstance(spec, tuple | list) else (spec,)
    return [ax.name if isinstance(ax, hax.Axis) else str(ax) for ax in axes]


def is_muon_param(info: ParamInfo) -> bool:
    """The rule above: the weight of an `hnn.Linear` outside the LM head."""
    return (
        isinstance(info.owner, hnn.Linear)
        and info.class_path.split(".", 1)[-1] == "weight"
        and "lm_head" not in info.path
    )


def orthogonalize_linear_weight(
    w: hax.NamedArray,
    linear: hnn.Linear,
    *,
    steps: int,
    eps: float,
    kimi_scaling: bool,
) -> hax.NamedArray:
    """Newton-Schulz on the `Out x In` matrix of `w`, independently for every other axis."""
    out_names, in_names = _axis_names(linear.Out), _axis_names(linear.In)
    matrix = set(out_names) | set(in_names)
    missing = matrix - {a.name for a in w.axes}
    if missing:
        raise ValueError(
            f"Muon: weight with axes {[a.name for a in w.axes]} lacks the Linear's axes {sorted(missing)}"
        )
    batch_names = [a.name for a in w.axes if a.name not in matrix]
    x = w.rearrange(tuple(batch_names + out_names + in_names))
    rows = math.prod(x.axis_size(n) for n in out_names)
    cols = math.prod(x.axis_size(n) for n in in_names)
    flat = x.array.reshape(-1, rows, cols)
    ortho = jax.vmap(lambda m: newton_schulz(m, steps, eps))(flat)
    if kimi_scaling:
        # Matches AdamW's typical update RMS (~0.2), so AdamW learning rates carry over.
        scale = 0.2 * max(rows, cols) ** 0.5
    else:
        scale = max(1.0, rows / cols) ** 0.5
    out = hax.named((ortho * scale).reshape(x.array.shape).astype(w.dtype), x.axes)
    return out.rearrange(w.axes)


class ScaleByMuonState(NamedTuple):
    momentum_buffer: Any


def scale_by_muon(
    momentum: float, nesterov: bool, steps: int, eps: float, kimi_scaling: bool
) -> optax.GradientTransformation:
    """Momentum, then Newton-Schulz orthogonalisation of each Linear weight's matrix."""

    def init_fn(params):
        return ScaleByMuonState(jax.tree_util.tree_map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        buf = jax.tree_util.tree_map(lambda m, g: momentum * m + g, state.momentum_buffer, updates)
        if nesterov:
            direction = jax.tree_util.tree_map(lambda m, g: momentum * m + g, buf, updates)
        else:
            direction = buf

        def ortho(u, info: ParamInfo):
            if not (hax.is_named_array(u) and is_muon_param(info)):
                raise ValueError(
                    f"Muon got {info.path} ({info.class_path}), which is not a Linear weight"
                )
            return orthogonalize_linear_weight(
                u, info.owner, steps=steps, eps=eps, kimi_scaling=kimi_scaling
            )

        return map_params(ortho, direction), ScaleByMuonState(buf)

    return optax.GradientTransformation(init_fn, update_fn)


def muon_labels(params: Any) -> Any:
    """`"muon"` or `"adam"` for every array leaf of `params` (see the module docstring)."""
    return map_params(
        lambda x, info: "muon" if hax.is_named_array(x) and is_muon_param(info) else "adam",
        params,
        default="adam",
    )


@OptimizerConfig.register_subclass("muon")
@dataclass(frozen=True)
class MuonConfig(OptimizerConfig):
    """Muon for Linear weights, AdamW for the rest; both follow the same schedule shape.

    Muon chain: clip_by_global_norm -> momentum -> Newton-Schulz -> add_decayed_weights ->
    scale(-lr). AdamW chain: scale_by_adam -> add_decayed_weights -> scale(-lr * adam_lr /
    learning_rate). The weight-decay mask applies to both.
    """

    learning_rate: float = 0.02
    """Peak learning rate of the Muon part."""
    adam_lr: float = 6e-4
    """Peak learning rate of the AdamW part (scaled by the same schedule)."""
    momentum: float = 0.95
    """Momentum coefficient of the Muon part."""
    nesterov: bool = True
    """Nesterov momentum for the Muon part."""
    backend_steps: int = 5
    """Newton-Schulz iterations."""
    muon_epsilon: float = 1e-7
    """Added to the Frobenius norm before Newton-Schulz."""
    use_kimi_scaling: bool = False
    """Scale orthogonalised updates by 0.2 * sqrt(max(rows, cols)) (Moonlight) instead of
    sqrt(max(1, rows / cols)) (Jordan), so that AdamW-sized learning rates work."""
    beta1: float = 0.9
    """AdamW part: decay of the first moment."""
    beta2: float = 0.95
    """AdamW part: decay of the second moment."""
    epsilon: float = 1e-8
    """AdamW part: added to sqrt(v)."""
    max_grad_norm: float | None = 1.0
    """Clip gradients to this global L2 norm before both parts; None or 0 disables it."""
    skip_bad_steps: SkipStepConfig | int | bool = False
    """As for adam: skip steps whose loss or grad norm is far above the recent history."""

    def _field_problems(self) -> list[FieldError]:
        problems = super()._field_problems()
        if not (self.adam_lr > 0 and math.isfinite(self.adam_lr)):
            problems.append(invalid("adam_lr", self.adam_lr, "a finite number > 0"))
        for name in ("epsilon", "muon_epsilon"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                problems.append(invalid(name, value, "a finite number > 0"))
        problems += unit_interval_problems(self, "momentum", "beta1", "beta2")
        if isinstance(self.backend_steps, bool) or self.backend_steps < 1:
            problems.append(invalid("backend_steps", self.backend_steps, "an integer >= 1"))
        return problems + common_problems(self)

    def build(self, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
        def make_chain(learning_rate):
            adam_lr = learning_rate * (self.adam_lr / self.learning_rate)
            muon_parts = [
                scale_by_muon(
                    self.momentum,
                    self.nesterov,
                    self.backend_steps,
                    self.muon_epsilon,
                    self.use_kimi_scaling,
                )
            ]
            adam_parts = [optax.scale_by_adam(self.beta1, self.beta2, self.epsilon)]
            for parts, lr in ((muon_parts, learning_rate), (adam_parts, adam_lr)):
                wd = decayed_weights(self, lr)
                if wd is not None:
                    parts.append(wd)
                parts.append(optax.scale(-lr))
            split = optax.multi_transform(
                {"muon": optax.chain(*muon_parts), "adam": optax.chain(*adam_parts)},
                muon_labels,
            )
            if self.max_grad_norm:
                return optax.chain(optax.clip_by_global_norm(self.max_grad_norm), split)
            return split

        return self._finalize(num_train_steps, make_chain, self.skip_bad_steps)
