"""When to save: the pure checkpoint policy.

Two overlapping policies decide whether step `s` is saved:

- step policy (permanent checkpoints): a list of `CheckpointInterval(every, until)`;
  the interval for `s` is the first whose `until` is None or `>= s` (so `until` is
  inclusive), and `s` is saved permanently iff `s % every == 0`;
- time policy (temporary checkpoints): otherwise `s` is saved temporarily when at least
  `save_interval` has passed since the last save (of either kind).

Step 0 is never saved unless forced, but it starts the clock; a step is never saved
twice unless forced. Everything here is a pure function of its arguments so it can be
tested at exact steps and times; `Checkpointer` holds the `PolicyState`.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lm.config.errors import did_you_mean, is_count


@dataclasses.dataclass(frozen=True)
class CheckpointInterval:
    """Save a permanent checkpoint every `every` steps, up to and including step `until`.

    Attributes:
        every: the step period (> 0).
        until: the last step this interval governs; None means forever.
    """

    every: int
    until: int | None = None

    def __post_init__(self):
        # both fields' problems in one ValueError: `parse_keep` reports it at `keep[i]`
        problems = []
        if not is_count(self.every):
            problems.append(f"every ({self.every!r}) must be a positive integer number of steps")
        if self.until is not None and not is_count(self.until):
            problems.append(f"until ({self.until!r}) must be a positive step or None (forever)")
        if problems:
            raise ValueError("; ".join(problems))


def validate_step_policies(
    policies: Sequence[CheckpointInterval], *, field: str = "keep"
) -> list[CheckpointInterval]:
    """Check that only the last interval omits `until`, that `until` strictly increases, and
    that each interval keeps a step (a multiple of `every` lies in the steps it governs).

    Raises:
        ValueError: naming `field[i]` and the offending entry.
    """
    policies = list(policies)
    problem = _ordering_problem(policies, field)
    if problem is not None:
        raise ValueError(_joined(*problem))
    return policies


def _ordering_problem(policies: Sequence[CheckpointInterval], field: str) -> tuple[str, str] | None:
    """`(path, message)` of the first interval that breaks `validate_step_policies`' rules."""
    for i, p in enumerate(policies):
        path = f"{field}[{i}]"
        if p.until is None and i != len(policies) - 1:
            return path, (
                f"{_show(p)}: only the last entry may omit `until` "
                f"(it means forever, so the entries after it would never apply)"
            )
        if i > 0 and p.until is not None:
            prev = policies[i - 1].until
            assert prev is not None
            if p.until <= prev:
                return path, (
                    f"{_show(p)}: `until` must be strictly greater than the previous entry's "
                    f"until ({prev}); sort the entries by `until`"
                )
        after = policies[i - 1].until if i > 0 else 0
        if p.until is not None and p.until // p.every == after // p.every:
            return path, (
                f"{_show(p)}: keeps no step: no multiple of {p.every} lies in the steps it "
                f"governs ({after + 1}..{p.until}); lower `every` or raise `until`"
            )
    return None


def parse_keep(keep: Iterable[Mapping[str, Any] | CheckpointInterval], *, field: str = "keep"):
    """Turn a config `keep` list (`[{every: 1000, until: 10000}, {every: 5000}]`) into intervals.

    Raises:
        ValueError: an entry is not a mapping, has unknown keys, or breaks the ordering rules
            (the first problem `keep_problems` finds).
    """
    intervals, problems = _parse_keep(keep, field)
    if problems:
        raise ValueError(_joined(*problems[0]))
    return intervals


def keep_problems(keep: Any, *, field: str = "keep") -> list[tuple[str, str]]:
    """Every problem of a config `keep` list as `(path, message)`, e.g. `("keep[1]",
    "{'evry': 3}: unknown key(s) ...")`: each entry's own problems, then (once every entry is
    valid) the first break of `validate_step_policies`' ordering rules."""
    return _parse_keep(keep, field)[1]


def _parse_keep(keep: Any, field: str) -> tuple[list[CheckpointInterval], list[tuple[str, str]]]:
    if isinstance(keep, Mapping) or isinstance(keep, str):
        return [], [(field, f"must be a list of {{every, until}} entries, got {keep!r}")]
    problems: list[tuple[str, str]] = []
    intervals: list[CheckpointInterval] = []
    for i, entry in enumerate(keep):
        path = f"{field}[{i}]"
        if isinstance(entry, CheckpointInterval):
            intervals.append(entry)
            continue
        if not isinstance(entry, Mapping):
            problems.append(
                (path, f"{entry!r}: expected a mapping like {{every: 1000, until: 10000}}")
            )
            continue
        unknown = sorted(set(entry) - {"every", "until"})
        if unknown:
            problems.append(
                (
                    path,
                    f"{dict(entry)!r}: unknown key(s) {unknown}; allowed keys are 'every' and "
                    f"'until'{did_you_mean(str(unknown[0]), ['every', 'until'])}",
                )
            )
            continue
        if "every" not in entry:
            problems.append((path, f"{dict(entry)!r}: missing required key 'every'"))
            continue
        try:
            intervals.append(CheckpointInterval(every=entry["every"], until=entry.get("until")))
        except ValueError as e:
            problems.append((path, f"{dict(entry)!r}: {e}"))
    if not problems and (ordering := _ordering_problem(intervals, field)) is not None:
        problems.append(ordering)
    return intervals, problems


def _joined(path: str, message: str) -> str:
    """The one-line form of a problem: `keep[1] = {...}: ...`, `keep must be a list ...`."""
    return f"{path} = {message}" if path.endswith("]") else f"{path} {message}"


def _show(p: CheckpointInterval) -> str:
    return (
        f"{{every: {p.every}, until: {p.until}}}"
        if p.until is not None
        else f"{{every: {p.every}}}"
    )


def step_policy_for(step: int, policies: Sequence[CheckpointInterval]) -> CheckpointInterval | None:
    """The interval governing `step`: the first with `until` None or >= step."""
    for p in policies:
        if p.until is None or p.until >= step:
            return p
    return None


def is_permanent_step(step: int, policies: Sequence[CheckpointInterval]) -> bool:
    """Whether the step policy saves `step` permanently (step 0 never)."""
    policy = step_policy_for(step, policies)
    return step > 0 and policy is not None and step % policy.every == 0


class SaveKind(enum.Enum):
    """What to do at a step."""

    NONE = 0
    TEMPORARY = 1
    PERMANENT = 2
    # A forced save at a step already saved temporarily: mark that checkpoint permanent
    # (rewrite its metadata) instead of writing the same data again.
    PROMOTE = 3


@dataclasses.dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between steps.

    Attributes:
        last_save_time: when the clock last restarted (last save, step 0, or construction).
        last_save_step: the last step saved, or None.
        last_save_kind: TEMPORARY or PERMANENT for `last_save_step`.
    """

    last_save_time: datetime.datetime
    last_save_step: int | None = None
    last_save_kind: SaveKind = SaveKind.NONE


def decide_save(
    state: PolicyState,
    step: int,
    now: datetime.datetime,
    *,
    save_interval: datetime.timedelta | None,
    step_policies: Sequence[CheckpointInterval],
    force: bool = False,
    force_temporary: bool = False,
) -> tuple[SaveKind, PolicyState]:
    """Decide whether to save at `step` (the step just completed) and update the state.

    Args:
        state: the state after the previous call.
        step: the completed step.
        now: the current time.
        save_interval: the time policy; None disables temporary checkpoints.
        step_policies: the permanent-checkpoint intervals (validated).
        force: save regardless of the policies (final step, preemption).
        force_temporary: make a forced save temporary (e.g. on preemption: the next save
            after the restart replaces it) instead of permanent.

    Returns:
        The action and the new state.
    """
    if step == 0 and not force:
        return SaveKind.NONE, dataclasses.replace(state, last_save_time=now)
    if step == state.last_save_step:
        if force and not force_temporary and state.last_save_kind == SaveKind.TEMPORARY:
            return SaveKind.PROMOTE, dataclasses.replace(state, last_save_kind=SaveKind.PERMANENT)
        return SaveKind.NONE, state
    if force:
        kind = SaveKind.TEMPORARY if force_temporary else SaveKind.PERMANENT
    elif is_permanent_step(step, step_policies):
        kind = SaveKind.PERMANENT
    elif save_interval is not None and now - state.last_save_time >= save_interval:
        kind = SaveKind.TEMPORARY
    else:
        return SaveKind.NONE, state
    return kind, PolicyState(last_save_time=now, last_save_step=step, last_save_kind=kind)


def permanent_to_delete(
    permanent_steps: Sequence[int], max_permanent_checkpoints: int | None
) -> list[int]:
    """The oldest permanent steps beyond the retention limit (none when the limit is None)."""
    if max_permanent_checkpoints is None:
        return []
    ordered = sorted(permanent_steps)
    excess = len(ordered) - max_permanent_checkpoints
    return ordered[:excess] if excess > 0 else []
