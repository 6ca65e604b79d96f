"""The optimizer registry, its YAML examples and draccus round trips."""

import dataclasses
import pathlib

import draccus
import jax.numpy as jnp
import optax
import pytest
import yaml

import lm.config
import lm.tracker
from lm.optim import (
    AdamConfig,
    AdoptConfig,
    LionConfig,
    MuonConfig,
    OptimizerConfig,
    SgdConfig,
    SkipStepConfig,
)
from lm.optim.model_averaging import ModelAveragingConfig

EXAMPLES = sorted((pathlib.Path(__file__).parents[2] / "config" / "optim").glob("*.yaml"))


def test_registered_names():
    assert set(OptimizerConfig.get_known_choices()) == {"adam", "lion", "muon", "adopt", "sgd"}
    assert OptimizerConfig.default_choice_name() == "adam"
    assert draccus.decode(OptimizerConfig, {}) == AdamConfig()
    classes = {"adam": AdamConfig, "lion": LionConfig, "muon": MuonConfig, "adopt": AdoptConfig,
               "sgd": SgdConfig}  # fmt: skip
    for name, cls in classes.items():
        assert OptimizerConfig.get_choice_class(name) is cls


def test_common_defaults():
    c = AdamConfig()
    assert (c.learning_rate, c.weight_decay, c.min_lr_ratio) == (6e-4, 0.1, 0.1)
    assert (c.warmup, c.decay, c.rewarmup, c.cooldown) == (0.01, None, 0.0, None)
    assert (c.cycle_length, c.cycles, c.lr_schedule, c.haps) == (None, None, "cosine", None)
    assert (c.weight_decay_modules, c.default_weight_decay_mask, c.schedule_steps) == (
        None,
        None,
        None,
    )
    assert (c.beta1, c.beta2, c.epsilon, c.max_grad_norm, c.nesterov) == (
        0.9,
        0.95,
        1e-8,
        1.0,
        False,
    )
    assert (c.update_rms_clipping, c.clip_update_norm, c.skip_bad_steps, c.adamc_weight_decay) == (
        None, None, False, False,
    )  # fmt: skip


def test_examples_exist_for_every_optimizer():
    types = {yaml.safe_load(p.read_text())["type"] for p in EXAMPLES}
    assert types == set(OptimizerConfig.get_known_choices())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses_round_trips_and_builds(path):
    config = draccus.decode(OptimizerConfig, yaml.safe_load(path.read_text()))
    assert draccus.decode(OptimizerConfig, draccus.encode(config, OptimizerConfig)) == config
    steps = max(config.schedule_steps or 0, 1000)
    tx = config.build(steps)
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
    with lm.tracker.capture_metrics():  # skip-step and clipping log metrics from the update
        updates, _ = tx.update(params, tx.init(params), params, loss=jnp.float32(1.0))
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    assert all(jnp.all(jnp.isfinite(u)) for u in updates.values())


def test_skip_bad_steps_yaml_forms():
    decode = lambda v: draccus.decode(OptimizerConfig, {"skip_bad_steps": v})  # noqa: E731
    assert SkipStepConfig.from_bool_int_or_config(decode(True).skip_bad_steps) == SkipStepConfig()
    assert SkipStepConfig.from_bool_int_or_config(decode(False).skip_bad_steps) is None
    assert SkipStepConfig.from_bool_int_or_config(decode(64).skip_bad_steps) == SkipStepConfig(64)
    mapped = decode({"rolling_interval_length": 32, "sigma_factor": 4.0}).skip_bad_steps
    assert mapped == SkipStepConfig(32, 4.0)
    clip = draccus.decode(OptimizerConfig, {"clip_update_norm": {"sigma_factor": 2.0}})
    assert clip.clip_update_norm.rolling_interval_length == 128


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (AdamConfig, {"beta2": 1.0}, r"beta2: got 1.0, expected a number in \[0, 1\)"),
        (
            AdamConfig,
            {"max_grad_norm": -1.0},
            r"max_grad_norm: got -1.0, expected a finite number > 0, or 0/null",
        ),
        (AdamConfig, {"max_grad_norm": float("inf")}, r"max_grad_norm: got inf, expected a finite"),
        (AdamConfig, {"epsilon": 0.0}, r"epsilon: got 0.0, expected a finite number > 0"),
        (MuonConfig, {"epsilon": -1.0}, r"epsilon: got -1.0, expected a finite number > 0"),
        (MuonConfig, {"muon_epsilon": 0.0}, r"muon_epsilon: got 0.0, expected a finite number"),
        (MuonConfig, {"adam_lr": float("inf")}, r"adam_lr: got inf, expected a finite number"),
        (LionConfig, {"beta1": 1.5}, r"beta1: got 1.5, expected a number in \[0, 1\)"),
        (AdoptConfig, {"epsilon": 0.0}, r"epsilon: got 0.0, expected a number > 0"),
        (
            SgdConfig,
            {"momentum": 0.0, "nesterov": True},
            r"nesterov: needs momentum > 0 \(got 0.0\)",
        ),
        (MuonConfig, {"backend_steps": 0}, r"backend_steps: got 0, expected an integer >= 1"),
        (MuonConfig, {"adam_lr": 0.0}, r"adam_lr: got 0.0, expected a finite number > 0"),
    ],
)
def test_optimizer_field_validation(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_max_grad_norm_none_or_zero_disables_clipping():
    params = {"w": jnp.full((4,), 100.0)}
    for value in (None, 0.0):
        config = SgdConfig(learning_rate=1.0, warmup=0.0, momentum=0.0, max_grad_norm=value,
                           lr_schedule="constant")  # fmt: skip
        tx = config.build(10)
        updates, _ = tx.update(params, tx.init(params), params)
        assert float(updates["w"][0]) == -100.0
    tx = SgdConfig(learning_rate=1.0, warmup=0.0, momentum=0.0, lr_schedule="constant").build(10)
    updates, _ = tx.update(params, tx.init(params), params)
    assert abs(float(jnp.linalg.norm(updates["w"])) - 1.0) < 1e-6


# --- where config problems are reported -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Run:
    optimizer: OptimizerConfig = dataclasses.field(default_factory=AdamConfig)
    model_averaging: ModelAveragingConfig | None = None


def test_each_optimizer_problem_is_reported_at_its_field_and_where_it_was_set(config_problems):
    found = config_problems(
        _Run,
        "optimizer:\n  type: adam\n  learning_rate: 0.0\n  beta1: 1.5\n  cycles: 0\n",
        "--optimizer.warmup",
        "-3",
    )
    assert found == {
        "optimizer.learning_rate": ("run.yaml:3", "got 0.0, expected a finite number > 0"),
        "optimizer.warmup": (
            "--optimizer.warmup -3",
            "got -3, expected a number >= 0: a fraction <= 1.0 of the cycle or a whole "
            "number of steps",
        ),
        "optimizer.cycles": ("run.yaml:5", "got 0, expected an int >= 1 or a list of steps"),
        "optimizer.beta1": ("run.yaml:4", "got 1.5, expected a number in [0, 1)"),
    }


@pytest.mark.parametrize(
    "yaml_text, path, message",
    [
        ("optimizer:\n  cycles: 2\n  cycle_length: 10\n", "optimizer.cycles", "Can't use both"),
        ("optimizer:\n  lr_schedule: cosin\n", "optimizer.lr_schedule", "got 'cosin'"),
        (
            "optimizer:\n  lr_schedule: {type: power, batch_size: 0, seq_length: 8}\n",
            "optimizer.lr_schedule.batch_size",
            "got 0, expected a positive integer",
        ),
        (
            "optimizer:\n  lr_schedule: inv\n  min_lr_ratio: 0.0\n",
            "optimizer.min_lr_ratio",
            "got 0.0, expected a number > 0 with lr_schedule 'inv'",
        ),
        ("optimizer:\n  skip_bad_steps: -4\n", "optimizer.skip_bad_steps", "got -4, expected"),
        (
            "optimizer:\n  skip_bad_steps: {rolling_interval_length: 1}\n",
            "optimizer.skip_bad_steps.rolling_interval_length",
            "got 1, expected an integer >= 2",
        ),
        (
            "optimizer:\n  clip_update_norm: {sigma_factor: 0.0}\n",
            "optimizer.clip_update_norm.sigma_factor",
            "got 0.0, expected a number > 0",
        ),
        (
            "optimizer:\n  update_rms_clipping: 1.0\n  clip_update_norm: {}\n",
            "optimizer.clip_update_norm",
            "Cannot use both update_rms_clipping and clip_update_norm",
        ),
        (
            "optimizer:\n  type: sgd\n  momentum: 0.0\n  nesterov: true\n",
            "optimizer.nesterov",
            "needs momentum > 0",
        ),
        (
            "optimizer:\n  type: muon\n  backend_steps: 0\n",
            "optimizer.backend_steps",
            "got 0, expected an integer >= 1",
        ),
        ("optimizer:\n  weight_decay_modules: 'a(['\n", "optimizer.weight_decay_modules", "'a(['"),
        ("optimizer:\n  schedule_steps: 0\n", "optimizer.schedule_steps", "got 0, expected"),
        (
            "model_averaging:\n  type: ema_decay_sqrt\n  decay_steps: 0\n",
            "model_averaging.decay_steps",
            "got 0, expected a number of steps >= 1",
        ),
    ],
)
def test_optimizer_problems_name_the_field(config_problems, yaml_text, path, message):
    found = config_problems(_Run, yaml_text)
    assert list(found) == [path]
    location, text = found[path]
    assert location is not None and location.startswith("run.yaml:")
    assert text.startswith(message) or message in text


def test_several_problems_in_one_config_are_a_value_error_naming_each():
    with pytest.raises(ValueError) as caught:
        AdamConfig(learning_rate=0.0, beta2=1.0)
    assert isinstance(caught.value, lm.config.ConfigError)
    assert [p.path for p in caught.value.problems] == ["learning_rate", "beta2"]
