"""restore_trainer_state: load_checkpoint None/True/False, initialize_from, warm starts."""

import dataclasses
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ckpt_helpers import assert_trees_equal, init_fn, make_state, save_state

from lm.checkpoint import (
    CheckpointLoadError,
    restore_trainer_state,
)
from lm.trainer.state import TrainerState


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained_state):
    path = tmp_path_factory.mktemp("resume") / "run"
    save_state(trained_state, path / "step-2", 2)
    return path


def test_none_loads_when_present(run_dir, trained_state):
    out = restore_trainer_state(init_fn, checkpoint_path=str(run_dir))
    assert out.kind == "resumed" and out.checkpoint == f"{run_dir}/step-2"
    assert_trees_equal(out.state, trained_state)


def test_none_starts_fresh_when_absent(tmp_path):
    out = restore_trainer_state(init_fn, checkpoint_path=str(tmp_path / "run"))
    assert out.kind == "fresh" and out.checkpoint is None
    assert_trees_equal(out.state, init_fn())


def test_true_requires_a_checkpoint(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match="load_checkpoint=True but no checkpoint"):
        restore_trainer_state(init_fn, checkpoint_path=str(tmp_path / "x"), load_checkpoint=True)
    out = restore_trainer_state(init_fn, checkpoint_path=str(run_dir), load_checkpoint=True)
    assert out.kind == "resumed"


def test_false_never_loads(run_dir):
    out = restore_trainer_state(init_fn, checkpoint_path=str(run_dir), load_checkpoint=False)
    assert out.kind == "fresh"
    assert int(out.state.step) == 0


def test_only_incomplete_checkpoints_start_fresh_with_a_warning(tmp_path, caplog):
    """A first save cut short leaves a step-N without metadata.json: starting over is right,
    but not silently (a brand-new run says the same "fresh initialization")."""
    import logging

    (tmp_path / "run" / "step-29" / "model").mkdir(parents=True)
    (tmp_path / "run" / "step-29" / "model" / "zarr.json").write_text("{}")  # arrays, no metadata
    with caplog.at_level(logging.WARNING, logger="lm.checkpoint"):
        out = restore_trainer_state(init_fn, checkpoint_path=str(tmp_path / "run"))
    assert out.kind == "fresh"
    assert (
        f"No checkpoint to resume from: the run's checkpoint directory ({tmp_path / 'run'}) "
        "holds only incomplete checkpoints (saves that never committed: "
        f"{tmp_path / 'run' / 'step-29'}), so the run starts from scratch"
    ) in caplog.text


def test_specific_step_path(run_dir, trained_state):
    out = restore_trainer_state(init_fn, checkpoint_path=f"{run_dir}/step-2")
    assert out.checkpoint == f"{run_dir}/step-2"
    assert_trees_equal(out.state, trained_state)


def test_unreadable_checkpoints_never_restart_from_zero(tmp_path, trained_state):
    run = tmp_path / "run"
    save_state(trained_state, run / "step-2", 2)
    chunk = run / "step-2" / "model" / "layers" / "0" / "weight" / "c" / "0" / "0"
    os.remove(chunk)
    with pytest.raises(CheckpointLoadError, match="refusing to start the run over"):
        restore_trainer_state(init_fn, checkpoint_path=str(run))
    # A save that never committed holds nothing: the run starts fresh.
    os.remove(run / "step-2" / "metadata.json")
    out = restore_trainer_state(init_fn, checkpoint_path=str(run))
    assert out.kind == "fresh"
    with pytest.raises(FileNotFoundError):
        restore_trainer_state(init_fn, checkpoint_path=str(run), load_checkpoint=True)


def test_initialize_from_full_state(tmp_path, run_dir, trained_state):
    out = restore_trainer_state(
        init_fn, checkpoint_path=str(tmp_path / "new_run"), initialize_from=str(run_dir)
    )
    assert out.kind == "initialized_from"
    assert_trees_equal(out.state, trained_state)
    assert int(out.state.step) == 3
    # The run's own checkpoint wins over initialize_from.
    own = tmp_path / "own"
    other = make_state(jax.random.PRNGKey(9), num_steps=1)
    save_state(other, own / "step-0", 0)
    out = restore_trainer_state(init_fn, checkpoint_path=str(own), initialize_from=str(run_dir))
    assert out.kind == "resumed"
    assert_trees_equal(out.state, other)


def test_initialize_from_must_be_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"initialize_from \('.*nope'\) is not a checkpoint"):
        restore_trainer_state(
            init_fn, checkpoint_path=str(tmp_path / "r"), initialize_from=str(tmp_path / "nope")
        )


def test_params_only_warm_start(tmp_path, run_dir, trained_state):
    out = restore_trainer_state(
        init_fn,
        checkpoint_path=str(tmp_path / "new_run"),
        initialize_from=str(run_dir),
        initialize_from_params_only=True,
    )
    assert out.kind == "warm_started"
    fresh = init_fn()
    assert_trees_equal(out.state.model, trained_state.model)
    assert_trees_equal(out.state.opt_state, fresh.opt_state)
    assert int(out.state.step) == 0
    assert_trees_equal(out.state.training_key, fresh.training_key)


def test_non_trainable_leaves_come_from_init(tmp_path):
    def init_frozen():
        model = {"frozen": jnp.arange(4.0), "trained": jnp.zeros(3)}
        opt = optax.sgd(0.1)
        return TrainerState(
            step=jnp.asarray(0, dtype=jnp.int32),
            model=model,
            opt_state=opt.init(eqx.filter(model, eqx.is_inexact_array)),
            training_key=jax.random.PRNGKey(0),
            is_trainable={"frozen": False, "trained": True},
        )

    trained = init_frozen()
    trained = dataclasses.replace(
        trained,
        step=jnp.asarray(7, dtype=jnp.int32),
        model={"frozen": jnp.full(4, -1.0), "trained": jnp.ones(3)},
    )
    save_state(trained, tmp_path / "run" / "step-6", 6)
    out = restore_trainer_state(init_frozen, checkpoint_path=str(tmp_path / "run"))
    np.testing.assert_array_equal(out.state.model["frozen"], np.arange(4.0))  # from init
    np.testing.assert_array_equal(out.state.model["trained"], np.ones(3))
    assert int(out.state.step) == 7
