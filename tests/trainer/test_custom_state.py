"""A `TrainerState` subclass from `Trainer._initialize_state_from_scratch` (TRN-09): fresh
init, abstract state, train steps, checkpoint and resume all keep its extra field."""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from toy import Mlp, assert_leaves_equal, make_dataset, mse, trainer_config

from lm.checkpoint import discover_latest_checkpoint, load_checkpoint
from lm.trainer import Trainer, TrainerState


class CountingState(TrainerState):
    examples_seen: jax.Array = None
    """Examples trained on so far (int32 scalar)."""


class CountingTrainer(Trainer):
    def _initialize_state_from_scratch(self, model, training_key, is_trainable):
        state = super()._initialize_state_from_scratch(model, training_key, is_trainable)
        return CountingState.from_state(state, examples_seen=jnp.zeros((), jnp.int32))

    def _pure_step(self, num_microbatches, jit_hooks):
        step = super()._pure_step(num_microbatches, jit_hooks)

        def counting_step(state, batch, batch_kwargs):
            loss, new_state, metrics, infos = step(state, batch, batch_kwargs)
            # reading the field off the base step's output checks that the step kept it
            seen = new_state.examples_seen + batch[0].x.resolve_axis("batch").size
            return loss, dataclasses.replace(new_state, examples_seen=seen), metrics, infos

        return counting_step


def _init():
    return Mlp.init(key=jax.random.PRNGKey(0))


def _train(config):
    trainer = CountingTrainer(config, optax.adam(1e-2), mse)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(1), model_init=_init)
        start = (type(state), int(state.examples_seen))  # the step donates `state`
        info = trainer.train(state, trainer.data_loader(make_dataset()))
    return trainer, start, info


def test_a_subclassed_state_is_initialized_trained_checkpointed_and_resumed(tmp_path):
    config = trainer_config(tmp_path / "b", num_train_steps=4, steps_per_eval=100)
    trainer, start, info = _train(config)
    assert start == (CountingState, 0)
    assert type(info.state) is CountingState
    assert int(info.state.examples_seen) == 4 * 16

    with trainer:
        abstract = trainer.abstract_state(jax.random.PRNGKey(1), model_init=_init)
    assert type(abstract) is CountingState
    assert (abstract.examples_seen.shape, abstract.examples_seen.dtype) == ((), jnp.int32)

    saved = discover_latest_checkpoint(config.checkpoint_path)
    restored = load_checkpoint(abstract, saved, discover_latest=False)
    assert type(restored) is CountingState and int(restored.examples_seen) == 64

    # resuming restores the field (a fresh init would restart it at 0 and end at 64)
    resumed_trainer, resumed_start, resumed = _train(dataclasses.replace(config, num_train_steps=8))
    assert resumed_trainer.restored_step == 4
    assert resumed_start == (CountingState, 64)
    assert int(resumed.state.examples_seen) == 8 * 16

    # and the resumed run is the uninterrupted one
    _, _, full = _train(trainer_config(tmp_path / "a", num_train_steps=8, steps_per_eval=100))
    assert_leaves_equal(full.state, resumed.state)


def test_the_plain_step_keeps_extra_fields(tmp_path):
    """Without a custom step, the field rides through `train_step` unchanged."""

    class TaggedTrainer(Trainer):
        def _initialize_state_from_scratch(self, model, training_key, is_trainable):
            state = super()._initialize_state_from_scratch(model, training_key, is_trainable)
            return CountingState.from_state(state, examples_seen=jnp.int32(7))

    config = trainer_config(tmp_path, num_train_steps=2, steps_per_eval=100)
    trainer = TaggedTrainer(config, optax.sgd(0.1), mse, add_default_hooks=False)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(1), model_init=_init)
        batch = next(iter(trainer.data_loader(make_dataset())))
        info = trainer.train_step(state, batch)
    assert type(info.state) is CountingState
    assert int(info.state.examples_seen) == 7 and int(info.state.step) == 1
