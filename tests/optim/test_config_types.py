"""Optimizer configs built in Python: a value of the wrong type is a problem at its field,
as a YAML's would be, not a bare `TypeError` from a comparison."""

import numpy as np
import pytest

from lm.config import ConfigProblems, FieldError
from lm.optim import AdamConfig, AdoptConfig, LionConfig, MuonConfig, SgdConfig


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (AdamConfig, dict(learning_rate="1e-3"), "learning_rate: got '1e-3', expected a number, not a str"),
        (AdamConfig, dict(warmup="0.1"), "warmup: got '0.1', expected an integer or a number, not a str"),
        (AdamConfig, dict(max_grad_norm="1"), "max_grad_norm: got '1', expected a number or null, not a str"),
        (AdamConfig, dict(nesterov="yes"), "nesterov: got 'yes', expected a boolean (true or false), not a str"),
        (AdamConfig, dict(schedule_steps=10.0), "schedule_steps: got 10.0, expected an integer or null, not a float"),
        (LionConfig, dict(beta2=None), "beta2: got null, expected a number, not a NoneType"),
        (MuonConfig, dict(backend_steps=2.5), "backend_steps: got 2.5, expected an integer, not a float"),
        (SgdConfig, dict(momentum="0.9"), "momentum: got '0.9', expected a number, not a str"),
        (AdoptConfig, dict(epsilon=[1e-6]), "epsilon: got [1e-06], expected a number, not a list"),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_is_a_field_error(cls, kwargs, message):
    with pytest.raises(FieldError) as caught:
        cls(**kwargs)
    assert str(caught.value) == message


def test_the_other_fields_are_still_checked():
    """The value checks run with the wrongly typed fields at their defaults and report the
    other fields' problems, in field order; none that compares with a wrongly typed field."""
    with pytest.raises(ConfigProblems) as caught:
        AdamConfig(learning_rate="1e-3", beta1=2.0, warmup="0.1")
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("learning_rate", "got '1e-3', expected a number, not a str"),
        ("warmup", "got '0.1', expected an integer or a number, not a str"),
        ("beta1", "got 2.0, expected a number in [0, 1)"),
    ]
    # nesterov's check compares with momentum, which is of the wrong type: not judged
    with pytest.raises(FieldError) as caught:
        SgdConfig(momentum="0", nesterov=True)
    assert str(caught.value) == "momentum: got '0', expected a number, not a str"


def test_numbers_of_any_numeric_type_are_accepted():
    config = AdamConfig(learning_rate=np.float32(1e-3), beta1=0, nesterov=np.bool_(True))
    assert config.learning_rate == pytest.approx(1e-3) and config.beta1 == 0
