"""`OptimizerConfig`: the fields every optimizer shares (LR schedule, weight decay, masks).

A config builds an `optax.GradientTransformationExtraArgs` with `build(num_train_steps)`.
The learning rate is an `optax.inject_hyperparams` hyperparameter, so
`current_learning_rate(opt_state)` can read it back for logging (`optim/learning_rate`).
Subclasses (`adam`, `lion`, `muon`, `adopt`, `sgd`) only describe their transformation chain.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
import numbers
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import draccus
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lm.tracker
from lm.config import FieldError, field_problem, invalid, raise_problems
from lm.config import typeinfo as ti
from lm.config.errors import first_key, is_int
from lm.optim.masks import WeightDecayMask, build_weight_decay_mask, param_infos
from lm.optim.schedules import (
    LrSchedule,
    Phase,
    Schedule,
    ScheduleError,
    build_phases,
    check_frac_or_steps,
    plan_cycles,
    resolve_lr_schedule,
    schedule_from_phases,
)
from lm.optim.skip_step import SkipStepConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizerConfig(draccus.ChoiceRegistry, abc.ABC):
    """Common optimizer fields. Pick an optimizer with `type:` (default `adam`)."""

    learning_rate: float = 6e-4
    """Peak learning rate."""
    weight_decay: float = 0.1
    """Decoupled weight decay (multiplied by the scheduled LR); 0 disables it."""
    min_lr_ratio: float = 0.1
    """Each decay ends at `min_lr_ratio * learning_rate`.

    The schedule is `{[(re)warmup] -> [stable] -> [decay]} x cycles`, optionally followed by
    the deprecated `[cooldown]`."""
    warmup: int | float = 0.01
    """First-cycle warmup, linear from 0 to the peak: a fraction (<= 1.0) of the first cycle,
    or whole steps. 0.0 means no warmup."""
    decay: int | float | None = None
    """Decay length per cycle: a fraction (<= 1.0) of the cycle, or whole steps. None means
    the decay fills the cycle after the (re)warmup (no stable phase)."""
    rewarmup: int | float = 0.0
    """Warmup of cycles after the first, linear from the previous cycle's final LR back to the
    peak: a fraction (<= 1.0) of the cycle or whole steps. 0.0 jumps straight to the peak."""
    cooldown: float | None = None
    """Deprecated (confusing semantics): the main schedule ends `cooldown` (fraction of the
    schedule or steps) early and a linear ramp goes from there to `min_lr`."""
    cycle_length: int | float | None | list[int] = None
    """Length of a cycle: whole steps, a fraction (<= 1.0) of the schedule, or a list of
    successive cycle lengths (any remainder becomes a final cycle). None is one cycle."""
    cycles: int | list[int] | None = None
    """Number of equal cycles, or a list of the steps where cycles end (the LR minima; step 0
    and the last step are added). At most one of cycle_length, cycles, or haps."""
    lr_schedule: LrSchedule | str = "cosine"
    """Decay shape: constant, linear, cosine, inv_sqrt, inv, or a mapping with `type:` and
    parameters (`{type: cosine, exponent: 2.0}`, `{type: power, batch_size: 512,
    seq_length: 1024}`)."""
    haps: list[int] | None = None
    """Deprecated: a list of cycle minima, like a list `cycles`."""
    weight_decay_modules: list[str] | str | None = None
    """Which parameters get weight decay: a regex (`re.match` against the path from the root
    and the class path, e.g. `.*attn.*weight|.*mlp.*weight|.*token_embeddings`) or a list of
    substrings of either path."""
    default_weight_decay_mask: bool | None = None
    """Apply the default mask (no decay for norms, embeddings, biases) to parameters not
    selected by `weight_decay_modules`. None: only when `weight_decay_modules` is unset.
    False: never (with no modules, every parameter is decayed). True: always."""
    schedule_steps: int | None = None
    """Schedule horizon: compute the LR schedule over this many steps instead of the run
    length, so a run can stop early (e.g. train 8000 steps of a 10000-step schedule and
    resume or branch later). Must be >= num_train_steps. None: the run length."""

    def __post_init__(self):
        if self.cooldown is not None:
            warnings.warn(
                "optimizer.cooldown is deprecated: use decay (with cycles if needed) instead.",
                DeprecationWarning,
                stacklevel=3,
            )
        if self.haps is not None:
            warnings.warn(
                "optimizer.haps is deprecated: use cycles with a list of steps instead.",
                DeprecationWarning,
                stacklevel=3,
            )
        if isinstance(self.lr_schedule, Mapping):
            # the YAML form given from Python, kept as the schedule object it decodes to
            object.__setattr__(
                self, "lr_schedule", resolve_lr_schedule(self.lr_schedule, "lr_schedule")
            )
        wrong = _wrong_type_problems(self)
        if not wrong:
            raise_problems(self._field_problems())
            return
        # The value checks compare numbers: they run with the wrongly typed fields at their
        # defaults and keep what they find about the other fields (none that names a wrongly
        # typed one, which would judge a default the caller did not write).
        bad = {p.field for p in wrong}
        for f in dataclasses.fields(self):
            if f.name in bad:
                object.__setattr__(self, f.name, _default(f))
        others = [
            p
            for p in self._field_problems()
            if first_key(p.field) not in bad
            and not any(re.search(rf"\b{name}\b", p.message) for name in bad)
        ]
        order = {f.name: i for i, f in enumerate(dataclasses.fields(self))}
        problems = sorted(wrong + others, key=lambda p: order.get(first_key(p.field), len(order)))
        raise_problems(problems)

    def _field_problems(self) -> list[FieldError]:
        """Every invalid field, each as a `FieldError` naming it (the decoder reports them at
        `optimizer.<field>`). Subclasses add theirs to `super()._field_problems()`."""
        problems: list[FieldError] = []
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            problems.append(invalid("learning_rate", self.learning_rate, "a finite number > 0"))
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            problems.append(invalid("weight_decay", self.weight_decay, "a finite number >= 0"))
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(
                invalid("min_lr_ratio", self.min_lr_ratio, "a number between 0.0 and 1.0")
            )
        for name in ("warmup", "rewarmup", "decay", "cooldown"):
            value = getattr(self, name)
            if value is not None:
                problems += field_problem(lambda v=value, n=name: check_frac_or_steps(v, n))
        problems += self._cycle_problems()
        try:
            schedule = resolve_lr_schedule(self.lr_schedule, "lr_schedule")
        except FieldError as e:
            problems.append(e)
        else:
            if schedule.__class__.__name__ == "InvLrSchedule" and self.min_lr_ratio <= 0:
                problems.append(
                    invalid(
                        "min_lr_ratio",
                        self.min_lr_ratio,
                        "a number > 0 with lr_schedule 'inv': it decays towards min_lr = "
                        "learning_rate * min_lr_ratio and would drop to 0 after one step",
                    )
                )
        problems += field_problem(self._check_weight_decay_modules)
        if self.schedule_steps is not None and (
            not is_int(self.schedule_steps) or self.schedule_steps < 1
        ):
            problems.append(
                invalid(
                    "schedule_steps",
                    self.schedule_steps,
                    "a positive integer or null (the run length)",
                )
            )
        return problems

    def _cycle_problems(self) -> list[FieldError]:
        given = [
            name for name in ("cycle_length", "cycles", "haps") if getattr(self, name) is not None
        ]
        if len(given) > 1:
            a, b = given[0], given[1]
            return [
                FieldError(
                    b,
                    f"Can't use both {a} and {b}: {a}={getattr(self, a)!r} and "
                    f"{b}={getattr(self, b)!r}. Can use at most one of cycle_length, cycles, "
                    "or haps.",
                )
            ]
        problems: list[FieldError] = []
        if self.cycles is not None:
            if is_int(self.cycles):
                if self.cycles < 1:
                    problems.append(
                        invalid("cycles", self.cycles, "an int >= 1 or a list of steps")
                    )
            else:
                problems += field_problem(lambda: self._check_minima(self.cycles, "cycles"))
        if self.haps is not None:
            problems += field_problem(lambda: self._check_minima(self.haps, "haps"))
        cl = self.cycle_length
        if isinstance(cl, list):
            if not cl or not all(is_int(x) and x >= 1 for x in cl):
                problems.append(
                    invalid("cycle_length", cl, "a list of positive whole numbers of steps")
                )
        elif cl is not None:
            problems += field_problem(lambda: check_frac_or_steps(cl, "cycle_length"))
            if cl == 0:
                problems.append(invalid("cycle_length", cl, "a number > 0"))
        return problems

    @staticmethod
    def _check_minima(points: Any, field: str) -> None:
        if not isinstance(points, list) or not points:
            raise invalid(field, points, "an int or a non-empty list of steps")
        if not all(is_int(p) and p >= 1 for p in points):
            raise invalid(field, points, "cycle minima that are steps >= 1")
        if any(b <= a for a, b in zip(points, points[1:], strict=False)):
            raise invalid(field, points, "strictly increasing cycle minima")

    def _check_weight_decay_modules(self):
        mods = self.weight_decay_modules
        if isinstance(mods, str):
            try:
                re.compile(mods)
            except re.error as e:
                raise FieldError(
                    "weight_decay_modules", f"{mods!r} is not a valid regex: {e}"
                ) from None
        elif mods is not None and not (
            isinstance(mods, list | tuple) and all(isinstance(m, str) for m in mods)
        ):
            raise invalid("weight_decay_modules", mods, "a regex string or a list of strings")

    @classmethod
    def default_choice_name(cls) -> str | None:
        return "adam"

    @abc.abstractmethod
    def build(self, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
        """The optimizer for a run of `num_train_steps` steps.

        `update(grads, opt_state, params, loss=loss)` accepts `loss` (needed only by
        `skip_bad_steps`).
        """

    # --- schedule --------------------------------------------------------------------

    def schedule_horizon(self, num_train_steps: int) -> int:
        """Steps the schedule spans: `schedule_steps`, or the run length when unset."""
        if not is_int(num_train_steps) or num_train_steps < 1:
            raise ValueError(f"num_train_steps ({num_train_steps!r}) must be a positive integer")
        if self.schedule_steps is None:
            return num_train_steps
        if self.schedule_steps < num_train_steps:
            raise ScheduleError(
                "schedule_steps",
                f"optimizer.schedule_steps ({self.schedule_steps}) is less than "
                f"num_train_steps ({num_train_steps}): the run would go on past the end of the "
                "LR schedule. Set schedule_steps >= num_train_steps, or leave it unset to use "
                "the run length.",
            )
        return self.schedule_steps

    def check_schedule(self, num_train_steps: int) -> None:
        """Raise `ScheduleError` (a ValueError naming the field to change) if the schedule
        does not fit `num_train_steps`: the checks `lr_scheduler` makes, without jax."""
        self._cycle_plan(num_train_steps)

    def _cycle_plan(self, num_train_steps: int):
        return plan_cycles(
            total=self.schedule_horizon(num_train_steps),
            warmup=self.warmup,
            decay=self.decay,
            rewarmup=self.rewarmup,
            cooldown=self.cooldown,
            cycles=self.cycles,
            cycle_length=self.cycle_length,
            haps=self.haps,
        )

    def _phase_specs(self, num_train_steps: int, override_lr: float | None = None):
        learning_rate = self.learning_rate if override_lr is None else override_lr
        if not learning_rate > 0:
            raise ValueError(f"override_lr ({override_lr}) must be > 0")
        plans, cooldown_steps = self._cycle_plan(num_train_steps)
        return build_phases(
            plans,
            cooldown_steps,
            learning_rate=learning_rate,
            min_lr_ratio=self.min_lr_ratio,
            lr_schedule=resolve_lr_schedule(self.lr_schedule),
        )

    def schedule_phases(
        self, num_train_steps: int, override_lr: float | None = None
    ) -> list[Phase]:
        """The schedule as a list of phases (warmup/stable/decay/rewarmup/cooldown)."""
        return [s.phase for s in self._phase_specs(num_train_steps, override_lr)]

    def lr_scheduler(self, num_train_steps: int, override_lr: float | None = None) -> Schedule:
        """`step -> lr` over the schedule horizon (see `schedule_steps`).

        `override_lr` replaces `learning_rate` as the peak (e.g. for LR sweeps).
        """
        return schedule_from_phases(self._phase_specs(num_train_steps, override_lr))

    # --- weight decay ----------------------------------------------------------------

    def build_weight_decay_mask(self) -> WeightDecayMask | None:
        """A callable `params -> bool tree` for `optax.add_decayed_weights`, or None (all)."""
        return build_weight_decay_mask(self.weight_decay_modules, self.default_weight_decay_mask)

    def decayed_parameter_paths(self, model: Any) -> list[str]:
        """Sorted root paths of the parameters that get weight decay (empty if wd is 0)."""
        if self.weight_decay <= 0:
            return []
        mask = self.build_weight_decay_mask()
        if mask is None:
            return sorted(i.path for i in param_infos(model))
        return mask.decayed_paths(model)

    # --- helpers for subclasses --------------------------------------------------------

    def _finalize(
        self,
        num_train_steps: int,
        make_chain: Callable[[jax.Array], optax.GradientTransformation],
        skip_bad_steps: bool | int | SkipStepConfig | None = None,
    ) -> optax.GradientTransformationExtraArgs:
        """Wrap `make_chain(lr)` in skip-step (optional) and `inject_hyperparams`.

        The LR schedule's count lives in the inject_hyperparams state, outside the skip-step
        wrapper, so the schedule follows the trainer's step even when steps are skipped.
        """
        skip = SkipStepConfig.from_bool_int_or_config(skip_bad_steps)

        def factory(learning_rate):
            chain = make_chain(learning_rate)
            if skip is not None:
                chain = skip.wrap(chain)
            return chain

        tx = optax.inject_hyperparams(factory)(learning_rate=self.lr_scheduler(num_train_steps))

        logged_to_tracker = False

        def init_fn(params):
            # the trainer inits more than once (the abstract state, then the real one): the
            # list goes to the tracker once
            nonlocal logged_to_tracker
            if not logged_to_tracker:
                logged_to_tracker = self._log_decayed_weights(params)
            return tx.init(params)

        return optax.GradientTransformationExtraArgs(init_fn, tx.update)

    def _log_decayed_weights(self, params: Any) -> bool:
        """Log the decayed parameters' paths; returns whether a tracker took them."""
        paths = self.decayed_parameter_paths(params)
        if not paths and self.weight_decay > 0 and self.weight_decay_modules is not None:
            logger.warning(
                "optimizer.weight_decay_modules (%r) selects no parameter, so weight_decay: %s "
                "applies to none: a pattern is matched (re.match) against whole parameter "
                "paths such as transformer.blocks.stacked.attn.c_attn.weight; write a list of names "
                "or a regex like '.*attn.*weight'",
                self.weight_decay_modules,
                self.weight_decay,
            )
        try:
            lm.tracker.current_tracker()
        except RuntimeError:
            logger.info("Weight decay applies to %d parameters: %s", len(paths), paths)
            return False
        lm.tracker.log_hyperparameters({"decayed_weights": paths})
        return True


_SCALAR_KINDS: dict[Any, Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool | np.bool_),
    int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
}


def _wrong_type_problems(config: OptimizerConfig) -> list[FieldError]:
    """A problem for each field annotated with plain scalars (`float`, `int | float`,
    `float | None`, `bool`) that holds a value of another type. Only a config built in Python
    can (the decoder type-checks a YAML): `AdamConfig(learning_rate="1e-3")` reports
    `learning_rate: got '1e-3', expected a number, not a str` rather than failing in a
    comparison with no field named."""
    problems = []
    for name, tp in ti.field_types(type(config)).items():
        tp = ti.strip(tp)
        members = ti.union_members(tp) if ti.is_union(tp) else (tp,)
        if not all(m in _SCALAR_KINDS for m in members):
            continue  # a schedule, a list, a nested config: checked by their own checks
        value = getattr(config, name)
        if not any(_SCALAR_KINDS[m](value) for m in members):
            problems.append(
                invalid(name, value, f"{ti.describe(tp)}, not a {type(value).__name__}")
            )
    return problems


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def current_learning_rate(opt_state: Any) -> jax.Array | None:
    """The learning rate stored by `optax.inject_hyperparams` anywhere in `opt_state`."""
    found: list[jax.Array] = []

    def is_inject_state(x):
        return isinstance(x, optax.InjectStatefulHyperparamsState)

    for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_inject_state):
        if is_inject_state(node) and "learning_rate" in node.hyperparams:
            found.append(node.hyperparams["learning_rate"])
    if not found:
        return None
    return jnp.asarray(found[0])
