"""Restoring into other meshes/shardings, and load_checkpoint_or_initialize (reference cases)."""

import json
import logging

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ckpt_helpers import Out, assert_trees_equal, make_mlp, make_state
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from lm.checkpoint import (
    AsyncCheckpointManager,
    load_checkpoint,
    load_checkpoint_or_initialize,
    padded_axes,
    save_checkpoint,
    wait_until_finished,
)
from lm.trainer.state import saveable_state


def save(tree, path, step=0):
    manager = AsyncCheckpointManager()
    save_checkpoint(tree, step, str(path), manager=manager)
    manager.wait_until_finished()


@pytest.fixture(scope="module")
def fsdp_checkpoint(tmp_path_factory, trained_state):
    """The trained state sharded FSDP-style over all 8 fake devices, saved."""
    assert len(jax.devices()) == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = hax.shard(saveable_state(trained_state), {"embed": "data"}, mesh)
    w = sharded.model.layers[0].weight.array
    assert len({s.device for s in w.addressable_shards}) == 8
    path = tmp_path_factory.mktemp("fsdp") / "step-2"
    save(sharded, path, step=2)
    return path


def test_chunks_follow_the_saved_shards(fsdp_checkpoint):
    meta = json.loads(
        (fsdp_checkpoint / "model" / "layers" / "0" / "weight" / "zarr.json").read_text()
    )
    # weight (mlp=16, embed=8) with embed over 8 devices: one (16, 1) chunk per shard.
    assert meta["shape"] == [16, 8]
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [16, 1]
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "crc32c"]


def test_restore_onto_one_device(fsdp_checkpoint, trained_state):
    exemplar = eqx.filter_eval_shape(make_state, jax.random.PRNGKey(3))
    restored = load_checkpoint(exemplar, str(fsdp_checkpoint))
    assert_trees_equal(restored, trained_state)
    for leaf in jax.tree.leaves(restored):
        if isinstance(leaf, jax.Array):
            assert isinstance(leaf.sharding, SingleDeviceSharding)


def test_restore_onto_the_default_device(fsdp_checkpoint, trained_state):
    """Abstract leaves without a mapping land on `jax_default_device`, like `load_pretrained`."""
    exemplar = eqx.filter_eval_shape(make_state, jax.random.PRNGKey(3))
    with jax.default_device(jax.devices()[5]):
        restored = load_checkpoint(exemplar, str(fsdp_checkpoint))
    assert_trees_equal(restored, trained_state)
    arrays = [x for x in jax.tree.leaves(restored) if isinstance(x, jax.Array)]
    assert arrays and all(x.sharding == SingleDeviceSharding(jax.devices()[5]) for x in arrays)


def test_restore_onto_4way_tensor_parallel(fsdp_checkpoint, trained_state):
    tp_mesh = Mesh(np.array(jax.devices()[:4]), ("model",))
    exemplar = eqx.filter_eval_shape(make_state, jax.random.PRNGKey(3))
    restored = load_checkpoint(
        exemplar, str(fsdp_checkpoint), axis_mapping={"mlp": "model"}, mesh=tp_mesh
    )
    assert_trees_equal(restored, trained_state)
    w0 = restored.model.layers[0].weight  # axes (mlp, embed)
    assert [a.name for a in w0.axes] == ["mlp", "embed"]
    assert w0.array.sharding == NamedSharding(tp_mesh, P("model", None))
    assert {s.data.shape for s in w0.array.addressable_shards} == {(4, 8)}
    mu1 = restored.opt_state[0].mu.layers[1].weight  # axes (mlp2, mlp)
    assert mu1.array.sharding == NamedSharding(tp_mesh, P(None, "model"))
    bias_out = restored.model.layers[-1].bias
    assert bias_out.axes == (Out,)
    assert bias_out.array.sharding == NamedSharding(tp_mesh, P(None))
    step = restored.step
    assert step.sharding == NamedSharding(tp_mesh, P())


def test_restore_uses_current_mesh_and_exemplar_shardings(fsdp_checkpoint, trained_state):
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    with jax.set_mesh(mesh):
        restored = load_checkpoint(
            saveable_state(trained_state), str(fsdp_checkpoint), axis_mapping={"embed": "data"}
        )
    w0 = restored.model.layers[0].weight
    assert w0.array.sharding == NamedSharding(mesh, P(None, "data"))
    assert_trees_equal(restored, trained_state)
    # Without mapping or mesh, each leaf takes the exemplar's own sharding.
    target = hax.shard(trained_state, {"mlp": "model"}, mesh)
    again = load_checkpoint(target, str(fsdp_checkpoint))
    assert again.model.layers[0].weight.array.sharding == NamedSharding(mesh, P("model", None))


@pytest.mark.parametrize("saved_rows, target_rows", [(1004, 1001), (1001, 1008), (1004, 1008)])
def test_a_vocabulary_padded_for_another_layout_loads(tmp_path, saved_rows, target_rows):
    """lm pads `vocab` so a mesh axis splits it evenly: 1004 rows on 4-way tensor parallelism,
    1008 under 8-way FSDP, 1001 on one device, for a 1001-token vocabulary. Rows past the
    target's size are padding and dropped; missing ones are zeros; the real rows load."""
    Embed = hax.Axis("embed", 6)
    real = np.random.default_rng(0).normal(size=(1001, Embed.size)).astype(np.float32)
    saved = np.concatenate([real, np.full((saved_rows - 1001, Embed.size), 7.0, np.float32)])
    table = {"w": hax.named(jnp.asarray(saved), ("vocab", "embed"))}
    save_checkpoint(table, 1, str(tmp_path / "ck"))
    wait_until_finished()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    target = {"w": hax.zeros((hax.Axis("vocab", target_rows), Embed))}
    mapping = {"vocab": "model"} if target_rows % 4 == 0 else {}  # 1001: one device's layout
    with jax.set_mesh(mesh), padded_axes(vocab=1001):
        loaded = load_checkpoint(target, str(tmp_path / "ck"), axis_mapping=mapping)
    w = loaded["w"]
    assert w.array.shape == (target_rows, Embed.size)
    assert w.array.sharding == NamedSharding(mesh, P("model" if mapping else None, None))
    np.testing.assert_array_equal(np.asarray(w.array)[:1001], real)
    kept = min(saved_rows, target_rows)
    np.testing.assert_array_equal(np.asarray(w.array)[1001:kept], 7.0)
    np.testing.assert_array_equal(np.asarray(w.array)[kept:], 0.0)
    # any other axis must still match
    other = {"w": hax.zeros((hax.Axis("vocab", saved_rows), Embed.resize(5)))}
    with pytest.raises(ValueError, match=r"shape \(\d+, 6\) in the checkpoint"):
        load_checkpoint(other, str(tmp_path / "ck"))
    # without the real size, or with rows of the real vocabulary missing, it is a mismatch:
    # another vocabulary is never silently cut or padded
    with pytest.raises(ValueError, match="in the checkpoint"):
        load_checkpoint(target, str(tmp_path / "ck"))
    with pytest.raises(ValueError, match="in the checkpoint"), padded_axes(vocab=1005):
        load_checkpoint(target, str(tmp_path / "ck"))


def test_axis_mapping_without_mesh_is_an_error(fsdp_checkpoint, trained_state):
    with pytest.raises(ValueError, match="axis_mapping but no mesh"):
        load_checkpoint(trained_state, str(fsdp_checkpoint), axis_mapping={"mlp": "model"})


# -- load_checkpoint_or_initialize (reference cases) ---------------------------------


def _last_layer_mask(model):
    mask = jax.tree.map(lambda _: False, model)
    return eqx.tree_at(
        lambda m: m.layers[-1], mask, replace=jax.tree.map(lambda _: True, model.layers[-1])
    )


def test_load_from_checkpoint_or_initialize(tmp_path):
    k0, k1 = jax.random.split(jax.random.PRNGKey(0))
    model0 = make_mlp(k0)
    mask = _last_layer_mask(model0)
    save(eqx.filter(model0, mask), tmp_path / "step-0")

    loaded = load_checkpoint_or_initialize(make_mlp, str(tmp_path), is_checkpointed=mask)(k1)
    fresh = make_mlp(k1)
    assert not any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(loaded))
    assert_trees_equal(loaded.layers[-1], model0.layers[-1])
    assert_trees_equal(loaded.layers[0], fresh.layers[0])
    assert not np.array_equal(loaded.layers[-1].weight.array, fresh.layers[-1].weight.array)


def test_load_from_checkpoint_or_initialize_works_if_file_not_found(tmp_path):
    k1 = jax.random.PRNGKey(1)
    loaded = load_checkpoint_or_initialize(make_mlp, str(tmp_path / "nothing"))(k1)
    assert_trees_equal(loaded, make_mlp(k1))


class AB(eqx.Module):
    a: jax.Array
    b: jax.Array


def test_load_from_checkpoint_allows_partial_checkpoints(tmp_path):
    def init(key):
        ka, kb = jax.random.split(key)
        return AB(jax.random.normal(ka, (3,)), jax.random.normal(kb, (2,)))

    saved_a = jnp.arange(3.0)
    save({"a": saved_a}, tmp_path / "step-0")
    key = jax.random.PRNGKey(4)
    with pytest.raises(ValueError, match="lacks 1 leaves") as info:
        load_checkpoint_or_initialize(init, str(tmp_path))(key)
    # the way out in both spellings: the Python argument and the run config's field
    assert str(info.value).endswith(
        "pass allow_partial=True (in a run config: trainer.allow_partial_checkpoint: true)"
    )
    loaded = load_checkpoint_or_initialize(init, str(tmp_path), allow_partial=True)(key)
    np.testing.assert_array_equal(loaded.a, saved_a)
    np.testing.assert_array_equal(loaded.b, init(key).b)


def test_load_or_initialize_onto_a_mesh(tmp_path, fsdp_checkpoint):
    mesh = Mesh(np.array(jax.devices()[:4]), ("model",))
    k1 = jax.random.PRNGKey(1)
    mask = _last_layer_mask(make_mlp(k1))
    loaded = load_checkpoint_or_initialize(
        make_mlp,
        str(fsdp_checkpoint),
        is_checkpointed=mask,
        subpath="model",
        axis_mapping={"mlp": "model"},
        mesh=mesh,
    )(k1)
    expected = NamedSharding(mesh, P("model", None))
    assert loaded.layers[0].weight.array.sharding == expected  # initialized
    # The loaded last layer (out, mlp2): neither axis mapped, so replicated.
    assert loaded.layers[-1].weight.array.sharding == NamedSharding(mesh, P(None, None))
    assert loaded.layers[1].weight.array.sharding == NamedSharding(mesh, P(None, "model"))


def test_a_model_loaded_from_a_training_state_checkpoint_is_pointed_at_subpath(tmp_path):
    """A train run's checkpoint holds the model under `model/`: loading a bare model from it
    suggests `subpath="model"` (not `allow_partial=True`, which used to load nothing)."""
    from ckpt_helpers import save_state

    state = make_state(jax.random.PRNGKey(0), num_steps=1)
    save_state(state, tmp_path / "step-1", step=1)
    exemplar = make_mlp(jax.random.PRNGKey(5))
    for allow_partial in (False, True):
        with pytest.raises(ValueError, match=r"holds none of the \d+ leaves.*pass subpath='model'"):
            load_checkpoint(exemplar, str(tmp_path), allow_partial=allow_partial)
    loaded = load_checkpoint(exemplar, str(tmp_path), subpath="model")
    assert_trees_equal(loaded, state.model)


def test_a_checkpoint_holding_none_of_the_leaves_is_an_error_even_when_partial(tmp_path):
    save({"a": jnp.zeros(3), "b": jnp.ones(2)}, tmp_path / "step-0")
    with pytest.raises(ValueError, match=r"holds none of the 1 leaves.*it holds e.g. \['a', 'b'\]"):
        load_checkpoint({"c": jnp.zeros(3)}, str(tmp_path), allow_partial=True)
    # some leaves present: allow_partial keeps the target's values for the rest
    loaded = load_checkpoint(
        {"a": jnp.ones(3), "c": jnp.ones(1)}, str(tmp_path), allow_partial=True
    )
    np.testing.assert_array_equal(loaded["a"], np.zeros(3))
    np.testing.assert_array_equal(loaded["c"], np.ones(1))


def test_a_checkpoint_of_a_larger_vocabulary_is_not_loaded_cut_down(tmp_path, caplog):
    """8192 saved rows hold a 500-token vocabulary's 500 rows too: without the saved real
    size, eval_lm and the HF export loaded another tokenizer's model cut to 500 rows (a loss
    over the wrong softmax, no warning). Checkpoints record the real size; a load whose real
    size differs is an error, one padded differently for another layout still loads."""
    Embed = hax.Axis("embed", 4)
    table = {"w": hax.named(jnp.ones((1004, Embed.size)), ("vocab", "embed"))}
    save_checkpoint(
        table, 1, str(tmp_path / "ck"), extra_metadata={"real_axis_sizes": {"vocab": 1001}}
    )
    wait_until_finished()
    smaller = {"w": hax.zeros((hax.Axis("vocab", 500), Embed))}
    with pytest.raises(ValueError) as info, padded_axes(vocab=500):
        load_checkpoint(smaller, str(tmp_path / "ck"))
    assert str(info.value) == (
        f"checkpoint {tmp_path / 'ck'} was saved with a vocabulary of 1001 (metadata.json: "
        "real_axis_sizes.vocab), and what it is loaded into has 500: its embeddings belong to "
        "another tokenizer (data.tokenizer or data.vocab_size differ from the saving run's; "
        "its run's config.yaml holds them)"
    )
    same = {"w": hax.zeros((hax.Axis("vocab", 1001), Embed))}
    with padded_axes(vocab=1001):
        assert load_checkpoint(same, str(tmp_path / "ck"))["w"].array.shape == (1001, 4)
    # a checkpoint without the record (saved before it existed) loads as before, with a
    # warning that its vocabulary could not be checked
    save_checkpoint(table, 1, str(tmp_path / "old"))
    wait_until_finished()
    with caplog.at_level(logging.WARNING, logger="lm.checkpoint"), padded_axes(vocab=1001):
        assert load_checkpoint(same, str(tmp_path / "old"))["w"].array.shape == (1001, 4)
    assert "does not record the real sizes of its padded axes" in caplog.text


def test_an_exact_load_refuses_leaves_the_target_lacks(tmp_path, caplog):
    """eval_lm with `--model.use_bias false` dropped the trained biases with a warning and
    reported the loss of a model nobody trained. `exact=True` (what eval_lm and the HF export
    load with) makes that an error; a partial load is not offered there either."""
    saved = {"w": jnp.ones(3), "b": jnp.zeros(2)}
    save_checkpoint({"model": saved}, 1, str(tmp_path / "ck"))
    wait_until_finished()
    fewer = {"w": jnp.zeros(3)}
    with caplog.at_level(logging.WARNING, logger="lm.checkpoint"):
        assert load_checkpoint(fewer, str(tmp_path / "ck"), subpath="model")["w"].sum() == 3
    assert "holds 1 leaf that what it is loaded into does not have" in caplog.text
    with pytest.raises(ValueError, match=r"holds 1 leaf that .* \['model/b'\]: it was saved with"):
        load_checkpoint(fewer, str(tmp_path / "ck"), subpath="model", exact=True)
    more = {**saved, "c": jnp.zeros(1)}
    with pytest.raises(ValueError) as info:
        load_checkpoint(more, str(tmp_path / "ck"), subpath="model", exact=True, allow_partial=True)
    assert "lacks 1 leaves the target needs" in str(info.value)
    assert "allow_partial" not in str(info.value)
