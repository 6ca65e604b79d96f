"""Lion (`type: lion`): sign of an interpolated momentum (Chen et al. 2023, arXiv:2302.06675)."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from lm.config import FieldError
from lm.optim.adam import common_problems, decayed_weights, unit_interval_problems
from lm.optim.config import OptimizerConfig
from lm.optim.skip_step import SkipStepConfig


@OptimizerConfig.register_subclass("lion")
@dataclass(frozen=True)
class LionConfig(OptimizerConfig):
    """Lion: `u = sign(beta1 * m + (1 - beta1) * g)`, then `m <- beta2 * m + (1 - beta2) * g`.

    Every coordinate moves by exactly the LR, so Lion wants a 3-10x smaller learning rate and
    a 3-10x larger weight decay than AdamW. Chain: clip_by_global_norm -> scale_by_lion ->
    add_decayed_weights (masked) -> scale(-lr).
    """

    learning_rate: float = 1e-4
    """Peak learning rate (smaller than Adam's: Lion's steps have unit size per coordinate)."""
    weight_decay: float = 1.0
    """Decoupled weight decay (larger than Adam's, since it is multiplied by the small LR)."""
    beta1: float = 0.9
    """Interpolation between momentum and gradient for the update direction."""
    beta2: float = 0.99
    """Decay of the momentum."""
    max_grad_norm: float | None = 1.0
    """Clip gradients to this global L2 norm; None or 0 disables it."""
    skip_bad_steps: SkipStepConfig | int | bool = False
    """As for adam: skip steps whose loss or grad norm is far above the recent history."""

    def _field_problems(self) -> list[FieldError]:
        return (
            super()._field_problems()
            + unit_interval_problems(self, "beta1", "beta2")
            + common_problems(self)
        )

    def build(self, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
        def make_chain(learning_rate):
            parts: list[optax.GradientTransformation] = []
            if self.max_grad_norm:
                parts.append(optax.clip_by_global_norm(self.max_grad_norm))
            parts.append(optax.scale_by_lion(self.beta1, self.beta2))
            wd = decayed_weights(self, learning_rate)
            if wd is not None:
                parts.append(wd)
            parts.append(optax.scale(-learning_rate))
            return optax.chain(*parts)

        return self._finalize(num_train_steps, make_chain, self.skip_bad_steps)
