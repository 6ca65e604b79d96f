"""Where the trainer's initial state comes from: a checkpoint of this run, another run's
checkpoint (`initialize_from`), or a fresh initialization (CKP-05, via lm.checkpoint)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import equinox as eqx

from lm.checkpoint import restore_trainer_state
from lm.partitioning import check_divisible
from lm.trainer.quantization import quantize, split_overwrites
from lm.trainer.state import TrainerState, init_step, trainables_only

if TYPE_CHECKING:
    from lm.trainer.trainer import Trainer

logger = logging.getLogger(__name__)


def state_initializer(trainer: Trainer, training_key, model_init: Callable[..., Any], is_trainable):
    """A function building a fresh `TrainerState` from `model_init(*args)` (traced under jit)."""
    mp = trainer.mp
    optimizer = trainer.optimizer
    averaging_config = trainer.config.model_averaging
    quantization = trainer.config.quantization

    def init(*model_args) -> TrainerState:
        model = mp.cast_to_param(model_init(*model_args))
        if quantization is not None:
            model = quantize(model, quantization)
        trainable = trainables_only(model, is_trainable)
        # the quantization state is overwritten each step, never optimized
        _, optimized = split_overwrites(trainable)
        return TrainerState(
            step=init_step(),
            model=model,
            opt_state=optimizer.init(optimized),
            training_key=training_key,
            model_averaging=averaging_config.create(trainable) if averaging_config else None,
            is_trainable=is_trainable,
            mp=mp,
        )

    return init


def load_or_init_state(
    trainer: Trainer, training_key, is_trainable, *, model=None, model_init=None
) -> TrainerState:
    """Exactly one of `model` (a concrete model, passed to jit as an argument, never baked in
    as a constant) and `model_init` (a zero-argument builder, traced under jit)."""
    config = trainer.config
    # a parameter axis the mapping cannot split evenly: say which one, before jax fails
    # with only an array dimension (model_init is traced for shapes only)
    shapes = model if model is not None else eqx.filter_eval_shape(model_init)
    check_divisible(shapes, trainer.parameter_axis_mapping, dict(trainer.device_mesh.shape))
    if model is not None:
        init = state_initializer(trainer, training_key, lambda m: m, is_trainable)
        init_args = (model,)
    else:
        init = state_initializer(trainer, training_key, model_init, is_trainable)
        init_args = ()
    with config.use_device_mesh():
        restored = restore_trainer_state(
            init,
            checkpoint_path=config.checkpoint_path,
            load_checkpoint=config.load_checkpoint,
            initialize_from=config.initialize_from,
            initialize_from_params_only=config.initialize_from_params_only,
            allow_partial=config.allow_partial_checkpoint,
            axis_mapping=trainer.parameter_axis_mapping,
            mesh=trainer.device_mesh,
            init_args=init_args,
        )
    trainer.restored_from = restored
    trainer.restored_step = int(restored.state.step) if restored.kind == "resumed" else None
    if restored.kind == "fresh":
        logger.info(
            "Starting from a fresh initialization"
            if model is None
            else "Starting from the given model's parameters (fresh optimizer state)"
        )
    else:
        logger.info(
            "Initial state %s from %s (step %d)",
            restored.kind,
            restored.checkpoint,
            int(restored.state.step),
        )
    return restored.state
