"""ADOPT (`type: adopt`): Adam that converges with any beta2 (Taniguchi et al. 2024,
arXiv:2411.02853)."""

from __future__ import annotations

from dataclasses import dataclass

import optax
import optax.contrib

from lm.config import FieldError, invalid
from lm.optim.adam import common_problems, decayed_weights, unit_interval_problems
from lm.optim.config import OptimizerConfig
from lm.optim.skip_step import SkipStepConfig


@OptimizerConfig.register_subclass("adopt")
@dataclass(frozen=True)
class AdoptConfig(OptimizerConfig):
    """ADOPT normalises the gradient by the *previous* second moment, then takes momentum.

    Step 0 only initialises `v = g^2` (the update is zero). Afterwards
    `m <- beta1 m + (1 - beta1) clip(g / max(sqrt(v), eps), t^0.25)`, `u = m`,
    `v <- beta2 v + (1 - beta2) g^2`. Chain: clip_by_global_norm -> scale_by_adopt ->
    add_decayed_weights (masked) -> scale(-lr).
    """

    beta1: float = 0.9
    """Decay of the momentum of normalised gradients."""
    beta2: float = 0.9999
    """Decay of the second moment (ADOPT tolerates values close to 1)."""
    epsilon: float = 1e-6
    """Floor of sqrt(v) in the normalisation."""
    clip_normalized_grad: bool = True
    """Clip the normalised gradient to `step^0.25` (the paper's stabiliser for early steps)."""
    max_grad_norm: float | None = 1.0
    """Clip gradients to this global L2 norm; None or 0 disables it."""
    nesterov: bool = False
    """Nesterov-style momentum."""
    skip_bad_steps: SkipStepConfig | int | bool = False
    """As for adam: skip steps whose loss or grad norm is far above the recent history."""

    def _field_problems(self) -> list[FieldError]:
        problems = super()._field_problems() + unit_interval_problems(self, "beta1", "beta2")
        if not self.epsilon > 0:
            problems.append(invalid("epsilon", self.epsilon, "a number > 0"))
        return problems + common_problems(self)

    def build(self, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
        def make_chain(learning_rate):
            parts: list[optax.GradientTransformation] = []
            if self.max_grad_norm:
                parts.append(optax.clip_by_global_norm(self.max_grad_norm))
            parts.append(
                optax.contrib.scale_by_adopt(
                    self.beta1,
                    self.beta2,
                    self.epsilon,
                    nesterov=self.nesterov,
                    use_clipping=self.clip_normalized_grad,
                )
            )
            wd = decayed_weights(self, learning_rate)
            if wd is not None:
                parts.append(wd)
            parts.append(optax.scale(-learning_rate))
            return optax.chain(*parts)

        return self._finalize(num_train_steps, make_chain, self.skip_bad_steps)
