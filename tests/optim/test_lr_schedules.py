"""LR schedules: the reference cases (REFERENCE_CASES.md §1), phases, horizon, validation."""

import logging
import math

import draccus
import numpy as np
import pytest
import yaml

from lm.optim import (
    AdamConfig,
    CosineLrSchedule,
    InvSqrtLrSchedule,
    LrSchedule,
    OptimizerConfig,
    PowerLrSchedule,
)

# --- the nine reference cases --------------------------------------------------------------


def test_no_stable_weirdness():
    optimizer = AdamConfig(
        learning_rate=2e-6,
        weight_decay=0.0,
        warmup=0.03,
        min_lr_ratio=0.0,
        lr_schedule="linear",
        max_grad_norm=None,
        cycles=None,
        weight_decay_modules=None,
        default_weight_decay_mask=None,
    )
    sched_fn = optimizer.lr_scheduler(861)
    assert sched_fn(0) == 0.0
    assert np.isclose(sched_fn(int(861 * 0.03)), 2e-6)
    assert np.isclose(sched_fn(860), 0.0)
    # Halfway through the decay.
    assert np.isclose(sched_fn(int(861 * (0.03 + 0.97 / 2))), 1e-6)


def test_constant_schedule():
    optimizer = AdamConfig(learning_rate=1e-3, warmup=0.0, min_lr_ratio=1.0, lr_schedule="constant")
    sched_fn = optimizer.lr_scheduler(1000)
    assert sched_fn(0) == 1e-3
    assert sched_fn(500) == 1e-3
    assert sched_fn(999) == 1e-3


def test_warmup_and_cosine_decay():
    optimizer = AdamConfig(learning_rate=1e-2, warmup=0.1, min_lr_ratio=0.1, lr_schedule="cosine")
    sched_fn = optimizer.lr_scheduler(1000)
    assert np.isclose(sched_fn(0), 0.0)
    assert np.isclose(sched_fn(50), 0.5e-2)
    assert np.isclose(sched_fn(100), 1e-2)
    assert np.isclose(sched_fn(999), 1e-3, atol=1e-5)


def test_linear_schedule_with_cycles():
    optimizer = AdamConfig(
        learning_rate=5e-4, warmup=50, min_lr_ratio=0.2, lr_schedule="linear", cycles=2
    )
    sched_fn = optimizer.lr_scheduler(1000)
    assert np.isclose(sched_fn(0), 0.0)
    assert np.isclose(sched_fn(50), 5e-4)
    assert np.isclose(sched_fn(499), 1e-4, atol=1e-5)  # 1.00889e-4
    assert np.isclose(sched_fn(500), 5e-4)  # no rewarmup: back to the peak
    assert np.isclose(sched_fn(749), 3e-4, atol=1e-5)  # 3.008e-4
    assert np.isclose(sched_fn(999), 1e-4, atol=1e-5)


def _assert_wsds(sched_fn):
    # cycle 1: 300 steps, 30 of decay
    assert np.isclose(sched_fn(0), 1e-3)
    assert np.isclose(sched_fn(269), 1e-3)
    assert sched_fn(271) < 1e-3
    # cycle 2: 400 steps, 40 of decay
    assert np.isclose(sched_fn(300), 1e-3)
    assert np.isclose(sched_fn(659), 1e-3)
    assert sched_fn(661) < 1e-3
    # cycle 3: 300 steps, 30 of decay
    assert np.isclose(sched_fn(701), 1e-3)
    assert np.isclose(sched_fn(969), 1e-3)
    assert sched_fn(971) < 1e-3


def test_wsds_schedule():
    optimizer = AdamConfig(
        learning_rate=1e-3,
        warmup=0.0,
        decay=0.1,
        min_lr_ratio=0.1,
        lr_schedule="cosine",
        cycles=[300, 700],
    )
    _assert_wsds(optimizer.lr_scheduler(1000))


def test_inv_sqrt_decay_schedule():
    optimizer = AdamConfig(learning_rate=1e-3, warmup=0.1, min_lr_ratio=0.1, lr_schedule="inv_sqrt")
    sched_fn = optimizer.lr_scheduler(100_000)
    assert np.isclose(sched_fn(0), 0.0)
    assert np.isclose(sched_fn(5000), 0.5e-3)
    assert sched_fn(50000) < sched_fn(30000)


def test_rewarmup_schedule():
    optimizer = AdamConfig(
        learning_rate=1e-2,
        warmup=0.2,  # of the 500-step cycle: 100 steps
        min_lr_ratio=0.2,
        lr_schedule="linear",
        cycles=2,
        rewarmup=0.05,  # 25 steps
    )
    sched_fn = optimizer.lr_scheduler(1000)
    assert np.isclose(sched_fn(0), 0.0)
    assert np.isclose(sched_fn(100), 1e-2)
    assert np.isclose(sched_fn(300), 0.6e-2)
    assert np.isclose(sched_fn(500), 0.2e-2)
    # rewarmup from the previous cycle's final LR
    assert np.isclose(sched_fn(500), 0.2e-2)
    assert np.isclose(sched_fn(525), 1e-2)
    assert sched_fn(524) < sched_fn(525)
    assert sched_fn(526) < sched_fn(525)
    assert sched_fn(998) > sched_fn(999)
    assert np.isclose(sched_fn(999), 0.2e-2, atol=1e-4)


def test_linear_schedule_with_cycle_length():
    optimizer = AdamConfig(
        learning_rate=5e-4, warmup=50, min_lr_ratio=0.2, lr_schedule="linear", cycle_length=500
    )
    sched_fn = optimizer.lr_scheduler(1000)
    assert np.isclose(sched_fn(0), 0.0)
    assert np.isclose(sched_fn(50), 5e-4)
    assert np.isclose(sched_fn(499), 1e-4, atol=1e-5)
    assert np.isclose(sched_fn(500), 5e-4)
    assert np.isclose(sched_fn(749), 3e-4, atol=1e-5)
    assert np.isclose(sched_fn(999), 1e-4, atol=1e-5)


def test_wsds_schedule_with_cycle_points():
    optimizer = AdamConfig(
        learning_rate=1e-3,
        warmup=0.0,
        decay=0.1,
        min_lr_ratio=0.1,
        lr_schedule="cosine",
        cycle_length=[300, 400],
    )
    _assert_wsds(optimizer.lr_scheduler(1000))


# --- phases and formulas ------------------------------------------------------------------


def _kinds(phases):
    return [(p.kind, p.cycle, p.start, p.end) for p in phases]


def test_phases_of_the_rewarmup_case():
    config = AdamConfig(
        learning_rate=1e-2, warmup=0.2, min_lr_ratio=0.2, lr_schedule="linear", cycles=2,
        rewarmup=0.05,
    )  # fmt: skip
    phases = config.schedule_phases(1000)
    assert _kinds(phases) == [
        ("warmup", 0, 0, 100),
        ("decay", 0, 100, 500),
        ("rewarmup", 1, 500, 525),
        ("decay", 1, 525, 1000),
    ]
    assert phases[0].start_lr == 0.0
    assert math.isclose(phases[1].end_lr, 2e-3, rel_tol=1e-6)
    assert phases[2].start_lr == phases[1].end_lr  # rewarmup starts at the previous final LR


def test_phases_with_stable_and_default_shape():
    phases = AdamConfig(warmup=100, decay=0.25).schedule_phases(1000)
    assert _kinds(phases) == [
        ("warmup", 0, 0, 100),
        ("stable", 0, 100, 750),
        ("decay", 0, 750, 1000),
    ]
    # Default: warmup then decay fills the rest (no stable phase).
    assert [p.kind for p in AdamConfig().schedule_phases(1000)] == ["warmup", "decay"]


def test_phase_boundaries_match_the_schedule():
    config = AdamConfig(learning_rate=1e-3, warmup=0.1, decay=0.3, rewarmup=10, cycles=3)
    f = config.lr_scheduler(900)
    for p in config.schedule_phases(900):
        assert math.isclose(float(f(p.start)), p.start_lr, rel_tol=1e-5, abs_tol=1e-9)


def test_cosine_formula_and_exponent():
    lr, n, ratio = 1e-3, 200, 0.1
    for exponent in (1.0, 2.0):
        config = AdamConfig(
            learning_rate=lr, warmup=0.0, min_lr_ratio=ratio,
            lr_schedule=CosineLrSchedule(exponent=exponent),
        )  # fmt: skip
        f = config.lr_scheduler(n)
        for t in (0, 37, 100, 199):
            cos = (0.5 * (1 + math.cos(math.pi * t / n))) ** exponent
            expected = lr * ((1 - ratio) * cos + ratio)
            assert math.isclose(float(f(t)), expected, rel_tol=1e-5)


def test_inv_formula():
    lr, ratio, n = 1e-3, 0.1, 1000
    f = AdamConfig(
        learning_rate=lr, warmup=0.0, min_lr_ratio=ratio, lr_schedule="inv"
    ).lr_scheduler(n)
    min_lr = lr * ratio
    for t in (0, 1, 10, 500, 999):
        expected = max(lr * min(1, 1 / ((lr / min_lr - 1) * max(t, 1) / n + 1)), min_lr)
        assert math.isclose(float(f(t)), expected, rel_tol=1e-5)
    assert math.isclose(float(f(n)), min_lr, rel_tol=1e-5)


def test_inv_sqrt_timescale_formula():
    config = AdamConfig(
        learning_rate=1e-3, warmup=100, min_lr_ratio=0.01,
        lr_schedule=InvSqrtLrSchedule(timescale=50),
    )  # fmt: skip
    f = config.lr_scheduler(1000)
    for t in (100, 150, 600):
        count = t - 100
        expected = max(1e-3 * min(1, 1 / math.sqrt(max(count + 100, 1) / 50)), 1e-5)
        assert math.isclose(float(f(t)), expected, rel_tol=1e-5)


def test_power_schedule_uses_tokens_since_start():
    power = PowerLrSchedule(batch_size=4, seq_length=8, a=2.0, b=-0.5)
    f = AdamConfig(learning_rate=0.5, warmup=10, lr_schedule=power).lr_scheduler(1000)
    for t in (10, 11, 500, 999):
        expected = min(0.5, 4 * 2.0 * (t * 4 * 8) ** -0.5)
        assert math.isclose(float(f(t)), expected, rel_tol=1e-5)


def test_constant_never_decays_with_cycles():
    f = AdamConfig(learning_rate=3e-4, warmup=0.0, lr_schedule="constant", cycles=3).lr_scheduler(
        90
    )
    assert all(math.isclose(float(f(t)), 3e-4, rel_tol=1e-6) for t in range(90))


def test_override_lr():
    config = AdamConfig(learning_rate=1e-3, warmup=0.1, lr_schedule="linear", min_lr_ratio=0.5)
    f = config.lr_scheduler(100, override_lr=2e-2)
    assert math.isclose(float(f(10)), 2e-2, rel_tol=1e-6)
    assert math.isclose(float(f(100)), 1e-2, rel_tol=1e-6)


def test_cycles_int_boundaries_follow_the_code_not_c_plus_1():
    phases = AdamConfig(warmup=0.0, cycles=3).schedule_phases(1000)
    assert [p.start for p in phases] == [0, 333, 666]


def test_cycle_length_fraction_and_remainder(caplog, monkeypatch):
    from lm.optim import schedules

    monkeypatch.setattr(schedules, "_WARNED_UNEVEN_CYCLES", set())
    assert [p.start for p in AdamConfig(warmup=0.0, cycle_length=0.25).schedule_phases(100)] == [
        0, 25, 50, 75,
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lm.optim.schedules"):
        phases = AdamConfig(warmup=0.0, cycle_length=30).schedule_phases(100)
        AdamConfig(warmup=0.0, cycle_length=30).lr_scheduler(100)  # planned again (plot_lr)
    assert [(p.start, p.end) for p in phases] == [(0, 30), (30, 60), (60, 100)]
    assert caplog.text.count("does not divide") == 1


def test_list_cycle_length_remainder_becomes_a_cycle():
    phases = AdamConfig(warmup=0.0, cycle_length=[30, 50]).schedule_phases(100)
    assert [(p.start, p.end) for p in phases] == [(0, 30), (30, 80), (80, 100)]


def test_warmup_of_one_is_a_whole_cycle():
    # An int 1 is a fraction (the whole cycle), not one step.
    phases = AdamConfig(warmup=1, lr_schedule="linear").schedule_phases(100)
    assert _kinds(phases) == [("warmup", 0, 0, 100)]


# --- schedule horizon --------------------------------------------------------------------


def test_schedule_horizon_stops_early():
    full = AdamConfig(learning_rate=1e-3, warmup=0.05, decay=0.2).lr_scheduler(10_000)
    config = AdamConfig(learning_rate=1e-3, warmup=0.05, decay=0.2, schedule_steps=10_000)
    early = config.lr_scheduler(8_000)
    for t in (0, 250, 499, 500, 7999, 8500):
        assert float(early(t)) == float(full(t))
    # the run stops inside the stable phase: the decay starts at 8000
    assert [p.kind for p in config.schedule_phases(8_000)] == ["warmup", "stable", "decay"]
    assert config.schedule_phases(8_000)[-1].start == 8_000
    assert config.schedule_horizon(8_000) == 10_000


def test_schedule_horizon_shorter_than_run_is_an_error():
    with pytest.raises(
        ValueError, match=r"schedule_steps \(500\) is less than num_train_steps \(1000\)"
    ):
        AdamConfig(schedule_steps=500).lr_scheduler(1000)
    with pytest.raises(ValueError, match="schedule_steps"):
        AdamConfig(schedule_steps=0)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cycles": 2, "cycle_length": 500}, "Can't use both cycle_length and cycles"),
        ({"warmup": -0.1}, r"warmup: got -0.1, expected a number >= 0"),
        ({"decay": -5}, r"decay: got -5, expected a number >= 0"),
        ({"rewarmup": -1}, r"rewarmup: got -1, expected a number >= 0"),
        ({"warmup": 10.5}, r"warmup: got 10.5, expected a fraction <= 1.0 .*use 10 or 11"),
        ({"decay": 2.5}, r"decay: got 2.5, expected a fraction <= 1.0 .*use 2 or 3"),
        ({"cycle_length": 12.5}, r"cycle_length: got 12.5, expected a fraction <= 1.0"),
        ({"cycle_length": -3}, r"cycle_length: got -3, expected a number >= 0"),
        ({"cycle_length": [100, 0]}, r"positive whole numbers"),
        ({"cycles": 0}, r"cycles: got 0, expected an int >= 1"),
        ({"cycles": [500, 300]}, "strictly increasing"),
        (
            {"cycles": [0, 300]},
            r"cycles: got \[0, 300\], expected cycle minima that are steps >= 1",
        ),
        (
            {"lr_schedule": "cosin"},
            r"lr_schedule: got 'cosin', expected one of .*did you mean 'cosine'",
        ),
        ({"lr_schedule": "power"}, r"needs parameters \['batch_size', 'seq_length'\]"),
        (
            {"lr_schedule": "inv", "min_lr_ratio": 0.0},
            "min_lr_ratio: got 0.0, expected a number > 0 with lr_schedule 'inv'",
        ),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio: got 1.5, expected a number between 0.0 and 1.0"),
        ({"learning_rate": 0.0}, r"learning_rate: got 0.0, expected a finite number > 0"),
        ({"learning_rate": float("inf")}, r"learning_rate: got inf, expected a finite number"),
        ({"weight_decay": -0.1}, r"weight_decay: got -0.1, expected a finite number >= 0"),
        ({"weight_decay": float("inf")}, r"weight_decay: got inf, expected a finite number"),
        ({"warmup": 1.5}, r"1 is the whole cycle: use 2 steps, or a fraction below 1.0"),
        (
            {"weight_decay_modules": "attn(["},
            "weight_decay_modules: 'attn\\(\\[' is not a valid regex",
        ),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdamConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "steps", "message"),
    [
        (
            {"cycle_length": [600, 600]},
            1000,
            r"optimizer.cycle_length: cycle lengths \[600, 600\] exceed the schedule: they sum "
            r"to 1200 steps, more than its 1000",
        ),
        (
            {"cycles": [300, 1200]},
            1000,
            r"optimizer.cycles: \[300, 1200\]: cycle minima \[1200\] lie past the end",
        ),
        ({"cycles": 20}, 10, r"optimizer.cycles: 20 cycles are more than the 10 schedule steps"),
        ({"cycle_length": 2000}, 1000, r"must be between 1 and the 1000 schedule steps"),
        (
            {"warmup": 600, "decay": 500},
            1000,
            r"optimizer.warmup: 600 steps \+ optimizer.decay \(500 steps\) exceed the length of cycle 0",
        ),
        (
            {"warmup": 2000},
            1000,
            r"optimizer.warmup: 2000 steps is longer than cycle 0 \(1000 steps\)",
        ),
        (  # the decay alone is too long: it was blamed on warmup
            {"warmup": 10, "decay": 3000},
            1000,
            r"optimizer.decay: 3000 steps is longer than cycle 0 \(1000 steps, steps 0..1000\)",
        ),
    ],
)
def test_schedule_validation(kwargs, steps, message):
    config = AdamConfig(**kwargs)
    with pytest.raises(ValueError, match=message):
        config.lr_scheduler(steps)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (
            lambda: PowerLrSchedule(batch_size=4, seq_length=8, a=0.0),
            "a: got 0.0, expected a number > 0",
        ),
        (
            lambda: PowerLrSchedule(batch_size=4, seq_length=8, b=0.5),
            "b: got 0.5, expected a number < 0",
        ),
        (
            lambda: PowerLrSchedule(batch_size=0, seq_length=8),
            "batch_size: got 0, expected a positive",
        ),
        (lambda: CosineLrSchedule(exponent=0.0), "exponent: got 0.0, expected a number > 0"),
        (
            lambda: InvSqrtLrSchedule(timescale=-1),
            "timescale: got -1, expected a number of steps > 0",
        ),
    ],
)
def test_lr_schedule_validation(schedule, message):
    with pytest.raises(ValueError, match=message):
        schedule()


def test_every_bad_power_schedule_field_is_reported_in_one_run(config_problems):
    found = config_problems(
        AdamConfig,
        "lr_schedule:\n  type: power\n  batch_size: 0\n  seq_length: 8\n  a: 0\n  b: 0.5\n",
    )
    assert found == {
        "lr_schedule.batch_size": ("run.yaml:3", "got 0, expected a positive integer"),
        "lr_schedule.a": (
            "run.yaml:5",
            "got 0.0, expected a number > 0 (the power schedule's amplitude)",
        ),
        "lr_schedule.b": ("run.yaml:6", "got 0.5, expected a number < 0 (the power-law exponent)"),
    }


# --- deprecated fields --------------------------------------------------------------------


def test_cooldown_is_deprecated_and_ramps_to_min_lr():
    with pytest.warns(DeprecationWarning, match="cooldown is deprecated"):
        config = AdamConfig(
            learning_rate=1e-3, warmup=0.0, min_lr_ratio=0.1, lr_schedule="constant", cooldown=100
        )
    phases = config.schedule_phases(1000)
    assert _kinds(phases) == [("decay", 0, 0, 900), ("cooldown", 0, 900, 1000)]
    f = config.lr_scheduler(1000)
    assert math.isclose(float(f(899)), 1e-3, rel_tol=1e-6)
    assert math.isclose(float(f(950)), 1e-3 - 0.5 * 0.9e-3, rel_tol=1e-5)
    assert math.isclose(float(f(1000)), 1e-4, rel_tol=1e-5)


def test_haps_is_deprecated_and_acts_like_cycle_minima():
    with pytest.warns(DeprecationWarning, match="haps is deprecated"):
        config = AdamConfig(warmup=0.0, haps=[300, 700])
    assert [p.start for p in config.schedule_phases(1000)] == [0, 300, 700]
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="Can't use both"):
        AdamConfig(haps=[300], cycles=2)


# --- YAML ---------------------------------------------------------------------------------


def test_yaml_decodes_unions():
    text = """
    type: adam
    warmup: 100
    decay: 0.2
    cycles: [3000, 7000]
    lr_schedule: {type: cosine, exponent: 2.0}
    """
    config = draccus.decode(OptimizerConfig, yaml.safe_load(text))
    assert isinstance(config, AdamConfig)
    assert config.warmup == 100 and config.decay == 0.2 and config.cycles == [3000, 7000]
    assert config.lr_schedule == CosineLrSchedule(exponent=2.0)
    assert draccus.decode(OptimizerConfig, draccus.encode(config, OptimizerConfig)) == config
    plain = draccus.decode(OptimizerConfig, {"lr_schedule": "linear", "cycle_length": [10, 20]})
    assert isinstance(plain, AdamConfig) and plain.lr_schedule == "linear"
    assert sorted(LrSchedule.get_known_choices()) == [
        "constant", "cosine", "inv", "inv_sqrt", "linear", "power",
    ]  # fmt: skip


def test_the_yaml_mapping_form_works_from_python():
    from lm.config import ConfigError
    from lm.optim import AdamConfig
    from lm.optim.schedules import CosineLrSchedule

    config = AdamConfig(lr_schedule={"type": "cosine", "exponent": 2.0})
    assert config.lr_schedule == CosineLrSchedule(exponent=2.0)
    with pytest.raises(ConfigError, match=r"lr_schedule.type: unknown LrSchedule type 'cosin'"):
        AdamConfig(lr_schedule={"type": "cosin"})
