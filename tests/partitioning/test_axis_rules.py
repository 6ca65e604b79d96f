import pytest

from lm.partitioning import compute_axis_mapping, parameter_axis_mapping, validate_mapping


def test_reference_new_style_axis_mapping():
    compute = compute_axis_mapping(tensor_parallel_axes=["a1", "a2"])
    assert compute == {"batch": ("replica", "data"), "a1": "model", "a2": "model"}
    params = parameter_axis_mapping(compute)
    assert params == {"embed": "data", "a1": "model", "a2": "model", "batch": ("replica", "data")}


def test_default_mapping_is_dp_plus_fsdp_over_embed():
    compute = compute_axis_mapping()
    assert compute == {"batch": ("replica", "data")}
    assert parameter_axis_mapping(compute) == {"batch": ("replica", "data"), "embed": "data"}


def test_fsdp_axis_list_and_none():
    compute = compute_axis_mapping()
    assert parameter_axis_mapping(compute, fsdp_axis=["embed", "mlp"])["mlp"] == "data"
    assert "embed" not in parameter_axis_mapping(compute, fsdp_axis=None)


def test_advanced_mode_and_parameter_overrides():
    compute = compute_axis_mapping(axis_resources={"heads": "model", "vocab": ["model"]})
    assert compute == {"heads": "model", "vocab": ("model",), "batch": ("replica", "data")}
    params = parameter_axis_mapping(
        compute, fsdp_axis="embed", parameter_axis_resources={"heads": ("model", "data")}
    )
    assert params["heads"] == ("model", "data")
    assert params["embed"] == "data"


def test_tensor_parallel_overrides_axis_resources_with_warning(caplog):
    with caplog.at_level("WARNING"):
        compute = compute_axis_mapping(tensor_parallel_axes=["mlp"], axis_resources={"mlp": "data"})
    assert compute["mlp"] == "model"
    assert "overrides axis_resources" in caplog.text


def test_unknown_mesh_axis_is_rejected():
    with pytest.raises(ValueError, match="unknown mesh axis 'modle'"):
        validate_mapping({"mlp": "modle"}, field="trainer.axis_resources")


def test_check_divisible_names_parameter_axis_and_mesh_axes():
    import haliax as hax
    import jax
    import jax.numpy as jnp

    from lm.partitioning import check_divisible

    Embed, Heads = hax.Axis("embed", 32), hax.Axis("heads", 6)
    params = {"attn": hax.zeros((Embed, Heads)), "scale": jnp.zeros(3)}
    abstract = jax.eval_shape(lambda: params)
    mesh = {"replica": 2, "data": 2, "model": 2}
    check_divisible(abstract, {"embed": ("replica", "data"), "heads": "model"}, mesh)
    with pytest.raises(ValueError, match=r"\['attn'\] has axis 'heads' of size 6.*\['model'\] \(4"):
        check_divisible(params, {"heads": "model"}, {**mesh, "model": 4})
    with pytest.raises(ValueError, match=r"'embed' of size 32.*\['replica', 'data'\] \(64"):
        check_divisible(params, {"embed": ("replica", "data")}, {"replica": 8, "data": 8})
