"""The optimizer registry, its YAML examples and draccus round trips."""

import pathlib

import draccus
import jax.numpy as jnp
import optax
import pytest
import yaml

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
        (AdamConfig, {"beta2": 1.0}, r"optimizer.beta2 \(1.0\) must be in \[0, 1\)"),
        (AdamConfig, {"max_grad_norm": -1.0}, r"max_grad_norm \(-1.0\) must be > 0, or 0/null"),
        (LionConfig, {"beta1": 1.5}, r"optimizer.beta1 \(1.5\)"),
        (AdoptConfig, {"epsilon": 0.0}, r"optimizer.epsilon \(0.0\) must be > 0"),
        (SgdConfig, {"momentum": 0.0, "nesterov": True}, "nesterov needs optimizer.momentum > 0"),
        (MuonConfig, {"backend_steps": 0}, r"backend_steps \(0\) must be >= 1"),
        (MuonConfig, {"adam_lr": 0.0}, r"adam_lr \(0.0\) must be > 0"),
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
