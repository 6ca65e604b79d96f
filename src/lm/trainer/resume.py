"""Where the trainer's initial state comes from: a checkpoint of this run, another run's
checkpoint (`initialize_from`), or a fresh initialization (CKP-05, via lm.checkpoint)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import numpy as np

from lm.checkpoint import load_metadata, padded_axes, restore_trainer_state
from lm.config import SetupConfigError
from lm.partitioning import (
    abstract_shapes,
    check_distinct_mesh_axes,
    check_divisible,
    check_mapped_axes_exist,
)
from lm.trainer.checks import has_array_leaves
from lm.trainer.state import TrainerState, has_trainable

if TYPE_CHECKING:
    from lm.trainer.config import TrainerConfig
    from lm.trainer.trainer import Trainer

logger = logging.getLogger(__name__)


def state_initializer(trainer: Trainer, training_key, model_init: Callable[..., Any], is_trainable):
    """A function building a fresh state from `model_init(*args)` (traced under jit) through
    `trainer._initialize_state_from_scratch`, so a trainer's `TrainerState` subclass is the
    state of fresh starts and the template checkpoints are restored into."""

    def init(*model_args) -> TrainerState:
        return trainer._initialize_state_from_scratch(
            model_init(*model_args), training_key, is_trainable
        )

    return init


def load_or_init_state(
    trainer: Trainer, training_key, is_trainable, *, model=None, model_init=None
) -> TrainerState:
    """Exactly one of `model` (a concrete model, passed to jit as an argument, never baked in
    as a constant) and `model_init` (a zero-argument builder, traced under jit)."""
    config = trainer.config
    check_not_starting_over(config)
    # a parameter axis the mapping cannot split evenly, or two axes of one parameter on the
    # same mesh axis: say which, before jax fails with only array dimensions (model_init is
    # traced for shapes only, outside the axis mapping, under which jax would fail first)
    shapes = model if model is not None else abstract_shapes(model_init)
    check_model_shapes(trainer, shapes, from_init=model is None)
    if not has_trainable(shapes, is_trainable):
        logger.warning(
            "is_trainable selects no parameter of the model: nothing will be trained (no "
            "optimizer updates, and checkpoints hold no model weights)"
        )
    if model is not None:
        init = state_initializer(trainer, training_key, lambda m: m, is_trainable)
        init_args = (model,)
    else:
        init = state_initializer(trainer, training_key, model_init, is_trainable)
        init_args = ()
    # a checkpoint padded for another layout loads; one saved with other real sizes does not
    with config.use_device_mesh(), padded_axes(**trainer.real_axis_sizes):
        path, field = resume_source(config, log=True)
        restored = restore_trainer_state(
            init,
            checkpoint_path=path,
            checkpoint_path_field=field,
            load_checkpoint=config.load_checkpoint,
            initialize_from=config.initialize_from,
            initialize_from_params_only=config.initialize_from_params_only,
            allow_partial=config.allow_partial_checkpoint,
            axis_mapping=trainer.parameter_axis_mapping,
            mesh=trainer.device_mesh,
            init_args=init_args,
        )
    if restored.kind != "fresh" and config.model_averaging is not None:
        restored = _seed_missing_average(trainer, restored, is_trainable)
    if restored.kind == "fresh":
        restored = _step_from_host(restored)
    trainer.restored_from = restored
    trainer.restored_step = int(restored.state.step) if restored.kind == "resumed" else None
    if restored.kind == "resumed":
        check_batch_schedule_unchanged(config, restored.checkpoint, int(restored.state.step))
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


def _step_from_host(restored):
    """A fresh state whose step counter is a 0 put on the devices from the host, not the
    init's output: the training loop reads the step before the first step, and reading the
    init's counter would wait for the whole init (random weights, optimizer state; 0.3 s on
    `bench/configs/gpt2_512.yaml`) to run, where the first step can trace and compile
    meanwhile."""
    step = restored.state.step
    # built from each process's own copy: `device_put` onto devices of several processes
    # would first check across them that the value is the same (a collective)
    zero = jax.make_array_from_callback(
        step.shape, step.sharding, lambda index: np.zeros(step.shape, step.dtype)[index]
    )
    return dataclasses.replace(restored, state=eqx.tree_at(lambda s: s.step, restored.state, zero))


def _seed_missing_average(trainer: Trainer, restored, is_trainable):
    """The average of a state whose weights came from a checkpoint but whose average did not:
    a warm start (`initialize_from_params_only`), or a checkpoint of a run trained without
    `model_averaging` partially restored (`allow_partial_checkpoint`). It was the fresh
    state's, the random initial weights: worse than the untrained model's eval for thousands
    of steps at beta 0.999. It starts from the loaded weights instead, as a fresh run's
    average starts from its initial model."""
    import jax.numpy as jnp

    from lm.checkpoint.storage import holds_subtree
    from lm.trainer.state import trainables_only

    warm = restored.kind == "warm_started"
    # without allow_partial_checkpoint the restore took the whole state, average included
    # (or failed): only a partial one can lack it, worth a second read of the manifest
    if not warm and (
        not trainer.config.allow_partial_checkpoint
        or holds_subtree(restored.checkpoint, "model_averaging")
    ):
        return restored
    state = restored.state
    # copies: the step donates the state's buffers, and one buffer cannot be donated twice
    start = jax.tree_util.tree_map(
        lambda x: jnp.copy(x) if eqx.is_array(x) else x,
        trainables_only(state.model, is_trainable),
    )
    averaged = trainer.config.model_averaging.create(start)
    if warm:
        logger.info("The model average starts from the weights of %s", restored.checkpoint)
    else:
        logger.warning(
            "Checkpoint %s holds no averaged model (its run trained without "
            "trainer.model_averaging): the average starts from its restored weights",
            restored.checkpoint,
        )
    state = eqx.tree_at(lambda s: s.model_averaging, state, averaged)
    return dataclasses.replace(restored, state=state)


def resume_source(config: TrainerConfig, *, log: bool = False) -> tuple[str, str | None]:
    """The checkpoint path a run loads from and the field that named it (None: the run's own
    directory, `config.save_path`).

    `load_checkpoint_path` is where a run starts; from then on it saves to its own directory.
    Once that holds a committed checkpoint, a rerun of the same command (after a crash or a
    preemption) resumes from there: reloading `load_checkpoint_path` would throw away every
    step trained since. A `load_checkpoint_path` inside the run's own directory (a rollback
    to one of its own checkpoints) is loaded as given. `log`: say which, once per run.
    """
    from lm.checkpoint.storage import checkpoint_candidates

    own = config.save_path
    given = config.load_checkpoint_path
    if given is None:
        return own, None
    field = "trainer.load_checkpoint_path"
    if config.load_checkpoint is False:
        return given, field
    committed, _ = checkpoint_candidates(own)
    if not committed:
        return given, field
    newest = max(committed, key=lambda s: s.step)
    if _is_within(given, own):
        if log:
            logger.warning(
                "%s (%s) is a checkpoint of this run's own directory, which holds a newer one "
                "(step-%d): loading the one given, as a rollback; the run's saves replace the "
                "newer checkpoints at their steps",
                field,
                given,
                newest.step,
            )
        return given, field
    if log:
        logger.info(
            "%s (%s) is where this run started; its own directory %s holds checkpoints saved "
            "since (up to step-%d), so it resumes from there. Move that directory aside to "
            "start again from %s",
            field,
            given,
            own,
            newest.step,
            field,
        )
    return own, None


def _is_within(path: str, directory: str) -> bool:
    """Whether checkpoint path `path` is `directory` or under it."""
    from lm.checkpoint.storage import local_path

    def norm(p: str) -> str:
        local = local_path(p)
        return os.path.abspath(local) if local is not None else p.rstrip("/")

    path, directory = norm(path), norm(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def check_model_shapes(trainer: Trainer, shapes: Any, *, from_init: bool) -> None:
    """The model (or what `model_init` builds, as shapes) has arrays to train; every
    logical axis the sharding fields name is an axis of its parameters (a warning, or an
    error for `parameter_axis_resources`; see `check_mapped_axes_exist`); and the parameter
    mapping can shard every parameter: no two axes of one parameter on the same mesh axis,
    every sharded axis divisible by its mesh axes. Shared by `load_or_init_state` and
    `Trainer.abstract_state` (so `lm.plan` too): the errors name the fields, where jax would
    fail with array dimensions only."""
    if from_init and not has_array_leaves(shapes):
        raise ValueError(
            f"model_init() returned {type(shapes).__name__}, which has no array leaves: "
            "there is nothing to train. model_init must build and return the model, e.g. "
            "model_init=lambda: MyModel.init(key=jax.random.PRNGKey(0))"
        )
    config = trainer.config
    for message in sharded_axis_warnings(shapes, config):
        logger.log(mapped_axis_log_level(message, config, trainer.device_mesh.size), "%s", message)
    check_distinct_mesh_axes(shapes, trainer.parameter_axis_mapping)
    check_divisible(shapes, trainer.parameter_axis_mapping, dict(trainer.device_mesh.shape))


def sharded_axis_warnings(shapes: Any, config: TrainerConfig) -> list[str]:
    """`check_mapped_axes_exist` for a trainer config: its errors (a `parameter_axis_resources`
    entry naming an axis no parameter has) as a `SetupConfigError`, its warnings returned.
    train_lm calls it before the tracker starts too, for the errors."""
    try:
        return check_mapped_axes_exist(
            shapes,
            batch_axis=config.batch_axis,
            fsdp_axis=config.fsdp_axis,
            tensor_parallel_axes=config.tensor_parallel_axes,
            axis_resources=config.axis_resources,
            parameter_axis_resources=config.parameter_axis_resources,
        )
    except ValueError as e:
        raise SetupConfigError(str(e)) from None


def mapped_axis_log_level(message: str, config: TrainerConfig, num_devices: int) -> int:
    """How loudly to report a sharding field that names no parameter axis: a WARNING, except
    for the default `fsdp_axis` on one device (a custom model without `embed`, where nothing
    is sharded anyway), which is INFO. A value the config wrote, a typo like `fsdp_axis:
    embd`, is a WARNING on one device too: it would shard nothing on the real mesh either."""
    default_fsdp = type(config).__dataclass_fields__["fsdp_axis"].default
    from_default = message.startswith("trainer.fsdp_axis:") and config.fsdp_axis == default_fsdp
    return logging.INFO if num_devices == 1 and from_default else logging.WARNING


def check_not_starting_over(config: TrainerConfig) -> None:
    """`load_checkpoint: false` starts fresh; in a checkpoint directory that already holds an
    earlier attempt's checkpoints, the new run would overwrite some of them (its step-N
    where both have one) and leave the rest beside its own, so that a later resume or
    eval_lm picks the old run's newest. Refused, with the ways out.

    Raises:
        SetupConfigError: the run's own checkpoint directory holds committed checkpoints.
    """
    from lm.checkpoint.storage import checkpoint_candidates

    if config.load_checkpoint is not False:
        return
    path = config.save_path
    committed, _ = checkpoint_candidates(path)
    if not committed:
        return
    steps = ", ".join(f"step-{s.step}" for s in sorted(committed, key=lambda s: s.step))
    raise SetupConfigError(
        f"trainer.load_checkpoint is false, but this run's checkpoint directory {path} already "
        f"holds checkpoints of an earlier attempt ({steps}): starting over there would "
        "overwrite some of them and leave the rest beside the new run's, and a later resume "
        "would pick the old run's newest. Give the new run its own directory (another "
        "trainer.id or trainer.checkpointer.base_path), delete that directory to start over, "
        "or leave load_checkpoint unset to resume"
    )


def check_batch_schedule_unchanged(config: TrainerConfig, checkpoint: str, step: int) -> None:
    """A run resumed at `step` reads its data from the example the batch schedule puts that
    step at. If the schedule changed since `checkpoint` was saved (another
    `train_batch_size`), that is not the example the run had got to: it would skip data (a
    larger batch) or train on some twice (a smaller one). Checkpoints record the examples
    trained on (`examples_seen` in metadata.json); those without it are not checked.

    Raises:
        SetupConfigError: the current schedule does not put `step` where the run stopped.
    """
    seen = load_metadata(checkpoint).get("examples_seen")
    schedule = config.batch_schedule
    expected = schedule.global_data_offset_by_step(step)
    if seen is None or int(seen) == expected:
        return
    now = schedule.batch_size_at_step(step)
    if schedule.is_constant and step > 0 and seen % step == 0:
        was = f"a batch of {seen // step}"
        fix = (
            f"keep trainer.train_batch_size: {seen // step}, or change it from this step on "
            f"with a schedule: train_batch_size: [{{start: 0, value: {seen // step}}}, "
            f"{{start: {step}, value: {now}}}]"
        )
    else:
        was = "another batch schedule"
        fix = "resume with the batch schedule it was saved with (its run's config.yaml)"
    raise SetupConfigError(
        f"trainer.train_batch_size changed since {checkpoint} was saved (with {was}): the run "
        f"has trained on {seen} examples, but the current schedule starts step {step} at "
        f"example {expected}, so resuming would {'skip' if expected > seen else 'repeat'} "
        f"{abs(expected - int(seen))} examples. To go on, {fix}"
    )
