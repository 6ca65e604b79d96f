"""Checkpointer: the reference policy cases on real saves, deletion, retention, config."""

import datetime
import json
import pathlib

import fsspec
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ckpt_helpers import dummy_step_info

import lm.config
from lm.checkpoint import (
    Checkpointer,
    CheckpointerConfig,
    CheckpointInterval,
    CheckpointSaveError,
    list_checkpoints,
    load_checkpoint,
)
from lm.config import ConfigProblems

T0 = datetime.datetime(2021, 1, 1)
S10 = datetime.timedelta(seconds=10)
CHANGING = [CheckpointInterval(2, 10), CheckpointInterval(5, 20), CheckpointInterval(10, None)]


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += datetime.timedelta(seconds=seconds)


def checkpoint_steps(path) -> list[int]:
    """The metadata steps of the complete checkpoints under `path` (the reference helper)."""
    steps = []
    for child in pathlib.Path(path).iterdir():
        meta = child / "metadata.json"
        if meta.exists():
            steps.append(json.loads(meta.read_text())["step"])
    return sorted(steps)


def make(path, clock, save_interval, policies, **kw):
    return Checkpointer(str(path), save_interval, policies, dt_now_injection=clock, **kw)


def test_checkpointer_changing_policy(tmp_path):
    ckpt = make(tmp_path, Clock(), None, CHANGING)
    for s in range(1, 50):
        ckpt.on_step(dummy_step_info(s))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [2, 4, 6, 8, 10, 15, 20, 30, 40]


def test_checkpointer_temporal_policy(tmp_path):
    clock = Clock()
    ckpt = make(tmp_path, clock, S10, [])
    ckpt.on_step(dummy_step_info(0))
    clock.advance(10)
    ckpt.on_step(dummy_step_info(1))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [1]
    clock.advance(9)
    ckpt.on_step(dummy_step_info(2))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [1]
    clock.advance(1)
    ckpt.on_step(dummy_step_info(3))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [3]
    assert not (tmp_path / "step-1").exists()  # no empty directory left behind


def test_checkpointer_mixed_policy(tmp_path):
    clock = Clock()
    ckpt = make(tmp_path, clock, S10, CHANGING)
    ckpt.on_step(dummy_step_info(0))
    clock.advance(10)
    ckpt.on_step(dummy_step_info(1))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [1]
    clock.advance(9)
    ckpt.on_step(dummy_step_info(2))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [2]
    clock.advance(1)
    ckpt.on_step(dummy_step_info(3))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [2]
    for s in range(4, 11):
        clock.advance(10)
        ckpt.on_step(dummy_step_info(s))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [2, 4, 6, 8, 10]
    clock.advance(9)
    ckpt.on_step(dummy_step_info(11))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [2, 4, 6, 8, 10]
    for s in range(12, 50):
        ckpt.on_step(dummy_step_info(s))
        clock.advance(10)
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [2, 4, 6, 8, 10, 15, 20, 30, 40, 49]


def test_checkpointer_deletes_previous_checkpoints(tmp_path):
    clock = Clock()
    policies = [CheckpointInterval(5, 20), CheckpointInterval(10, None)]
    ckpt = make(tmp_path, clock, S10, policies)
    ckpt.on_step(dummy_step_info(0))
    clock.advance(10)
    for s in range(1, 6):
        ckpt.on_step(dummy_step_info(s))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [5]
    clock.advance(10)
    ckpt.on_step(dummy_step_info(6))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [5, 6]

    # A new attempt of the run finds temporary 6 and deletes it after its first save.
    ckpt = make(tmp_path, clock, S10, policies)
    ckpt.on_step(dummy_step_info(7))
    clock.advance(10)
    ckpt.on_step(dummy_step_info(8))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [5, 8]

    # With delete_old_temp_checkpoints=False the earlier attempt's temporary 8 is kept.
    ckpt = make(
        tmp_path, clock, S10, [CheckpointInterval(20, None)], delete_old_temp_checkpoints=False
    )
    ckpt.on_step(dummy_step_info(9))
    clock.advance(10)
    ckpt.on_step(dummy_step_info(10))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [5, 8, 10]


def test_previous_temporary_is_deleted_only_if_its_metadata_still_says_temporary(tmp_path):
    """Reference: a commit deletes the previous temporary checkpoint only while its
    metadata.json says is_temporary (something else may have kept it since)."""
    clock = Clock()
    ckpt = make(tmp_path, clock, S10, [CheckpointInterval(100)])
    clock.advance(10)
    ckpt.on_step(dummy_step_info(1))  # temporary
    ckpt.wait_until_finished()
    meta_path = tmp_path / "step-1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    assert meta["is_temporary"] is True
    meta_path.write_text(json.dumps({**meta, "is_temporary": False}))  # kept by hand
    clock.advance(10)
    ckpt.on_step(dummy_step_info(2))  # temporary; its commit looks at step-1 again
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [1, 2]
    clock.advance(10)
    ckpt.on_step(dummy_step_info(3))  # step-2 is still temporary: deleted as usual
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [1, 3]


def test_new_attempt_removes_torn_checkpoints(tmp_path):
    clock = Clock()
    ckpt = make(tmp_path, clock, None, [CheckpointInterval(5)])
    ckpt.on_step(dummy_step_info(5))
    ckpt.on_step(dummy_step_info(10))
    ckpt.wait_until_finished()
    (tmp_path / "step-10" / "metadata.json").unlink()  # as if killed mid-save
    ckpt = make(tmp_path, clock, None, [CheckpointInterval(5)])
    ckpt.on_step(dummy_step_info(15))
    ckpt.wait_until_finished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-15", "step-5"]

    kept = make(tmp_path, clock, None, [CheckpointInterval(5)], delete_old_temp_checkpoints=False)
    (tmp_path / "step-15" / "metadata.json").unlink()
    kept.on_step(dummy_step_info(20))
    kept.wait_until_finished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-15", "step-20", "step-5"]


def test_retention_limit_keeps_newest_permanent(tmp_path):
    clock = Clock()
    ckpt = make(tmp_path, clock, S10, [CheckpointInterval(5)], max_permanent_checkpoints=2)
    for s in range(1, 23):
        ckpt.on_step(dummy_step_info(s))
    clock.advance(10)
    ckpt.on_step(dummy_step_info(23))  # temporary: not counted
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [15, 20, 23]
    ckpt.on_step(dummy_step_info(25))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [20, 25]


def test_forced_final_save_and_promotion(tmp_path):
    clock = Clock()
    ckpt = make(tmp_path, clock, S10, [CheckpointInterval(100)])
    ckpt.on_step(dummy_step_info(0), force=True)
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [0]
    clock.advance(10)
    ckpt.on_step(dummy_step_info(7))  # temporary
    ckpt.on_step(dummy_step_info(7), force=True)  # the final step: promoted to permanent
    ckpt.wait_until_finished()
    statuses = list_checkpoints(str(tmp_path))
    assert [(s.step, s.is_temporary) for s in statuses] == [(0, False), (7, False)]
    clock.advance(10)
    ckpt.on_step(dummy_step_info(8))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [0, 7, 8]


def test_preemption_save_is_temporary(tmp_path):
    clock = Clock()
    ckpt = make(tmp_path, clock, S10, [CheckpointInterval(100)])
    ckpt.on_step(dummy_step_info(3), force=True, temporary=True)
    ckpt.wait_until_finished()
    assert [(s.step, s.is_temporary) for s in list_checkpoints(str(tmp_path))] == [(3, True)]
    ckpt = make(tmp_path, clock, S10, [CheckpointInterval(100)])  # the restarted run
    clock.advance(10)
    ckpt.on_step(dummy_step_info(4))
    ckpt.wait_until_finished()
    assert checkpoint_steps(tmp_path) == [4]


def test_saved_state_round_trips_and_load_model(tmp_path, trained_state):
    from lm.trainer.state import StepInfo

    ckpt = make(tmp_path, Clock(), None, [CheckpointInterval(3)])
    info = StepInfo(state=trained_state, loss=0.0, step_duration=0.0)
    assert info.step == 2
    ckpt.on_step(info, force=True)
    ckpt.wait_until_finished()
    restored = ckpt.load_checkpoint(trained_state)
    np.testing.assert_array_equal(restored.step, trained_state.step)
    model = ckpt.load_model(trained_state.model)
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(trained_state.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert make(tmp_path / "nothing", Clock(), None, []).load_checkpoint(trained_state) is None


def test_non_trainable_parameters_are_not_saved(tmp_path):
    from lm.trainer.state import StepInfo, TrainerState

    model = {"frozen": jnp.arange(4.0), "trained": jnp.ones(3)}
    state = TrainerState(
        step=jnp.asarray(5, dtype=jnp.int32),
        model=model,
        opt_state=(),
        training_key=jax.random.PRNGKey(0),
        is_trainable={"frozen": False, "trained": True},
    )
    ckpt = make(tmp_path, Clock(), None, [])
    ckpt.on_step(StepInfo(state=state, loss=0.0, step_duration=0.0), force=True)
    ckpt.wait_until_finished()
    manifest = json.loads((tmp_path / "step-4" / "manifest.json").read_text())["leaves"]
    assert manifest["model/frozen"] == {"kind": "none"}
    assert manifest["model/trained"]["kind"] == "array"
    assert not (tmp_path / "step-4" / "model" / "frozen").exists()
    # Loading into a concrete state keeps its non-trainable values.
    other = TrainerState(
        step=jnp.asarray(0, dtype=jnp.int32),
        model={"frozen": jnp.full(4, 7.0), "trained": jnp.zeros(3)},
        opt_state=(),
        training_key=jax.random.PRNGKey(1),
        is_trainable={"frozen": False, "trained": True},
    )
    restored = load_checkpoint(other, str(tmp_path))
    np.testing.assert_array_equal(restored.model["frozen"], np.full(4, 7.0))
    np.testing.assert_array_equal(restored.model["trained"], np.ones(3))
    assert int(restored.step) == 5


def test_keep_params_filter(tmp_path):
    ckpt = make(tmp_path, Clock(), None, [], keep_params=lambda x: x.ndim > 0)
    info = dummy_step_info(4)
    ckpt.on_step(info, force=True)
    ckpt.wait_until_finished()
    manifest = json.loads((tmp_path / "step-4" / "manifest.json").read_text())["leaves"]
    assert manifest["step"] == {"kind": "none"}
    assert manifest["model/w"]["kind"] == "array"


def test_config_defaults_and_create(tmp_path):
    config = CheckpointerConfig()
    assert config.base_path == "checkpoints/"
    assert config.save_interval == datetime.timedelta(minutes=15)
    assert config.keep == [{"every": 10000}]
    assert config.append_run_id_to_base_path is True
    assert config.delete_old_temp_checkpoints is True
    assert config.max_permanent_checkpoints is None
    assert config.expanded_path("run1") == "checkpoints/run1"
    assert CheckpointerConfig(append_run_id_to_base_path=False).expanded_path("x") == "checkpoints"

    config = CheckpointerConfig(
        base_path=str(tmp_path),
        save_interval=datetime.timedelta(seconds=5),
        keep=[{"every": 2, "until": 10}, {"every": 5}],
        max_permanent_checkpoints=3,
        delete_old_temp_checkpoints=False,
    )
    ckpt = config.create("abc", dt_now_injection=Clock())
    assert ckpt.base_path == f"{tmp_path}/abc"
    assert ckpt.step_policies == [CheckpointInterval(2, 10), CheckpointInterval(5)]
    assert ckpt.save_interval == datetime.timedelta(seconds=5)
    assert ckpt.max_permanent_checkpoints == 3
    assert ckpt.delete_old_temp_checkpoints is False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(keep=[{"every": 5}, {"every": 10, "until": 50}]), r"^keep\[0\]: \{every: 5\}"),
        (dict(keep=[{"every": 5, "untl": 50}]), r"^keep\[0\]: .*did you mean 'until'"),
        (dict(save_interval=datetime.timedelta(0)), r"^save_interval: got 0s, expected a positive"),
        (dict(save_interval="15 fortnights"), r"^save_interval: invalid duration '15 fort"),
        (dict(save_interval=[15]), r"^save_interval: got \[15\], expected a datetime.timedelta"),
        (dict(max_permanent_checkpoints=0), r"^max_permanent_checkpoints: got 0, expected a pos"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CheckpointerConfig(**kwargs)


@pytest.mark.parametrize(
    "given, expected",
    [
        ("15m", datetime.timedelta(minutes=15)),
        ("1h30m", datetime.timedelta(minutes=90)),
        (90, datetime.timedelta(seconds=90)),
        (datetime.timedelta(hours=2), datetime.timedelta(hours=2)),
    ],
)
def test_save_interval_takes_the_yaml_forms_from_python(given, expected):
    """`CheckpointerConfig(save_interval="15m")` means what `save_interval: 15m` does in a YAML
    (it used to be refused with "got '15m', expected a duration such as 15m")."""
    assert CheckpointerConfig(save_interval=given).save_interval == expected


def test_every_checkpointer_problem_is_reported_at_its_own_field():
    with pytest.raises(ConfigProblems) as info:
        CheckpointerConfig(
            keep=[{"every": 0}],
            save_interval=datetime.timedelta(0),
            max_permanent_checkpoints=0,
            base_path="gz://x",
        )
    paths = [p.path for p in info.value.problems]
    assert paths == ["keep[0]", "save_interval", "max_permanent_checkpoints", "base_path"]


@pytest.mark.parametrize(
    "base_path, expected",
    [
        (
            "gcs://b/ckpt",
            "trainer.checkpointer.base_path: unsupported protocol 'gcs' in 'gcs://b/ckpt' (did "
            "you mean 'gs://'?); expected a local path or a file://, memory://, gs:// or s3:// URL",
        ),
        ("gs:/b/ckpt", "trainer.checkpointer.base_path: 'gs:/b/ckpt' looks like a URL"),
        (
            "s4://b/ckpt",
            "trainer.checkpointer.base_path: unknown protocol 's4' in 's4://b/ckpt' (did you mean 's3://'?)",
        ),
        ("https://h/ckpt", "trainer.checkpointer.base_path: unsupported protocol 'https'"),
    ],
)
def test_base_path_protocol_typos_are_config_errors(base_path, expected):
    with pytest.raises(lm.config.ConfigError) as info:
        lm.config.decode(CheckpointerConfig, {"base_path": base_path}, path="trainer.checkpointer")
    (problem,) = info.value.problems
    assert str(problem).startswith(expected), str(problem)


@pytest.mark.parametrize(
    "base_path",
    ["checkpoints/", "/abs/ckpt", "file:///abs/ckpt", "memory://c", "gs://b/c", "s3://b/c"],
)
def test_base_path_protocols_tensorstore_writes_parse(base_path, monkeypatch):
    # TensorStore writes checkpoints itself: gs:// and s3:// need no fsspec package.
    monkeypatch.setattr(fsspec, "get_filesystem_class", lambda p: pytest.fail("fsspec used"))
    assert CheckpointerConfig(base_path=base_path).base_path == base_path


def test_background_failure_surfaces(tmp_path):
    ckpt = make(tmp_path, Clock(), None, [])

    def boom():
        raise OSError("disk on fire")

    ckpt.save_checkpoint(dummy_step_info(1), "step-1", commit_callback=boom)
    with pytest.raises(CheckpointSaveError) as info:
        ckpt.wait_until_finished()
    # one message naming the checkpoint, shown without a traceback by the CLI (an lm error)
    assert str(info.value) == (
        f"checkpoint save to {tmp_path}/step-1 failed: disk on fire. The checkpoints committed "
        "before it are unaffected; a resumed run skips the partial step-1"
    )
    from lm.config.cli import _is_user_facing

    assert _is_user_facing(info.value)
    ckpt.wait_until_finished()  # reported once


def test_checkpointer_on_memory_store():
    base = "memory://lm-tests/checkpointer"
    clock = Clock()
    ckpt = make(base, clock, S10, [CheckpointInterval(2)])
    for s in range(1, 6):
        clock.advance(10)
        ckpt.on_step(dummy_step_info(s))
    ckpt.wait_until_finished()
    assert [(s.step, s.is_temporary) for s in list_checkpoints(base)] == [
        (2, False),
        (4, False),
        (5, True),
    ]
    restored = load_checkpoint({"w": jnp.zeros(3)}, base, subpath="model")
    np.testing.assert_array_equal(restored["w"], np.full(3, 5.0))
