"""A damaged commit marker is an error, never "no checkpoint"; an explicit empty path warns."""

import dataclasses
import datetime
import json
import logging

import jax
import optax
import pytest
from ckpt_helpers import dummy_step_info, init_fn, make_mlp, make_state, save_state

from lm.checkpoint import (
    Checkpointer,
    CheckpointerConfig,
    CheckpointInterval,
    CheckpointLoadError,
    discover_latest_checkpoint,
    list_checkpoints,
    restore_trainer_state,
)
from lm.tracker import JsonLoggerConfig
from lm.trainer import Trainer, TrainerConfig

T0 = datetime.datetime(2021, 1, 1)


def truncate(meta):
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])


DAMAGE = {
    "truncated": (truncate, "metadata.json is not valid JSON"),
    "not_an_object": (lambda meta: meta.write_text("[1, 2]"), "holds list, expected an object"),
    "no_step": (lambda meta: meta.write_text('{"step": "1"}'), "has no integer step"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("load_checkpoint", [None, True])
def test_damaged_metadata_is_an_error_not_a_fresh_start(
    tmp_path, trained_state, damage, load_checkpoint
):
    run = tmp_path / "run"
    save_state(trained_state, run / "step-1", 1)
    damage_fn, problem = DAMAGE[damage]
    damage_fn(run / "step-1" / "metadata.json")
    with pytest.raises(CheckpointLoadError, match="refusing to start the run over") as info:
        restore_trainer_state(init_fn, checkpoint_path=str(run), load_checkpoint=load_checkpoint)
    assert f"checkpoint {run}/step-1 is damaged" in str(info.value)
    assert problem in str(info.value)
    # The step directory itself, too.
    with pytest.raises(CheckpointLoadError, match=f"{run}/step-1 is damaged"):
        restore_trainer_state(init_fn, checkpoint_path=f"{run}/step-1")
    [status] = list_checkpoints(str(run))
    assert status.committed and status.damaged and not status.deletable_leftover


def test_damaged_newest_falls_back_to_the_previous_with_a_warning(tmp_path, trained_state, caplog):
    run = tmp_path / "run"
    older = make_state(jax.random.PRNGKey(7), num_steps=1)
    save_state(older, run / "step-1", 1)
    save_state(trained_state, run / "step-2", 2)
    truncate(run / "step-2" / "metadata.json")
    with caplog.at_level(logging.WARNING):
        assert discover_latest_checkpoint(str(run)) == f"{run}/step-1"
        out = restore_trainer_state(init_fn, checkpoint_path=str(run))
    assert out.checkpoint == f"{run}/step-1"
    assert f"Skipping damaged checkpoint {run}/step-2" in caplog.text
    assert f"Checkpoint {run}/step-2 is unreadable, trying an older one" in caplog.text
    assert (run / "step-2" / "metadata.json").exists()


def test_checkpointer_never_deletes_a_damaged_checkpoint(tmp_path, caplog):
    now = [T0]
    ckpt = Checkpointer(
        str(tmp_path),
        datetime.timedelta(seconds=10),
        [CheckpointInterval(100)],
        dt_now_injection=lambda: now[0],
    )
    for step in (1, 2):  # temporary; step 2's commit deletes temporary step 1 as usual
        now[0] += datetime.timedelta(seconds=10)
        ckpt.on_step(dummy_step_info(step))
        ckpt.wait_until_finished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2"]
    truncate(tmp_path / "step-2" / "metadata.json")
    now[0] += datetime.timedelta(seconds=10)
    with caplog.at_level(logging.WARNING):
        ckpt.on_step(dummy_step_info(3))  # would delete the previous temporary, step-2
        ckpt.wait_until_finished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-3"]
    assert f"Keeping damaged checkpoint {tmp_path}/step-2" in caplog.text

    # A new attempt sweeps temporary and torn leftovers, but not the damaged one.
    json.loads((tmp_path / "step-3" / "metadata.json").read_text())  # complete, temporary
    (tmp_path / "step-4").mkdir()
    (tmp_path / "step-4" / "manifest.json").write_text("{}")  # torn: never committed
    again = Checkpointer(
        str(tmp_path), None, [CheckpointInterval(5)], dt_now_injection=lambda: now[0]
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again.on_step(dummy_step_info(5))
        again.wait_until_finished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-5"]
    assert "Deleting incomplete checkpoint" in caplog.text
    assert "Deleting temporary checkpoint" in caplog.text
    assert f"Keeping damaged checkpoint {tmp_path}/step-2" in caplog.text


@pytest.mark.parametrize(
    "where, why",
    [
        ("no_such_dir", "does not exist"),
        ("empty_dir", "holds no step-N checkpoint"),
        ("empty_steps", "holds no step-N checkpoint (step-5, step-12: empty folders)"),
    ],
)
def test_explicit_path_without_a_checkpoint_warns_and_starts_fresh(tmp_path, caplog, where, why):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_steps" / "step-12").mkdir(parents=True)
    (tmp_path / "empty_steps" / "step-5").mkdir()
    path = str(tmp_path / where)
    field = "trainer.load_checkpoint_path"
    with caplog.at_level(logging.INFO, logger="lm.checkpoint"):
        out = restore_trainer_state(init_fn, checkpoint_path=path, checkpoint_path_field=field)
    assert out.kind == "fresh"
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    message = warning.getMessage()
    assert f"{field} ({path}) {why}" in message
    assert "starts from scratch" in message and "load_checkpoint: true" in message

    with pytest.raises(FileNotFoundError) as info:
        restore_trainer_state(
            init_fn, checkpoint_path=path, checkpoint_path_field=field, load_checkpoint=True
        )
    assert f"no checkpoint was found in {field} ({path}): it {why}" in str(info.value)


def test_default_path_without_a_checkpoint_starts_fresh_quietly(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lm.checkpoint"):
        out = restore_trainer_state(init_fn, checkpoint_path=str(tmp_path / "run"))
    assert out.kind == "fresh"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _trainer_config(tmp_path, **overrides) -> TrainerConfig:
    return TrainerConfig(
        num_train_steps=1,
        train_batch_size=8,
        require_accelerator=False,
        tracker=JsonLoggerConfig(),
        log_dir=tmp_path / "logs",
        id="run",
        checkpointer=CheckpointerConfig(base_path=str(tmp_path / "ckpt")),
        watch=dataclasses.replace(TrainerConfig().watch, interval=0),
        **overrides,
    )


@pytest.mark.parametrize("explicit", [False, True])
def test_trainer_warns_only_for_an_explicit_load_checkpoint_path(tmp_path, caplog, explicit):
    missing = str(tmp_path / "no_such_dir")
    overrides = {"load_checkpoint_path": missing} if explicit else {}
    trainer = Trainer(_trainer_config(tmp_path, **overrides), optax.sgd(0.1), lambda m, b: 0.0)
    with trainer, caplog.at_level(logging.INFO):
        state = trainer.initial_state(
            jax.random.PRNGKey(0), model_init=lambda: make_mlp(jax.random.PRNGKey(1))
        )
    assert int(state.step) == 0 and trainer.restored_from.kind == "fresh"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if explicit:
        assert any(
            f"trainer.load_checkpoint_path ({missing}) does not exist" in w for w in warnings
        )
    else:
        assert not any("load_checkpoint" in w for w in warnings)
    assert "Starting from a fresh initialization" in caplog.text


def test_a_checkpoint_path_that_is_a_file_is_named():
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        with pytest.raises(ValueError, match=f"^{f.name} is a file; a checkpoint path is a run"):
            restore_trainer_state(init_fn, checkpoint_path=f.name)


def test_a_save_over_a_damaged_checkpoint_moves_it_aside(tmp_path, trained_state, caplog):
    """A resumed run loads an older checkpoint and saves again at the damaged one's step: the
    damaged directory was deleted, though the docs promise it is never deleted."""
    run = tmp_path / "run"
    save_state(trained_state, run / "step-1", 1)
    meta = run / "step-1" / "metadata.json"
    truncate(meta)
    damaged_text = meta.read_text()
    with caplog.at_level(logging.WARNING, logger="lm.checkpoint.serialization"):
        save_state(trained_state, run / "step-1", 1)
    aside = run / "damaged" / "step-1"
    assert (aside / "metadata.json").read_text() == damaged_text
    assert f"Checkpoint {run}/step-1 is damaged" in caplog.text
    assert f"moved to {aside}" in caplog.text
    # the new save is complete and the listing passes the damaged copy by
    [status] = list_checkpoints(str(run))
    assert status.complete and status.path == f"{run}/step-1"
    # a second time, beside the first
    truncate(meta)
    save_state(trained_state, run / "step-1", 1)
    assert (run / "damaged" / "step-1.2" / "metadata.json").exists()
    assert discover_latest_checkpoint(str(run)) == f"{run}/step-1"
