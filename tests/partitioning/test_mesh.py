import jax
import pytest

import lm.config
from lm.config import SetupConfigError
from lm.partitioning import create_mesh, resolve_mesh_shape
from lm.trainer import TrainerConfig


def test_default_is_all_data_parallel():
    shape = resolve_mesh_shape(8)
    assert (shape.replica, shape.data, shape.model) == (1, 8, 1)
    assert shape.data_axis_size == 8


def test_tp_and_replicas_within_a_slice():
    shape = resolve_mesh_shape(8, replica_ici_axis_size=2, model_axis_size=2)
    assert (shape.replica_ici, shape.data_ici, shape.model) == (2, 2, 2)
    assert shape.data_axis_size == 4


def test_fill_sizes():
    assert resolve_mesh_shape(8, model_axis_size=-1).model == 8
    assert resolve_mesh_shape(8, model_axis_size=2, replica_ici_axis_size=-1).replica_ici == 4
    shape = resolve_mesh_shape(8, 2, replica_dcn_axis_size=-1)
    assert (shape.replica_dcn, shape.data_dcn, shape.data_ici) == (2, 1, 4)


def test_multislice_sizes_follow_par05():
    shape = resolve_mesh_shape(
        16, 4, replica_ici_axis_size=1, model_axis_size=2, replica_dcn_axis_size=2
    )
    assert shape.data_ici == 2 and shape.data_dcn == 2 and shape.replica == 2
    assert shape.data_axis_size == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(model_axis_size=3),
            r"model_axis_size \(3\) must divide .* choose one of \[1, 2, 4, 8\]",
        ),
        (dict(replica_ici_axis_size=4, model_axis_size=4), "must divide the number of devices"),
        (dict(model_axis_size=0), "positive integer or -1"),
        (dict(replica_ici_axis_size=-1, model_axis_size=-1), "cannot both be -1"),
        (  # was a ZeroDivisionError: the fill came out 0
            dict(replica_ici_axis_size=16, model_axis_size=-1),
            r"replica_ici_axis_size \(16\) must divide .* for the other size's -1 to fill",
        ),
        (dict(replica_ici_axis_size=-1, model_axis_size=3), r"model_axis_size \(3\) must divide"),
    ],
)
def test_bad_sizes_say_what_fits(kwargs, message):
    """SetupConfigErrors: exit status 2, as for any configuration problem."""
    with pytest.raises(SetupConfigError, match=message):
        resolve_mesh_shape(8, **kwargs)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model_axis_size", "0"], r"model_axis_size \[.*\]: got 0, expected a positive"),
        (["--replica_dcn_axis_size", "-2"], r"replica_dcn_axis_size \[.*\]: got -2, expected"),
        (
            ["--model_axis_size", "-1", "--replica_ici_axis_size", "-1"],
            r"model_axis_size \[.*\]: and replica_ici_axis_size cannot both be -1",
        ),
    ],
)
def test_sizes_that_fit_no_device_count_are_refused_when_parsed(args, message):
    with pytest.raises(lm.config.ConfigError, match=message):
        lm.config.parse(TrainerConfig, args=[*args, "--require_accelerator", "false"])


def test_create_mesh_on_fake_devices():
    mesh = create_mesh(resolve_mesh_shape(8, model_axis_size=2))
    assert dict(mesh.shape) == {"replica": 1, "data": 4, "model": 2}
    assert len(jax.devices()) == 8
