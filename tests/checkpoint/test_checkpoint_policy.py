"""The pure keep/time policy: exact steps and times (REFERENCE_CASES.md section 2)."""

import dataclasses
import datetime

import pytest

from lm.checkpoint import (
    CheckpointInterval,
    PolicyState,
    SaveKind,
    decide_save,
    parse_keep,
    permanent_to_delete,
    step_policy_for,
    validate_step_policies,
)

T0 = datetime.datetime(2021, 1, 1)
S10 = datetime.timedelta(seconds=10)
CHANGING = [CheckpointInterval(2, 10), CheckpointInterval(5, 20), CheckpointInterval(10, None)]


class Sim:
    """Drives `decide_save` and keeps the surviving checkpoints the way the reference does:
    a new save deletes the previous temporary one."""

    def __init__(self, save_interval, policies):
        self.now = T0
        self.state = PolicyState(last_save_time=self.now)
        self.save_interval = save_interval
        self.policies = policies
        self.saved: dict[int, SaveKind] = {}
        self.last_temp: int | None = None

    def step(self, s, force=False, force_temporary=False):
        kind, self.state = decide_save(
            self.state,
            s,
            self.now,
            save_interval=self.save_interval,
            step_policies=self.policies,
            force=force,
            force_temporary=force_temporary,
        )
        if kind in (SaveKind.TEMPORARY, SaveKind.PERMANENT):
            if self.last_temp is not None and self.last_temp != s:
                del self.saved[self.last_temp]
            self.saved[s] = kind
            self.last_temp = s if kind == SaveKind.TEMPORARY else None
        elif kind == SaveKind.PROMOTE:
            self.saved[s] = SaveKind.PERMANENT
            self.last_temp = None
        return kind

    def advance(self, seconds):
        self.now += datetime.timedelta(seconds=seconds)

    @property
    def steps(self):
        return sorted(self.saved)


def test_changing_policy_saves_exact_steps():
    sim = Sim(None, CHANGING)
    kinds = {s: sim.step(s) for s in range(1, 50)}
    permanent = [s for s, k in kinds.items() if k == SaveKind.PERMANENT]
    assert permanent == [2, 4, 6, 8, 10, 15, 20, 30, 40]
    assert sim.steps == [2, 4, 6, 8, 10, 15, 20, 30, 40]
    assert all(k in (SaveKind.NONE, SaveKind.PERMANENT) for k in kinds.values())


def test_temporal_policy():
    sim = Sim(S10, [])
    sim.step(0)
    sim.advance(10)
    assert sim.step(1) == SaveKind.TEMPORARY
    assert sim.steps == [1]
    sim.advance(9)
    assert sim.step(2) == SaveKind.NONE
    assert sim.steps == [1]
    sim.advance(1)
    assert sim.step(3) == SaveKind.TEMPORARY
    assert sim.steps == [3]


def test_mixed_policy():
    sim = Sim(S10, CHANGING)
    sim.step(0)
    sim.advance(10)
    sim.step(1)
    assert sim.steps == [1]
    sim.advance(9)
    assert sim.step(2) == SaveKind.PERMANENT
    assert sim.steps == [2]
    sim.advance(1)
    assert sim.step(3) == SaveKind.NONE  # only 1 s since the step-2 save
    assert sim.steps == [2]
    for s in range(4, 11):
        sim.advance(10)
        sim.step(s)
    assert sim.steps == [2, 4, 6, 8, 10]
    sim.advance(9)
    assert sim.step(11) == SaveKind.NONE
    for s in range(12, 50):
        sim.step(s)
        sim.advance(10)
    assert sim.steps == [2, 4, 6, 8, 10, 15, 20, 30, 40, 49]


def test_step_zero_starts_the_clock_and_never_saves_unless_forced():
    sim = Sim(S10, [CheckpointInterval(1)])
    sim.advance(100)
    assert sim.step(0) == SaveKind.NONE
    assert sim.state.last_save_time == sim.now
    assert sim.step(0, force=True) == SaveKind.PERMANENT
    assert sim.steps == [0]


def test_no_second_save_at_the_same_step_unless_forced():
    sim = Sim(S10, [CheckpointInterval(5)])
    assert sim.step(5) == SaveKind.PERMANENT
    sim.advance(20)
    assert sim.step(5) == SaveKind.NONE
    # Forcing a step that is already permanent does nothing more.
    assert sim.step(5, force=True) == SaveKind.NONE


def test_forced_save_after_temporary_promotes_it():
    sim = Sim(S10, [CheckpointInterval(100)])
    sim.advance(10)
    assert sim.step(7) == SaveKind.TEMPORARY
    assert sim.step(7, force=True) == SaveKind.PROMOTE
    assert sim.state.last_save_kind == SaveKind.PERMANENT
    assert sim.step(7, force=True) == SaveKind.NONE
    sim.advance(10)
    assert sim.step(8) == SaveKind.TEMPORARY
    assert sim.steps == [7, 8]  # the promoted one survives the next temporary save


def test_forced_temporary_save():
    sim = Sim(S10, [CheckpointInterval(100)])
    assert sim.step(3, force=True, force_temporary=True) == SaveKind.TEMPORARY
    sim.advance(10)
    assert sim.step(4) == SaveKind.TEMPORARY
    assert sim.steps == [4]
    # A temporary force at a step already saved does not write again.
    assert sim.step(4, force=True, force_temporary=True) == SaveKind.NONE


def test_until_is_inclusive():
    assert step_policy_for(20, CHANGING) == CheckpointInterval(5, 20)
    assert step_policy_for(21, CHANGING) == CheckpointInterval(10, None)
    assert step_policy_for(10, CHANGING) == CheckpointInterval(2, 10)
    assert step_policy_for(30, [CheckpointInterval(5, 20)]) is None


@pytest.mark.parametrize(
    "policies, match",
    [
        (
            [CheckpointInterval(2), CheckpointInterval(5, 20)],
            r"step_policies\[0\] = \{every: 2\}: only the last entry may omit `until`",
        ),
        (
            [CheckpointInterval(2, 20), CheckpointInterval(5, 10)],
            r"step_policies\[1\] = \{every: 5, until: 10\}: `until` must be strictly greater "
            r"than the previous entry's until \(20\)",
        ),
        (
            [CheckpointInterval(2, 20), CheckpointInterval(5, 20), CheckpointInterval(9)],
            r"step_policies\[1\].*strictly greater",
        ),
        (
            [CheckpointInterval(10, 5), CheckpointInterval(2)],
            r"step_policies\[0\] = \{every: 10, until: 5\}: keeps no step: no multiple of 10 "
            r"lies in the steps it governs \(1\.\.5\)",
        ),
        (
            [CheckpointInterval(2, 10), CheckpointInterval(7, 13), CheckpointInterval(9)],
            r"step_policies\[1\] = \{every: 7, until: 13\}: keeps no step.*\(11\.\.13\)",
        ),
    ],
)
def test_policy_validation(policies, match):
    with pytest.raises(ValueError, match=match):
        validate_step_policies(policies, field="step_policies")


@pytest.mark.parametrize(
    "every, until, match",
    [
        (0, None, r"every \(0\)"),
        (-3, 5, r"every \(-3\)"),
        (5, 0, r"until \(0\)"),
        (2.5, None, "every"),
    ],
)
def test_interval_validation(every, until, match):
    with pytest.raises(ValueError, match=match):
        CheckpointInterval(every, until)


def test_both_bad_interval_fields_are_reported_together():
    with pytest.raises(ValueError) as info:
        CheckpointInterval(0, -5)
    assert str(info.value) == (
        "every (0) must be a positive integer number of steps; "
        "until (-5) must be a positive step or None (forever)"
    )
    with pytest.raises(ValueError, match=r"^keep\[0\] = .*: every \(0\) must .*; until \(-5\)"):
        parse_keep([{"every": 0, "until": -5}])


def test_an_interval_that_keeps_one_step_is_accepted():
    # 14 is the one multiple of 7 in 11..14; until is inclusive
    assert validate_step_policies([CheckpointInterval(2, 10), CheckpointInterval(7, 14)])
    assert validate_step_policies([CheckpointInterval(5, 5)])


def test_parse_keep_reference_example():
    keep = [{"every": 1000, "until": 10000}, {"every": 5000, "until": 40000}, {"every": 10000}]
    assert parse_keep(keep) == [
        CheckpointInterval(1000, 10000),
        CheckpointInterval(5000, 40000),
        CheckpointInterval(10000, None),
    ]


@pytest.mark.parametrize(
    "keep, match",
    [
        (
            [{"evry": 10}],
            r"keep\[0\] = \{'evry': 10\}: unknown key\(s\) \['evry'\].*did you mean 'every'",
        ),
        ([{"until": 10}], r"keep\[0\].*missing required key 'every'"),
        ([{"every": 10}, {"every": 5, "until": 100}], r"keep\[0\] = \{every: 10\}: only the last"),
        ([{"every": -1}], r"keep\[0\] = \{'every': -1\}: every \(-1\) must be a positive"),
        ([5], r"keep\[0\] = 5: expected a mapping"),
        ({"every": 5}, r"keep must be a list"),
    ],
)
def test_parse_keep_errors(keep, match):
    with pytest.raises(ValueError, match=match):
        parse_keep(keep)


def test_permanent_retention():
    assert permanent_to_delete([10, 30, 20, 40], 2) == [10, 20]
    assert permanent_to_delete([10, 20], 2) == []
    assert permanent_to_delete([10, 20, 30], None) == []


def test_every_bad_keep_entry_is_reported_in_one_run(config_problems):
    from lm.checkpoint import CheckpointerConfig

    @dataclasses.dataclass(frozen=True)
    class _Run:
        checkpointer: CheckpointerConfig = dataclasses.field(default_factory=CheckpointerConfig)

    found = config_problems(
        _Run,
        "checkpointer:\n  keep:\n    - {evry: 10}\n    - {every: 0, until: 50}\n"
        "    - {every: 100}\n",
    )
    assert set(found) == {"checkpointer.keep[0]", "checkpointer.keep[1]"}
    assert "did you mean 'every'" in found["checkpointer.keep[0]"][1]
    assert "every (0) must be a positive integer" in found["checkpointer.keep[1]"][1]
    # the ordering rules wait for valid entries, then name the first entry that breaks them
    found = config_problems(_Run, "checkpointer:\n  keep: [{every: 5}, {every: 10, until: 50}]\n")
    assert list(found) == ["checkpointer.keep[0]"]
