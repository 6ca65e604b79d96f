"""SGD with (Nesterov) momentum (`type: sgd`)."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from lm.config import FieldError
from lm.optim.adam import common_problems, decayed_weights, unit_interval_problems
from lm.optim.config import OptimizerConfig
from lm.optim.skip_step import SkipStepConfig


@OptimizerConfig.register_subclass("sgd")
@dataclass(frozen=True)
class SgdConfig(OptimizerConfig):
    """SGD: `b <- momentum * b + g`; the step is `b` (or `g + momentum * b` with Nesterov).

    Weight decay is decoupled (added after momentum, multiplied by the LR), as for the other
    optimizers. Chain: clip_by_global_norm -> trace(momentum) -> add_decayed_weights (masked)
    -> scale(-lr).
    """

    learning_rate: float = 0.1
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay (multiplied by the scheduled LR)."""
    momentum: float = 0.9
    """Momentum coefficient; 0 is plain SGD."""
    nesterov: bool = False
    """Nesterov momentum."""
    max_grad_norm: float | None = 1.0
    """Clip gradients to this global L2 norm; None or 0 disables it."""
    skip_bad_steps: SkipStepConfig | int | bool = False
    """As for adam: skip steps whose loss or grad norm is far above the recent history."""

    def _field_problems(self) -> list[FieldError]:
        problems = super()._field_problems() + unit_interval_problems(self, "momentum")
        if self.nesterov and self.momentum == 0:
            problems.append(FieldError("nesterov", f"needs momentum > 0 (got {self.momentum!r})"))
        return problems + common_problems(self)

    def build(self, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
        def make_chain(learning_rate):
            parts: list[optax.GradientTransformation] = []
            if self.max_grad_norm:
                parts.append(optax.clip_by_global_norm(self.max_grad_norm))
            if self.momentum > 0:
                parts.append(optax.trace(decay=self.momentum, nesterov=self.nesterov))
            wd = decayed_weights(self, learning_rate)
            if wd is not None:
                parts.append(wd)
            parts.append(optax.scale(-learning_rate))
            return optax.chain(*parts)

        return self._finalize(num_train_steps, make_chain, self.skip_bad_steps)
