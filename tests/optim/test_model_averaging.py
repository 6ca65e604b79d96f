"""Model averaging: the reference cases (REFERENCE_CASES.md §3) and the EMA formulas."""

import draccus
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.optim import (
    EmaDecaySqrtConfig,
    EmaDecaySqrtModelAveraging,
    EmaModelAveraging,
    EmaModelAveragingConfig,
    ModelAveragingConfig,
)


class Model(eqx.Module):
    w: jax.Array
    step_count: jax.Array  # an int leaf: not averaged, taken from the newest model


def model(value: float, count: int = 0) -> Model:
    return Model(w=jnp.full((2,), value, jnp.float32), step_count=jnp.asarray(count, jnp.int32))


def test_registry_names_and_default():
    assert set(ModelAveragingConfig.get_known_choices()) == {"ema", "ema_decay_sqrt"}
    assert ModelAveragingConfig.default_choice_name() == "ema"
    assert draccus.decode(ModelAveragingConfig, {"beta": 0.9}) == EmaModelAveragingConfig(0.9)
    decoded = draccus.decode(
        ModelAveragingConfig, {"type": "ema_decay_sqrt", "switch_step": 5, "decay_steps": 10}
    )
    assert decoded == EmaDecaySqrtConfig(beta=0.999, switch_step=5, decay_steps=10)


def test_ema_formula():
    beta = 0.9
    avg = EmaModelAveragingConfig(beta=beta).create(model(0.0))
    expected = 0.0
    for t, value in enumerate([1.0, 3.0, -2.0, 5.0]):
        avg = avg.update(model(value, t + 1), t)
        expected = beta * expected + (1 - beta) * value
        np.testing.assert_allclose(np.asarray(avg.model_params.w), expected, atol=1e-6)
    assert int(avg.model_params.step_count) == 4


def test_ema_decay_sqrt_one_update():
    # beta=0.5, switch=5, decay_steps=10: one update of 0 -> 1 at step 0.
    avg = EmaDecaySqrtConfig(beta=0.5, switch_step=5, decay_steps=10).create(model(0.0))
    avg = avg.update(model(1.0), step=0)
    np.testing.assert_allclose(np.asarray(avg.model_params.w), 1.0)
    assert float(avg.tot_weight) == 0.5


def test_ema_decay_sqrt_freezes_after_decay():
    # beta=0, switch=0, decay=4: update with 1 at step 0, then with 10 at step 4.
    avg = EmaDecaySqrtConfig(beta=0.0, switch_step=0, decay_steps=4).create(model(0.0))
    avg = avg.update(model(1.0), step=0)
    avg = avg.update(model(10.0), step=4)
    np.testing.assert_allclose(np.asarray(avg.model_params.w), 1.0)
    assert float(avg.tot_weight) == 1.0


def test_ema_decay_sqrt_formula_is_jittable():
    beta, switch, decay = 0.8, 3, 4
    avg = EmaDecaySqrtConfig(beta=beta, switch_step=switch, decay_steps=decay).create(model(0.0))
    update = eqx.filter_jit(lambda a, m, s: a.update(m, s))
    values = [2.0, -1.0, 4.0, 0.5, 3.0, 7.0, 1.0, 9.0, 6.0]
    tot, expected = 0.0, 0.0
    for step, value in enumerate(values):
        avg = update(avg, model(value), jnp.asarray(step))
        s = 1.0 if step < switch else 1.0 - np.sqrt(np.clip((step - switch) / decay, 0, 1))
        a = (1 - beta) * s
        tot = (1 - a) * tot + a
        alpha = a / tot if tot > 0 else 0.0
        expected = expected + alpha * (value - expected)
        np.testing.assert_allclose(np.asarray(avg.model_params.w), expected, rtol=1e-5)
        np.testing.assert_allclose(float(avg.tot_weight), tot, rtol=1e-6)
    assert isinstance(avg, EmaDecaySqrtModelAveraging)


def test_averaging_state_round_trips_through_serialisation(tmp_path):
    avg = EmaDecaySqrtConfig(beta=0.5, switch_step=1, decay_steps=2).create(model(0.0))
    avg = avg.update(model(3.0), 0)
    path = tmp_path / "avg.eqx"
    eqx.tree_serialise_leaves(path, avg)
    template = EmaDecaySqrtConfig(beta=0.5, switch_step=1, decay_steps=2).create(model(0.0))
    loaded = eqx.tree_deserialise_leaves(path, template)
    assert float(loaded.tot_weight) == float(avg.tot_weight)
    np.testing.assert_array_equal(np.asarray(loaded.model.w), np.asarray(avg.model.w))
    assert isinstance(EmaModelAveragingConfig().create(model(0.0)), EmaModelAveraging)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            lambda: EmaModelAveragingConfig(beta=1.0),
            r"beta: got 1.0, expected a number in \[0, 1\)",
        ),
        (lambda: EmaDecaySqrtConfig(beta=-0.1), r"beta: got -0.1, expected a number in \[0, 1\)"),
        (lambda: EmaDecaySqrtConfig(switch_step=-1), r"switch_step: got -1, expected a step >= 0"),
        (
            lambda: EmaDecaySqrtConfig(decay_steps=0),
            r"decay_steps: got 0, expected a number of steps >= 1",
        ),
    ],
)
def test_validation(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()
