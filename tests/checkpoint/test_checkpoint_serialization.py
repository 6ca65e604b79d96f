"""save_checkpoint / load_checkpoint: bit-exact round trips, leaf kinds, errors, torn checkpoints."""

import json
import logging
import os

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from ckpt_helpers import assert_trees_equal, make_state

from lm.checkpoint import (
    AsyncCheckpointManager,
    CheckpointCorruptError,
    CheckpointLoadError,
    discover_latest_checkpoint,
    leaf_name,
    list_checkpoints,
    load_checkpoint,
    load_metadata,
    save_checkpoint,
    wait_until_finished,
)
from lm.trainer.state import saveable_state


def save(tree, path, step=0, **kw):
    manager = AsyncCheckpointManager()
    save_checkpoint(tree, step, str(path), manager=manager, **kw)
    manager.wait_until_finished()


def test_checkpoint_simple(tmp_path, trained_state):
    """Reference: save an MLP TrainerState at step 10 and load it into another exemplar."""
    state = eqx.tree_at(lambda s: s.step, trained_state, jnp.asarray(10, dtype=jnp.int32))
    save(saveable_state(state), tmp_path / "step-10", step=10)
    other = make_state(jax.random.PRNGKey(1))
    restored = load_checkpoint(other, str(tmp_path / "step-10"), discover_latest=False)
    assert_trees_equal(restored.model, state.model)
    assert_trees_equal(restored.training_key, state.training_key)
    assert int(restored.step) == 10
    meta = load_metadata(str(tmp_path / "step-10"))
    assert meta["step"] == 10 and meta["is_temporary"] is False and "timestamp" in meta


def test_checkpoint_steps_adam_state_bit_exact(tmp_path, trained_state):
    """Reference: after 3 Adam steps every array leaf (moments, count) round-trips exactly."""
    save(saveable_state(trained_state), tmp_path / "ck")
    exemplar = eqx.filter_eval_shape(make_state, jax.random.PRNGKey(5))
    restored = load_checkpoint(exemplar, str(tmp_path / "ck"), discover_latest=False)
    assert_trees_equal(restored, trained_state)
    adam = restored.opt_state[0]
    assert int(adam.count) == 3
    assert not np.allclose(np.asarray(adam.mu.layers[0].weight.array), 0)


def test_leaf_names_are_readable_paths(tmp_path, trained_state):
    save(saveable_state(trained_state), tmp_path / "ck")
    manifest = json.loads((tmp_path / "ck" / "manifest.json").read_text())["leaves"]
    assert "model/layers/0/weight" in manifest
    assert manifest["model/layers/0/weight"]["axes"] == ["mlp", "embed"]
    assert "opt_state/0/mu/model/layers/1/bias" not in manifest  # mu mirrors the model
    assert "opt_state/0/mu/layers/1/bias" in manifest
    assert (tmp_path / "ck" / "model" / "layers" / "0" / "weight" / "zarr.json").exists()
    assert leaf_name([jax.tree_util.DictKey("a/b")]) == "a%2Fb"


def test_leaf_kinds_round_trip(tmp_path):
    E = hax.Axis("embed", 6)
    tree = {
        "named": hax.random.normal(jax.random.PRNGKey(0), (E, hax.Axis("mlp", 3))),
        "bf16": jnp.arange(12, dtype=jnp.bfloat16).reshape(3, 4),
        "int": jnp.arange(5, dtype=jnp.int32),
        "bool": jnp.array([True, False, True]),
        "zeros": jnp.zeros((4, 4)),  # equal to the fill value: still written
        "empty": jnp.zeros((0, 3)),
        "scalar0d": jnp.asarray(3.5),
        "typed_key": jax.random.key(7),
        "raw_key": jax.random.PRNGKey(7),
        "numpy": np.arange(6, dtype=np.float32),
        "py_int": 3,
        "py_float": 0.25,
        "py_bool": True,
        "none": None,
        "nested": [jnp.ones(2), (jnp.full(2, 2.0), None)],
    }
    save(tree, tmp_path / "ck")
    exemplar = jax.tree.map(
        lambda x: x, tree, is_leaf=lambda x: x is None
    )  # same structure, real arrays
    restored = load_checkpoint(exemplar, str(tmp_path / "ck"))
    assert restored["none"] is None and restored["nested"][1][1] is None
    assert isinstance(restored["named"], hax.NamedArray)
    assert restored["named"].axes == tree["named"].axes
    assert restored["bf16"].dtype == jnp.bfloat16
    assert isinstance(restored["numpy"], np.ndarray)
    assert restored["py_int"] == 3 and isinstance(restored["py_int"], int)
    assert restored["py_bool"] is True
    assert jax.dtypes.issubdtype(restored["typed_key"].dtype, jax.dtypes.prng_key)
    assert_trees_equal(restored, tree)
    # Abstract exemplars work too.
    abstract = eqx.filter_eval_shape(lambda: tree)
    assert_trees_equal(load_checkpoint(abstract, str(tmp_path / "ck")), tree)


def test_memory_store_round_trip(trained_state):
    base = "memory://lm-tests/serialization/run"
    save(saveable_state(trained_state), base + "/step-3", step=3)
    save({"x": jnp.ones(2)}, base + "/step-1", step=1)
    assert discover_latest_checkpoint(base) == base + "/step-3"
    exemplar = eqx.filter_eval_shape(make_state, jax.random.PRNGKey(5))
    assert_trees_equal(load_checkpoint(exemplar, base), trained_state)


def test_checkpoint_discovery(tmp_path):
    for step in (10, 20, 30):
        save({"step": jnp.asarray(step)}, tmp_path / f"step-{step}", step=step)
    assert discover_latest_checkpoint(str(tmp_path)) == f"{tmp_path}/step-30"
    assert discover_latest_checkpoint(f"{tmp_path}/step-20") == f"{tmp_path}/step-20"
    assert discover_latest_checkpoint(f"file://{tmp_path}/nope") is None
    assert discover_latest_checkpoint(str(tmp_path / "nope")) is None
    statuses = list_checkpoints(str(tmp_path))
    assert [(s.step, s.complete) for s in statuses] == [(10, True), (20, True), (30, True)]


def test_async_save_overlaps_computation_with_donation(tmp_path):
    """The save returns once host copies exist; donating the arrays afterwards is safe."""
    x = jax.random.normal(jax.random.PRNGKey(0), (256, 256))
    expected = np.asarray(x).copy()
    manager = AsyncCheckpointManager()
    save_checkpoint({"x": x}, 1, str(tmp_path / "ck"), manager=manager)

    @jax.jit
    def step(a):
        for _ in range(20):
            a = jnp.tanh(a @ a.T / 256.0)
        return a

    donating = jax.jit(lambda a: step(a) * 2.0, donate_argnums=0)
    y = donating(x)
    y.block_until_ready()
    manager.wait_until_finished()
    assert (tmp_path / "ck" / "metadata.json").exists()
    restored = load_checkpoint({"x": jnp.zeros((256, 256))}, str(tmp_path / "ck"))
    np.testing.assert_array_equal(np.asarray(restored["x"]), expected)


def test_default_manager_and_wait(tmp_path):
    save_checkpoint({"a": jnp.ones(3)}, 4, str(tmp_path / "ck"), is_temporary=True)
    wait_until_finished()
    assert load_metadata(str(tmp_path / "ck"))["is_temporary"] is True


def test_metadata_is_written_last(tmp_path):
    """The commit marker appears only after every array is written (the commit callback
    runs after it)."""
    seen = {}

    def on_commit():
        seen["meta"] = (tmp_path / "ck" / "metadata.json").exists()
        seen["manifest"] = (tmp_path / "ck" / "manifest.json").exists()

    save({"a": jnp.ones(3)}, tmp_path / "ck", commit_callback=on_commit)
    assert seen == {"meta": True, "manifest": True}


def test_save_overwrites_a_torn_directory(tmp_path):
    save({"a": jnp.ones(3), "b": jnp.ones(2)}, tmp_path / "step-5", step=5)
    (tmp_path / "step-5" / "metadata.json").unlink()
    save({"a": jnp.full(3, 2.0)}, tmp_path / "step-5", step=5)
    assert not (tmp_path / "step-5" / "b").exists()
    np.testing.assert_array_equal(
        load_checkpoint({"a": jnp.zeros(3)}, str(tmp_path))["a"], np.full(3, 2.0)
    )


# -- mismatches -------------------------------------------------------------------


def test_shape_mismatch_names_leaf_and_shapes(tmp_path):
    save({"model": {"w": jnp.ones((3, 4))}}, tmp_path / "ck")
    with pytest.raises(
        ValueError, match=r"'model/w': shape \(3, 4\) in the checkpoint, \(4, 3\)"
    ) as e:
        load_checkpoint({"model": {"w": jnp.ones((4, 3))}}, str(tmp_path / "ck"))
    # The message names the checkpoint and says why a leaf would differ.
    assert f"checkpoint {tmp_path / 'ck'} does not fit what it is loaded into" in str(e.value)
    assert "saved with a different model or optimizer configuration" in str(e.value)
    with pytest.raises(ValueError, match=r"'model/w' is an array in the checkpoint but int"):
        load_checkpoint({"model": {"w": 3}}, str(tmp_path / "ck"))
    with pytest.raises(ValueError, match=r"'model/w': dtype float32 in the checkpoint, bfloat16"):
        load_checkpoint({"model": {"w": jnp.ones((3, 4), jnp.bfloat16)}}, str(tmp_path / "ck"))


def test_leaves_the_target_lacks_are_a_warning(tmp_path, caplog):
    # e.g. an Adam checkpoint resumed with optimizer.type: lion (nu has no place in Lion)
    save({"opt": {"mu": jnp.ones(3), "nu": jnp.ones(3)}}, tmp_path / "ck")
    with caplog.at_level("WARNING", logger="lm.checkpoint.restore"):
        loaded = load_checkpoint({"opt": {"mu": jnp.zeros(3)}}, str(tmp_path / "ck"))
    assert float(loaded["opt"]["mu"].sum()) == 3.0
    # (the save's INFO line is captured too after a test has configured logging at INFO)
    [record] = [r for r in caplog.records if r.name == "lm.checkpoint.restore"]
    assert record.levelname == "WARNING"
    assert f"Checkpoint {tmp_path / 'ck'} holds 1 leaf that" in record.getMessage()
    assert "['opt/nu']" in record.getMessage()
    assert "saved with a different model or optimizer configuration" in record.getMessage()


def test_named_axes_mismatch(tmp_path):
    A, B = hax.Axis("a", 3), hax.Axis("b", 3)
    save({"w": hax.zeros((A, B))}, tmp_path / "ck")
    with pytest.raises(ValueError, match=r"'w': axes \('a', 'b'\) in the checkpoint, \('b', 'a'\)"):
        load_checkpoint({"w": hax.zeros((B, A))}, str(tmp_path / "ck"))


def test_missing_leaf_error_and_allow_partial(tmp_path, caplog):
    save({"a": jnp.ones(2), "layer_norm": jnp.ones(2)}, tmp_path / "ck")
    exemplar = {"a": jnp.zeros(2), "layer_nrm": jnp.zeros(2)}
    with pytest.raises(ValueError, match=r"lacks 1 leaves.*'layer_nrm'.*did you mean 'layer_norm'"):
        load_checkpoint(exemplar, str(tmp_path / "ck"))
    with caplog.at_level(logging.WARNING):
        restored = load_checkpoint(exemplar, str(tmp_path / "ck"), allow_partial=True)
    np.testing.assert_array_equal(restored["a"], np.ones(2))
    np.testing.assert_array_equal(restored["layer_nrm"], np.zeros(2))
    assert "lacks 1 leaves" in caplog.text


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint at or under"):
        load_checkpoint({"a": jnp.ones(1)}, str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint({"a": jnp.ones(1)}, str(tmp_path / "none"), discover_latest=False)


def test_unsupported_scheme():
    with pytest.raises(ValueError, match=r"unsupported scheme 'hdfs'.*file://, memory://"):
        discover_latest_checkpoint("hdfs://x/y")


# -- torn checkpoints -----------------------------------------------------------


def _two_checkpoints(tmp_path):
    save({"w": jnp.full((4, 4), 1.0)}, tmp_path / "step-1", step=1)
    save({"w": jnp.full((4, 4), 2.0)}, tmp_path / "step-2", step=2)
    return {"w": jnp.zeros((4, 4))}


def _chunk(path):
    chunks = [os.path.join(d, f) for d, _, fs in os.walk(path / "w" / "c") for f in fs]
    assert chunks
    return chunks[0]


@pytest.mark.parametrize(
    "damage",
    [
        "metadata",
        "chunk_deleted",
        "chunk_corrupt",
        "manifest",
        "manifest_no_leaves",
        "manifest_list",
    ],
)
def test_torn_newest_checkpoint_falls_back(tmp_path, caplog, damage):
    exemplar = _two_checkpoints(tmp_path)
    newest = tmp_path / "step-2"
    if damage == "metadata":
        (newest / "metadata.json").unlink()
    elif damage == "chunk_deleted":
        os.remove(_chunk(newest))
    elif damage == "chunk_corrupt":
        with open(_chunk(newest), "r+b") as f:
            f.seek(5)
            f.write(b"\xff\xfe")
    elif damage == "manifest_no_leaves":  # valid JSON, the right format, no leaves table
        manifest = json.loads((newest / "manifest.json").read_text())
        del manifest["leaves"]
        (newest / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "manifest_list":
        (newest / "manifest.json").write_text("[]")
    else:
        (newest / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING):
        restored = load_checkpoint(exemplar, str(tmp_path))
    np.testing.assert_array_equal(restored["w"], np.ones((4, 4)))
    assert "step-2" in caplog.text
    # The damaged checkpoint named explicitly is an error, not a fallback.
    with pytest.raises((CheckpointCorruptError, FileNotFoundError)):
        load_checkpoint(exemplar, str(newest), discover_latest=False)


def test_all_torn_is_a_loud_error(tmp_path):
    exemplar = _two_checkpoints(tmp_path)
    os.remove(_chunk(tmp_path / "step-2"))
    os.remove(_chunk(tmp_path / "step-1"))
    with pytest.raises(CheckpointLoadError, match="none of the 2 checkpoint"):
        load_checkpoint(exemplar, str(tmp_path))
    (tmp_path / "step-2" / "metadata.json").unlink()
    (tmp_path / "step-1" / "metadata.json").unlink()
    # Only never-committed directories: there is nothing to lose, so "no checkpoint".
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint.*incomplete, skipped"):
        load_checkpoint(exemplar, str(tmp_path))


def test_bfloat16_numpy_exemplar(tmp_path):
    x = np.arange(6, dtype=ml_dtypes.bfloat16)
    save({"x": x}, tmp_path / "ck")
    restored = load_checkpoint({"x": np.zeros(6, ml_dtypes.bfloat16)}, str(tmp_path / "ck"))
    assert restored["x"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(restored["x"], x)


def test_saving_inside_jit_is_rejected(tmp_path):
    @jax.jit
    def f(x):
        save_checkpoint({"x": x}, 0, str(tmp_path / "ck"), manager=AsyncCheckpointManager())
        return x

    with pytest.raises(TypeError, match="tracer: save outside of jit"):
        f(jnp.ones(2))


def test_chunk_shape_divides_the_shard_and_bounds_the_size():
    from lm.checkpoint.serialization import _TARGET_CHUNK_BYTES, _chunk_shape

    for shard, itemsize in [
        ((4096, 4096), 4),
        ((50257, 768), 2),
        ((7, 3), 4),
        ((), 4),
        ((0, 5), 4),
    ]:
        chunk = _chunk_shape(shard, itemsize)
        assert len(chunk) == len(shard)
        assert all(max(1, s) % c == 0 for s, c in zip(shard, chunk, strict=True))
        assert int(np.prod(chunk)) * itemsize <= _TARGET_CHUNK_BYTES
    assert _chunk_shape((4096, 4096), 4) == [512, 4096]
    assert _chunk_shape((50257, 768), 2) == [1733, 768]  # 50257 = 29 * 1733
