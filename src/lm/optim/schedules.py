"""Learning-rate schedule math: decay shapes, cycle boundaries and the phase list.

Everything here is pure. `OptimizerConfig.schedule_phases` turns a config into a list of
`Phase`s (warmup, stable, decay, rewarmup, cooldown; each with its start/end step and LR),
and `schedule_from_phases` joins one optax schedule per phase into `step -> lr`. The same
phase list drives the schedule, the plots and the tests, so they cannot disagree.

Decay shapes are a `draccus.ChoiceRegistry` (`LrSchedule`): `lr_schedule: cosine` or
`lr_schedule: {type: cosine, exponent: 2.0}`.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import draccus
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm.config import FieldError, invalid, raise_problems
from lm.config.errors import did_you_mean, is_count

logger = logging.getLogger(__name__)

_WARNED_UNEVEN_CYCLES: set[tuple[int, int]] = set()

Schedule = Callable[[jnp.ndarray | int], jnp.ndarray]


@dataclass(frozen=True)
class LrScheduleContext:
    """What a decay shape needs to know about the phase it fills."""

    learning_rate: float
    """Peak learning rate."""
    min_lr: float
    """`learning_rate * min_lr_ratio`: where the decay ends."""
    min_lr_ratio: float
    warmup_steps: int
    """Steps of (re)warmup in this cycle (inv_sqrt offsets its clock by these)."""
    decay_steps: int
    """Length of this decay phase."""
    decay_start: int
    """Absolute step at which this decay phase begins."""


@dataclass(frozen=True)
class LrSchedule(draccus.ChoiceRegistry, abc.ABC):
    """The shape of the decay phase. Registered names: see `lr_schedule_names()`."""

    @classmethod
    def default_choice_name(cls) -> str | None:
        return "cosine"

    @abc.abstractmethod
    def build(self, ctx: LrScheduleContext) -> Schedule:
        """`count -> lr`, where `count` is the step relative to the start of the decay phase."""


@LrSchedule.register_subclass("constant")
@dataclass(frozen=True)
class ConstantLrSchedule(LrSchedule):
    """Holds the peak LR, also through the "decay" phase."""

    def build(self, ctx: LrScheduleContext) -> Schedule:
        return optax.constant_schedule(ctx.learning_rate)


@LrSchedule.register_subclass("cosine")
@dataclass(frozen=True)
class CosineLrSchedule(LrSchedule):
    """Cosine from the peak to `min_lr` over the decay phase."""

    exponent: float = 1.0
    """Raise the cosine factor to this power (1.0 is the usual cosine)."""

    def __post_init__(self):
        if not self.exponent > 0:
            raise invalid("exponent", self.exponent, "a number > 0")

    def build(self, ctx: LrScheduleContext) -> Schedule:
        return optax.cosine_decay_schedule(
            ctx.learning_rate, ctx.decay_steps, ctx.min_lr_ratio, self.exponent
        )


@LrSchedule.register_subclass("linear")
@dataclass(frozen=True)
class LinearLrSchedule(LrSchedule):
    """Straight line from the peak to `min_lr` over the decay phase."""

    def build(self, ctx: LrScheduleContext) -> Schedule:
        return optax.linear_schedule(ctx.learning_rate, ctx.min_lr, ctx.decay_steps)


@LrSchedule.register_subclass("inv_sqrt")
@dataclass(frozen=True)
class InvSqrtLrSchedule(LrSchedule):
    """`max(lr * min(1, 1/sqrt(max(count + warmup, 1) / timescale)), min_lr)`."""

    timescale: float = 10000
    """Steps after which the LR starts to fall like 1/sqrt(step)."""

    def __post_init__(self):
        if not self.timescale > 0:
            raise invalid("timescale", self.timescale, "a number of steps > 0")

    def build(self, ctx: LrScheduleContext) -> Schedule:
        lr, min_lr, warmup, timescale = (
            ctx.learning_rate,
            ctx.min_lr,
            ctx.warmup_steps,
            self.timescale,
        )

        def schedule(count):
            t = jnp.maximum(count + warmup, 1) / timescale
            return jnp.maximum(lr * jnp.minimum(1.0, 1.0 / jnp.sqrt(t)), min_lr)

        return schedule


@LrSchedule.register_subclass("inv")
@dataclass(frozen=True)
class InvLrSchedule(LrSchedule):
    """`max(lr * min(1, 1/((lr/min_lr - 1) * max(count,1)/decay_steps + 1)), min_lr)`.

    Reaches `min_lr` exactly at the end of the decay phase. Needs `min_lr_ratio > 0`.
    """

    def build(self, ctx: LrScheduleContext) -> Schedule:
        lr, min_lr, decay_steps = ctx.learning_rate, ctx.min_lr, ctx.decay_steps

        def schedule(count):
            denom = (lr / min_lr - 1) * jnp.maximum(count, 1) / decay_steps + 1
            return jnp.maximum(lr * jnp.minimum(1.0, 1.0 / denom), min_lr)

        return schedule


@LrSchedule.register_subclass("power")
@dataclass(frozen=True)
class PowerLrSchedule(LrSchedule):
    """Power scheduler (Shen et al. 2024, arXiv:2408.13359): `min(lr, batch_size * a * n^b)`.

    `n` is the number of tokens seen since the start of training,
    `step * batch_size * seq_length`, counted from step 0 of the run (not from the start of
    the decay phase, as Levanter does). It is meant for muP-parametrised models. There is no
    floor at `min_lr`, as in the paper.
    """

    batch_size: int
    """Sequences per step, to count tokens."""
    seq_length: int
    """Tokens per sequence, to count tokens."""
    a: float = 4.6
    """Amplitude; must be > 0."""
    b: float = -0.51
    """Power-law exponent; must be < 0."""

    def __post_init__(self):
        problems: list[FieldError] = []
        if not self.a > 0:
            problems.append(invalid("a", self.a, "a number > 0 (the power schedule's amplitude)"))
        if not self.b < 0:
            problems.append(invalid("b", self.b, "a number < 0 (the power-law exponent)"))
        for name in ("batch_size", "seq_length"):
            value = getattr(self, name)
            if not is_count(value):
                problems.append(invalid(name, value, "a positive integer"))
        raise_problems(problems)

    def build(self, ctx: LrScheduleContext) -> Schedule:
        lr, start = ctx.learning_rate, ctx.decay_start
        tokens_per_step = self.batch_size * self.seq_length

        def schedule(count):
            tokens = (count + start) * tokens_per_step
            # 0 tokens -> 0**b = inf -> the peak LR.
            return jnp.minimum(lr, self.batch_size * self.a * jnp.power(tokens * 1.0, self.b))

        return schedule


def lr_schedule_names() -> list[str]:
    return sorted(LrSchedule.get_known_choices())


def resolve_lr_schedule(
    value: LrSchedule | str, field: str = "optimizer.lr_schedule"
) -> LrSchedule:
    """A registry object for `value`; strings name a shape with its default parameters.

    Raises a `FieldError` for `field`."""
    if isinstance(value, LrSchedule):
        return value
    if isinstance(value, Mapping) and "type" in value:
        # the YAML form, from Python (`lr_schedule={"type": "cosine", "exponent": 2.0}`)
        from lm.config import decode

        return decode(LrSchedule, dict(value), path=field)
    if not isinstance(value, str):
        raise invalid(
            field,
            value,
            f"a name ({', '.join(lr_schedule_names())}) or a mapping with `type:`",
        )
    known = lr_schedule_names()
    if value not in known:
        raise invalid(field, value, f"one of {known}{did_you_mean(value, known)}")
    cls = LrSchedule.get_choice_class(value)
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if required:
        raise FieldError(
            field,
            f"the {value!r} schedule needs parameters {required}; write it as a "
            f"mapping, e.g. `lr_schedule: {{type: {value}, "
            + ", ".join(f"{r}: ..." for r in required)
            + "}`",
        )
    return cls()


# --- fractions or steps ----------------------------------------------------------------


def check_frac_or_steps(value: int | float, field: str) -> None:
    """A fraction (<= 1.0) or a whole number of steps (> 1); raise a `FieldError` for
    `field` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(field, value, "a number: a fraction <= 1.0 or whole steps")
    if value < 0 or not np.isfinite(value):
        raise invalid(
            field, value, "a number >= 0: a fraction <= 1.0 of the cycle or a whole number of steps"
        )
    if value > 1.0 and value % 1 != 0:
        raise invalid(
            field,
            value,
            "a fraction <= 1.0 of the cycle or a whole number of steps (values > 1 are "
            + (
                f"steps: use {int(value)} or {int(value) + 1})"
                if int(value) > 1
                else "steps, and 1 is the whole cycle: use 2 steps, or a fraction below 1.0)"
            ),
        )


def frac_or_steps(value: int | float, n: int, field: str) -> int:
    """`int(value * n)` for a fraction (value <= 1.0, so an int 1 is the whole of `n`)."""
    check_frac_or_steps(value, field)
    if value <= 1.0:
        return int(value * n)
    return int(value)


# --- phases ------------------------------------------------------------------------------

PhaseKind = Literal["warmup", "stable", "decay", "rewarmup", "cooldown"]


@dataclass(frozen=True)
class Phase:
    """One piece of the schedule: steps `[start, end)` of cycle `cycle` (0-based).

    `start_lr` is the LR at `start`; `end_lr` the LR the phase reaches at `end` (where the
    next phase takes over).
    """

    kind: PhaseKind
    cycle: int
    start: int
    end: int
    start_lr: float
    end_lr: float

    @property
    def num_steps(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class _PhaseSpec:
    """A phase plus the function that computes its LR (count relative to `phase.start`)."""

    phase: Phase
    fn: Schedule


def schedule_from_phases(specs: Sequence[_PhaseSpec]) -> Schedule:
    """Join per-phase schedules; each sees the step relative to its phase's start."""
    assert specs, "a schedule has at least one phase"
    if len(specs) == 1:
        return specs[0].fn
    return optax.join_schedules([s.fn for s in specs], [s.phase.start for s in specs[1:]])


class ScheduleError(ValueError):
    """A schedule that does not fit its number of steps: `field` is the optimizer field to
    change (`warmup`, `decay`, `cycles`, ...) and `detail` what is wrong with its value,
    written to follow the field's name (`optimizer.warmup: 5000 steps is longer than ...`, the
    exception's text; a config error puts its own `optimizer.warmup [--optimizer.warmup 5000]`
    in front instead)."""

    def __init__(self, field: str, detail: str):
        self.field = field
        self.detail = detail
        super().__init__(f"optimizer.{field}: {detail}")


def cycle_boundaries(
    total: int,
    *,
    cycles: int | list[int] | None,
    cycle_length: int | float | list[int] | None,
    haps: list[int] | None,
) -> list[int]:
    """`[0, m_1, ..., total]`: the steps where cycles start/end (the LR minima)."""
    if cycle_length is not None:
        if isinstance(cycle_length, list):
            lengths = list(cycle_length)
            if sum(lengths) > total:
                raise ScheduleError(
                    "cycle_length",
                    f"cycle lengths {lengths} exceed the schedule: they sum to {sum(lengths)} "
                    f"steps, more than its {total}",
                )
            points = np.cumsum(lengths).tolist()
        else:
            length = frac_or_steps(cycle_length, total, "optimizer.cycle_length")
            if length < 1 or length > total:
                raise ScheduleError(
                    "cycle_length",
                    f"{cycle_length} gives cycles of {length} steps; a cycle must be between 1 "
                    f"and the {total} schedule steps",
                )
            points = [i * length for i in range(1, total // length)]
            if total % length != 0 and (length, total) not in _WARNED_UNEVEN_CYCLES:
                _WARNED_UNEVEN_CYCLES.add((length, total))  # once: plots plan the cycles again
                logger.warning(
                    "optimizer.cycle_length (%s steps) does not divide the %s schedule steps; "
                    "the remaining %s steps join the last cycle.",
                    length,
                    total,
                    total % length,
                )
    elif haps is not None or isinstance(cycles, list):
        field = "haps" if haps is not None else "cycles"
        points = list(haps if haps is not None else cycles)  # type: ignore[arg-type]
        past = [p for p in points if p > total]
        if past:
            raise ScheduleError(
                field,
                f"{points}: cycle minima {past} lie past the end of the schedule ({total} "
                f"steps); every minimum must be <= {total}",
            )
    elif isinstance(cycles, int):
        if cycles > total:
            raise ScheduleError(
                "cycles",
                f"{cycles} cycles are more than the {total} schedule steps",
            )
        points = [int(total / cycles * (i + 1)) for i in range(cycles - 1)]
    else:
        points = []

    points = [0, *points]
    if points[-1] != total:
        points.append(total)
    return points


def _endpoints(fn: Schedule, steps: int) -> tuple[float, float]:
    """`fn(0)` and `fn(steps)` as floats, from one small jitted program (evaluated op by op,
    a schedule compiles each of its operations separately at start-up)."""
    start, end = jax.jit(lambda: (fn(0), fn(steps)))()
    return float(start), float(end)


@dataclass(frozen=True)
class CyclePlan:
    """The step counts of one cycle: steps `[start, end)`, of which `warmup`, then `stable`,
    then `decay` steps."""

    cycle: int
    start: int
    end: int
    warmup: int
    stable: int
    decay: int


def plan_cycles(
    *,
    total: int,
    warmup: int | float,
    decay: int | float | None,
    rewarmup: int | float,
    cooldown: float | None,
    cycles: int | list[int] | None,
    cycle_length: int | float | list[int] | None,
    haps: list[int] | None,
) -> tuple[list[CyclePlan], int]:
    """(the cycles, the cooldown's steps) of a schedule of `total` steps: every length check
    of the schedule, in plain Python (no jax, so it can run while a config is read, before
    `jax.distributed.initialize()`). Raises `ScheduleError` naming the field to change."""
    cooldown_steps = 0
    if cooldown is not None:
        cooldown_steps = frac_or_steps(cooldown, total, "optimizer.cooldown")
        if cooldown_steps >= total:
            raise ScheduleError(
                "cooldown",
                f"{cooldown} is {cooldown_steps} steps, which leaves no steps of the "
                f"{total}-step schedule before it",
            )
    points = cycle_boundaries(
        total - cooldown_steps, cycles=cycles, cycle_length=cycle_length, haps=haps
    )
    plans = []
    for cycle, (start, end) in enumerate(itertools.pairwise(points)):
        n = end - start
        warm_field = "warmup" if cycle == 0 else "rewarmup"
        warm = frac_or_steps(warmup if cycle == 0 else rewarmup, n, f"optimizer.{warm_field}")
        if decay is None:
            if warm > n:
                raise ScheduleError(
                    warm_field,
                    f"{warm} steps is longer than cycle {cycle} ({n} steps)",
                )
            decay_steps = n - warm
        else:
            decay_steps = frac_or_steps(decay, n, "optimizer.decay")
        stable = n - warm - decay_steps
        if stable < 0 and decay_steps > n:  # the decay alone: its field is the one to fix
            raise ScheduleError(
                "decay",
                f"{decay_steps} steps is longer than cycle {cycle} ({n} steps, steps "
                f"{start}..{end})",
            )
        if stable < 0:
            raise ScheduleError(
                warm_field,
                f"{warm} steps + optimizer.decay ({decay_steps} steps) exceed the length of "
                f"cycle {cycle} ({n} steps, steps {start}..{end}); shorten them",
            )
        plans.append(CyclePlan(cycle, start, end, warm, stable, decay_steps))
    return plans, cooldown_steps


def build_phases(
    plans: Sequence[CyclePlan],
    cooldown_steps: int,
    *,
    learning_rate: float,
    min_lr_ratio: float,
    lr_schedule: LrSchedule,
) -> list[_PhaseSpec]:
    """The phases of the schedule `plan_cycles` laid out (see
    `OptimizerConfig.schedule_phases`)."""
    min_lr = learning_rate * min_lr_ratio
    total = plans[-1].end + cooldown_steps
    specs: list[_PhaseSpec] = []
    previous_end = 0.0
    for plan in plans:
        cycle, start, end = plan.cycle, plan.start, plan.end
        warm, stable, decay_steps = plan.warmup, plan.stable, plan.decay
        if warm > 0:
            fn = optax.linear_schedule(previous_end, learning_rate, warm)
            kind: PhaseKind = "warmup" if cycle == 0 else "rewarmup"
            specs.append(
                _PhaseSpec(Phase(kind, cycle, start, start + warm, previous_end, learning_rate), fn)
            )
        if stable > 0:
            s0 = start + warm
            specs.append(
                _PhaseSpec(
                    Phase("stable", cycle, s0, s0 + stable, learning_rate, learning_rate),
                    optax.constant_schedule(learning_rate),
                )
            )
        if decay_steps > 0:
            d0 = start + warm + stable
            ctx = LrScheduleContext(
                learning_rate=learning_rate,
                min_lr=min_lr,
                min_lr_ratio=min_lr_ratio,
                warmup_steps=warm,
                decay_steps=decay_steps,
                decay_start=d0,
            )
            fn = lr_schedule.build(ctx)
            start_lr, end_lr = _endpoints(fn, decay_steps)
            specs.append(_PhaseSpec(Phase("decay", cycle, d0, end, start_lr, end_lr), fn))
            previous_end = end_lr
        else:
            previous_end = learning_rate

    if cooldown_steps:
        fn = optax.linear_schedule(previous_end, min_lr, cooldown_steps)
        specs.append(
            _PhaseSpec(
                Phase(
                    "cooldown", len(plans) - 1, total - cooldown_steps, total, previous_end, min_lr
                ),
                fn,
            )
        )
    return specs
