import re

import numpy as np
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


def test_tensor_parallel_axes_agreeing_with_axis_resources_is_no_override(caplog):
    with caplog.at_level("WARNING"):
        compute = compute_axis_mapping(
            tensor_parallel_axes=["mlp", "heads"],
            axis_resources={"mlp": ["model"], "heads": "model"},
        )
    assert compute["mlp"] == "model"
    assert caplog.records == []


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
    with pytest.raises(
        ValueError, match=r"parameter attn has axis 'heads' of size 6.*\['model'\] \(4"
    ):
        check_divisible(params, {"heads": "model"}, {**mesh, "model": 4})
    with pytest.raises(ValueError, match=r"'embed' of size 32.*\['replica', 'data'\] \(64"):
        check_divisible(params, {"embed": ("replica", "data")}, {"replica": 8, "data": 8})


# --- two logical axes of one parameter on one mesh axis (PAR-02/PAR-04) ---------------------


def _tiny_models():
    from lm.models import Gpt2Config, LlamaConfig

    gpt2 = Gpt2Config(seq_len=16, hidden_dim=32, num_layers=2, num_heads=4)
    llama = LlamaConfig(
        seq_len=16, hidden_dim=32, intermediate_dim=48, num_layers=2, num_heads=4, num_kv_heads=2
    )
    return {"gpt2": gpt2, "llama": llama}


def _shapes(config):
    import haliax as hax
    import jax

    from lm.partitioning import abstract_shapes

    return abstract_shapes(lambda: config.build(hax.Axis("vocab", 64), key=jax.random.PRNGKey(0)))


def test_check_distinct_mesh_axes_names_parameter_axes_mesh_axis_and_fields():
    import haliax as hax
    import jax

    from lm.partitioning import check_distinct_mesh_axes

    Embed, Mlp, Heads = hax.Axis("embed", 8), hax.Axis("mlp", 16), hax.Axis("heads", 4)
    params = {"mlp": {"up": hax.zeros((Embed, Mlp))}, "norm": hax.zeros(Embed)}
    abstract = jax.eval_shape(lambda: params)
    check_distinct_mesh_axes(abstract, {"embed": "data", "mlp": "model"})
    check_distinct_mesh_axes(abstract, {"embed": "data"})
    check_distinct_mesh_axes({"norm": params["norm"]}, {"embed": "data", "mlp": "data"})
    with pytest.raises(ValueError) as caught:
        check_distinct_mesh_axes(abstract, {"embed": "data", "mlp": "data"})
    message = str(caught.value)
    assert "parameter mlp.up has axes 'embed' ('data') and 'mlp' ('data')" in message
    assert "both shards over mesh axis 'data'" in message
    assert "trainer.fsdp_axis" in message and "trainer.axis_resources" in message
    # a tuple mapping shares a mesh axis too; the hint follows the mesh axis
    with pytest.raises(ValueError, match=r"over mesh axis 'model'.*trainer.tensor_parallel_axes"):
        check_distinct_mesh_axes(
            {"w": hax.zeros((Heads, Mlp))}, {"heads": ("replica", "model"), "mlp": "model"}
        )
    with pytest.raises(ValueError, match="compute axis mapping"):
        check_distinct_mesh_axes(
            abstract, {"embed": "model", "mlp": "model"}, mapping_name="compute axis mapping"
        )


@pytest.mark.parametrize(
    "model, trainer_fields, axes, mesh_axis",
    [
        ("gpt2", {"fsdp_axis": ["embed", "mlp"]}, ("embed", "mlp"), "data"),
        ("llama", {"fsdp_axis": ["embed", "mlp"]}, ("embed", "mlp"), "data"),
        ("gpt2", {"tensor_parallel_axes": ["heads", "head_size"]}, ("heads", "head_size"), "model"),
        (
            "llama",
            {"tensor_parallel_axes": ["kv_head", "head_size"]},
            ("kv_head", "head_size"),
            "model",
        ),
        ("llama", {"fsdp_axis": ["vocab", "embed"]}, ("vocab", "embed"), "data"),
    ],
)
def test_shared_mesh_axis_in_a_model_is_found_before_jax_fails(
    model, trainer_fields, axes, mesh_axis
):
    """The train_lm crashes of `--trainer.fsdp_axis=[embed, mlp]` and
    `--trainer.tensor_parallel_axes=[heads, head_size]`: building the model under the mapping
    fails inside jax (DuplicateSpecError); `abstract_shapes` ignores the mapping, and the
    check names the parameter instead."""
    import equinox as eqx
    import haliax as hax
    import jax
    from jax.sharding import Mesh

    from lm.partitioning import check_distinct_mesh_axes

    compute = compute_axis_mapping(tensor_parallel_axes=trainer_fields.get("tensor_parallel_axes"))
    params = parameter_axis_mapping(compute, fsdp_axis=trainer_fields.get("fsdp_axis", "embed"))
    config = _tiny_models()[model]
    devices = np.asarray(jax.devices()[:8]).reshape(1, 4, 2)
    with hax.set_mesh(Mesh(devices, ("replica", "data", "model"))), hax.axis_mapping(params):
        with pytest.raises(Exception, match="duplicate entries"):  # jax DuplicateSpecError
            eqx.filter_eval_shape(config.build, hax.Axis("vocab", 64), key=jax.random.PRNGKey(0))
        shapes = _shapes(config)
    with pytest.raises(ValueError) as caught:
        check_distinct_mesh_axes(shapes, params)
    message = str(caught.value)
    named = re.match(r"parameter [\w.]+ has axes '(\w+)' \(.*?\) and '(\w+)' \(", message)
    assert named is not None, message
    assert set(named.groups()) == set(axes)
    assert f"both shards over mesh axis '{mesh_axis}'" in message
    field = "trainer.fsdp_axis" if mesh_axis == "data" else "trainer.tensor_parallel_axes"
    assert field in message and "trainer.axis_resources" in message


@pytest.mark.parametrize("model, tp", [("gpt2", ["mlp", "heads"]), ("llama", ["mlp", "kv_head"])])
def test_default_and_usual_mappings_pass(model, tp):
    from lm.partitioning import check_distinct_mesh_axes

    shapes = _shapes(_tiny_models()[model])
    for compute in (compute_axis_mapping(), compute_axis_mapping(tensor_parallel_axes=tp)):
        for fsdp in ("embed", None):
            check_distinct_mesh_axes(shapes, parameter_axis_mapping(compute, fsdp_axis=fsdp))
            check_distinct_mesh_axes(shapes, compute, mapping_name="compute axis mapping")


@pytest.mark.parametrize(
    "axis_resources, batch_axis, clash",
    [
        ({"position": "data"}, "batch", ("position", "data")),
        ({"embed": ["replica"]}, "batch", ("embed", "replica")),
        ({"mlp": ["model", "data"]}, "batch", ("mlp", "data")),
        ({"heads": "model", "mlp": "model"}, "batch", None),
        ({"batch": "data"}, "batch", None),  # the batch axis itself
        ({"batch": "data"}, "rows", ("batch", "data")),  # another batch axis name
    ],
)
def test_batch_axis_clash_finds_compute_axes_on_the_batch_mesh_axes(
    axis_resources, batch_axis, clash
):
    from lm.partitioning import batch_axis_clash

    compute = compute_axis_mapping(batch_axis=batch_axis, axis_resources=axis_resources)
    found = batch_axis_clash(compute, batch_axis=batch_axis)
    if clash is None:
        assert found is None
        return
    axis, mesh_axis = clash
    assert found is not None and found[0] == axis
    assert f"batch axis {batch_axis!r} is always split over ['replica', 'data']" in found[1]
    assert f"({mesh_axis!r} here)" in found[1]
    assert f"trainer.parameter_axis_resources ({{{axis}: {mesh_axis}}})" in found[1]


def test_an_activation_axis_on_the_batch_mesh_axis_fails_inside_jax():
    """What the check spares the user: a batch laid out by the compute mapping with 'position'
    on 'data' is a DuplicateSpecError in jax (the data loader's first batch)."""
    import haliax as hax
    import jax
    from jax.sharding import Mesh

    from lm.partitioning import batch_axis_clash

    compute = compute_axis_mapping(axis_resources={"position": "data"})
    assert batch_axis_clash(compute, batch_axis="batch") is not None
    Batch, Pos = hax.Axis("batch", 8), hax.Axis("position", 16)
    devices = np.asarray(jax.devices()[:8]).reshape(1, 4, 2)
    with hax.set_mesh(Mesh(devices, ("replica", "data", "model"))):
        with pytest.raises(Exception, match="duplicate entries"):
            hax.named_jit(lambda: hax.zeros((Batch, Pos)), out_axis_resources=compute)()


def _params():
    import haliax as hax
    import jax

    Embed, Hidden = hax.Axis("hidden", 8), hax.Axis("point", 2)
    return {"w": jax.ShapeDtypeStruct((8, 2), "float32"), "named": hax.zeros((Embed, Hidden))}


def test_mapped_axes_no_parameter_has_are_reported_with_a_did_you_mean():
    """The default fsdp_axis `embed`, or a typo, on a model without that axis would shard
    nothing; only sharding fields for parameters alone make it an error."""
    from lm.partitioning import check_mapped_axes_exist

    warnings = check_mapped_axes_exist(
        _params(),
        fsdp_axis="embed",
        tensor_parallel_axes=["hidden"],
        axis_resources={"hiddn": "model", "vocab": "model", "batch": ("replica", "data")},
    )
    assert len(warnings) == 3
    assert warnings[0].startswith(
        "trainer.fsdp_axis: 'embed' names no axis of the model's parameters (they have: "
        "hidden, point), so it shards no parameter"
    )
    assert "trainer.axis_resources: 'hiddn' names no axis" in warnings[1]
    assert "did you mean 'hidden'?" in warnings[1]
    assert "'vocab'" in warnings[2] and "did you mean" not in warnings[2]
    assert check_mapped_axes_exist(_params(), fsdp_axis=["hidden", "point"]) == []
    with pytest.raises(ValueError, match=r"parameter_axis_resources: 'pont'.*did you mean 'point'"):
        check_mapped_axes_exist(_params(), parameter_axis_resources={"pont": "data"})
    # a model of plain arrays has no logical axes to check
    assert check_mapped_axes_exist({"w": np.zeros(3)}, fsdp_axis="embed") == []


# --- what the user wrote, checked before the derivation can hide it --------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("model", None),
        (("replica", "data"), None),
        (["model"], None),
        ((), None),  # replicated
        ("modle", "got 'modle', expected a mesh axis ('replica', 'data' or 'model') or a list"),
        ("dta", "did you mean 'data'?"),
        ("modle", "did you mean 'model'?"),
        (("model", "dta"), "got [model, dta], where 'dta' is not a mesh axis"),
        (["data", "data"], "got [data, data], which lists mesh axis 'data' twice"),
        (3, "got 3, expected a mesh axis"),
    ],
)
def test_mapping_entry_problem_names_the_bad_mesh_axis_with_a_did_you_mean(value, expected):
    from lm.partitioning import mapping_entry_problem

    problem = mapping_entry_problem(value)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem, problem
    assert "did you mean" not in (mapping_entry_problem("xyz") or "")


def test_entries_the_derivation_would_always_replace_are_found():
    """`axis_resources.<batch axis>` (always (replica, data)) and a
    `parameter_axis_resources` entry for an fsdp axis (always data) never take effect."""
    from lm.partitioning import overridden_entries

    assert overridden_entries(axis_resources={"batch": ("replica", "data")}) == []
    assert overridden_entries(parameter_axis_resources={"embed": "data", "mlp": "model"}) == []
    assert overridden_entries(fsdp_axis=None, parameter_axis_resources={"embed": "model"}) == []
    assert overridden_entries(axis_resources={"batch": "modle"}) == []  # reported as a typo

    ((field, axis, message),) = overridden_entries(axis_resources={"batch": "data"})
    assert (field, axis) == ("axis_resources", "batch")
    assert message.startswith("got 'data', but the batch axis ('batch', trainer.batch_axis)")
    assert "always split over [replica, data]" in message

    found = overridden_entries(
        fsdp_axis=["embed", "mlp"],
        parameter_axis_resources={"embed": ["replica", "data"], "mlp": "model", "heads": "data"},
    )
    assert [(f, a) for f, a, _ in found] == [
        ("parameter_axis_resources", "embed"),
        ("parameter_axis_resources", "mlp"),
    ]
    assert found[0][2].startswith(
        "got [replica, data], but trainer.fsdp_axis (['embed', 'mlp']) also maps 'embed' for "
        "parameters, to 'data'"
    )
    assert "set trainer.fsdp_axis: null (or leave 'embed' out of it)" in found[0][2]


def test_fsdp_overriding_a_shared_entry_for_parameters_is_a_warning():
    from lm.partitioning import fsdp_override_warnings

    (warning,) = fsdp_override_warnings(axis_resources={"mlp": "model", "embed": "model"})
    assert warning.startswith(
        "trainer.fsdp_axis overrides trainer.axis_resources for 'embed' in the parameter "
        "mapping: parameters and optimizer state map embed -> data, activations embed -> model"
    )
    assert "trainer.parameter_axis_resources ({embed: data})" in warning
    (warning,) = fsdp_override_warnings(fsdp_axis=["embed"], tensor_parallel_axes=["embed"])
    assert warning.startswith(
        "trainer.fsdp_axis overrides trainer.tensor_parallel_axes for 'embed'"
    )
    # the layout said outright, FSDP off, or an axis FSDP leaves alone: nothing to say
    said = {"embed": "data"}
    shared = {"embed": "model"}
    assert fsdp_override_warnings(axis_resources=shared, parameter_axis_resources=said) == []
    assert fsdp_override_warnings(fsdp_axis=None, axis_resources=shared) == []
    assert fsdp_override_warnings(axis_resources={"mlp": "model"}) == []


def test_a_mesh_axis_nothing_is_split_over_is_reported():
    from lm.partitioning import unused_mesh_axes

    compute = compute_axis_mapping()
    params = parameter_axis_mapping(compute)
    (warning,) = unused_mesh_axes({"replica": 1, "data": 4, "model": 2}, compute, params)
    assert warning.startswith(
        "mesh axis 'model' has 2 devices (trainer.model_axis_size = 2), but no logical axis is "
        "mapped to it by trainer.tensor_parallel_axes, trainer.axis_resources"
    )
    assert "set trainer.tensor_parallel_axes" in warning
    assert "trainer.model_axis_size: 1" in warning
    assert unused_mesh_axes({"replica": 1, "data": 8, "model": 1}, compute, params) == []
    # a mesh axis only the parameters are split over is used (FSDP-like over 'model')
    params_on_model = parameter_axis_mapping(compute, parameter_axis_resources={"mlp": "model"})
    assert unused_mesh_axes({"replica": 2, "data": 2, "model": 2}, compute, params_on_model) == []
    tp = compute_axis_mapping(tensor_parallel_axes=["mlp"])
    assert unused_mesh_axes({"data": 4, "model": 2}, tp, parameter_axis_mapping(tp)) == []
    (replica,) = unused_mesh_axes({"replica": 2, "data": 4}, {"batch": "data"})
    assert replica.startswith("mesh axis 'replica' has 2 devices (trainer.replica_ici_axis_size")
