"""AdamW (`type: adam`) with optional update clipping, step skipping and AdamC decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

import optax

from lm.config import FieldError, field_problem, invalid
from lm.optim.clipping import ClipUpdateNormConfig, clip_by_block_rms, log_global_norm
from lm.optim.config import OptimizerConfig
from lm.optim.skip_step import SkipStepConfig


def check_max_grad_norm(value: float | None) -> None:
    if value is not None and not (value >= 0 and math.isfinite(value)):
        raise invalid("max_grad_norm", value, "a finite number > 0, or 0/null to disable clipping")


def unit_interval_problems(config: OptimizerConfig, *names: str) -> list[FieldError]:
    """A problem for each of these fields (betas, momentum) outside [0, 1)."""
    return [
        invalid(name, getattr(config, name), "a number in [0, 1)")
        for name in names
        if not 0.0 <= getattr(config, name) < 1.0
    ]


def common_problems(config: OptimizerConfig) -> list[FieldError]:
    """Checks of the fields several optimizers share: `max_grad_norm`, `skip_bad_steps`."""
    return field_problem(lambda: check_max_grad_norm(config.max_grad_norm)) + field_problem(
        lambda: SkipStepConfig.from_bool_int_or_config(config.skip_bad_steps)
    )


def decayed_weights(config: OptimizerConfig, learning_rate, *, adamc: bool = False):
    """`add_decayed_weights` for `config` (None when weight_decay is 0).

    With `adamc`, the decay coefficient follows the schedule, `wd * lr_t / peak_lr`, which
    keeps `weight_decay / lr` constant (Defazio 2025, arXiv:2506.02285).
    """
    if config.weight_decay <= 0:
        return None
    wd = config.weight_decay
    if adamc:
        wd = wd * (learning_rate / config.learning_rate)
    return optax.add_decayed_weights(wd, config.build_weight_decay_mask())


@OptimizerConfig.register_subclass("adam")
@dataclass(frozen=True)
class AdamConfig(OptimizerConfig):
    """Decoupled AdamW.

    Chain (the reference's order): clip_by_global_norm -> scale_by_adam ->
    add_decayed_weights (masked) -> [update RMS clip | clip_update_norm] -> scale(-lr);
    wrapped in skip-step when enabled and in `inject_hyperparams` (so the LR is loggable).
    """

    beta1: float = 0.9
    """Decay of the first moment."""
    beta2: float = 0.95
    """Decay of the second moment."""
    epsilon: float = 1e-8
    """Added to sqrt(v) in the denominator."""
    max_grad_norm: float | None = 1.0
    """Clip gradients to this global L2 norm before Adam; None or 0 disables it."""
    nesterov: bool = False
    """Nesterov momentum (NAdam-style first moment)."""
    update_rms_clipping: float | None = None
    """Clip each parameter's step, m/sqrt(v) + wd * param (the reference adds weight decay
    before clipping), to this RMS, per layer for scanned layers (à la Adafactor/StableAdamW,
    which clip g/sqrt(v)). 1.0 is a good value; None disables it. Logs
    optim/pre_clip_update_norm and optim/post_clip_update_norm."""
    clip_update_norm: ClipUpdateNormConfig | None = None
    """Clip the step's global norm (weight decay included) to the mean + sigma_factor * std of
    recent update norms (a gentler skip_bad_steps). Cannot be combined with
    update_rms_clipping."""
    skip_bad_steps: SkipStepConfig | int | bool = False
    """Skip steps whose loss or grad norm is far above the recent history: true (defaults:
    128 steps, 6 sigma), an int (history length), a mapping, or false."""
    adamc_weight_decay: bool = False
    """AdamC: scale weight decay by lr_t / learning_rate so weight_decay / lr stays constant
    (Defazio 2025, arXiv:2506.02285)."""

    def _field_problems(self) -> list[FieldError]:
        problems = super()._field_problems() + unit_interval_problems(self, "beta1", "beta2")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            # 0 divides 0 by 0 for a coordinate whose gradients have all been 0 so far (the
            # embedding row of a token not seen yet): NaN
            problems.append(invalid("epsilon", self.epsilon, "a finite number > 0"))
        problems += common_problems(self)
        if self.update_rms_clipping is not None and not self.update_rms_clipping > 0:
            problems.append(
                invalid(
                    "update_rms_clipping", self.update_rms_clipping, "a positive number or null"
                )
            )
        elif self.clip_update_norm is not None and self.update_rms_clipping is not None:
            problems.append(
                FieldError(
                    "clip_update_norm",
                    "Cannot use both update_rms_clipping and clip_update_norm at the same time: "
                    "unset update_rms_clipping or clip_update_norm",
                )
            )
        return problems

    def build(self, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
        def make_chain(learning_rate):
            parts: list[optax.GradientTransformation] = []
            if self.max_grad_norm:
                parts.append(optax.clip_by_global_norm(self.max_grad_norm))
            parts.append(
                optax.scale_by_adam(self.beta1, self.beta2, self.epsilon, nesterov=self.nesterov)
            )
            # Decoupled weight decay joins the Adam step before the step is clipped, as the
            # reference chains them: the clip bounds RMS(m/sqrt(v) + wd * param).
            wd = decayed_weights(self, learning_rate, adamc=self.adamc_weight_decay)
            if wd is not None:
                parts.append(wd)
            if self.update_rms_clipping is not None:
                parts.append(log_global_norm("optim/pre_clip_update_norm"))
                parts.append(clip_by_block_rms(self.update_rms_clipping))
                parts.append(log_global_norm("optim/post_clip_update_norm"))
            if self.clip_update_norm is not None:
                parts.append(log_global_norm("optim/pre_clip_update_norm"))
                parts.append(self.clip_update_norm.build())
                parts.append(log_global_norm("optim/post_clip_update_norm"))
            parts.append(optax.scale(-learning_rate))
            return optax.chain(*parts)

        return self._finalize(num_train_steps, make_chain, self.skip_bad_steps)
