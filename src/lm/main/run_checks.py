"""The checks `train_lm` makes before it writes anything: config values the YAML schema
cannot judge (the LR schedule against the run length), local paths, the checkpoint to resume,
an HF export's model, and the training data against the first batch.

Each fails as a `lm.config.FieldError` naming the field to change (or a `ValueError` for the
data), said at start-up rather than after the caches are built or the last step has run.
`export_lm_to_hf`, `plan` and `cache_dataset` share some of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

import haliax as hax

import lm.config
from lm.checkpoint.resume import no_checkpoint_to_load
from lm.fs import local_path, looks_like_local_path, not_a_directory
from lm.models import LmConfig
from lm.optim import OptimizerConfig
from lm.optim.schedules import ScheduleError
from lm.trainer import TrainerConfig
from lm.trainer.resume import resume_source

if TYPE_CHECKING:
    from lm.main.train_lm import TrainLmConfig


def check_schedule(optimizer: OptimizerConfig, num_train_steps: int) -> None:
    """The LR schedule's lengths against the run length (OPT-03..06), checked at config time
    so a schedule that does not fit is a config error at `optimizer.<field>`, not a failure
    after the data caches are built (`check_schedule` runs no jax: the backend must not start
    before `jax.distributed.initialize()`)."""
    if not isinstance(num_train_steps, int) or num_train_steps < 1:
        return  # nothing to schedule; TrainerConfig reports a bad value
    # cycle_boundaries warns about a cycle_length that does not divide the run; the warning
    # comes (once, to the log file too) when the optimizer is built
    with _disabled(logging.getLogger("lm.optim.schedules")):
        try:
            optimizer.check_schedule(num_train_steps)
        except ScheduleError as e:
            message = e.detail
            if "num_train_steps" not in message:
                message += f" (trainer.num_train_steps: {num_train_steps})"
            raise lm.config.FieldError(f"optimizer.{e.field}", message) from None


@contextlib.contextmanager
def _disabled(log: logging.Logger):
    was = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = was


def check_local_paths(config: TrainLmConfig) -> None:
    """Local paths the run needs, checked before anything is written (TrainerConfig.initialize
    checks its own): `hf_save_path` must be able to become a directory (otherwise the export
    fails after the last step), and a local `initialize_from_hf`, `data.tokenizer` or
    `trainer.initialize_from` must exist. A hub id such as `gpt2` or `org/name` is not a
    local path; one written as a path (`/...`, `./...`, `~/...`, `file://...`) is (and, for
    `initialize_from_hf`, an existing one)."""
    if config.hf_save_path is not None:
        why = not_a_directory(config.hf_save_path)
        if why is not None:
            raise lm.config.FieldError("hf_save_path", why)
    check_data_paths(config)
    _check_exists("trainer.initialize_from", config.trainer.initialize_from, "a checkpoint")
    check_hf_checkpoint_path(config)
    check_checkpoint_to_load(config.trainer)


def check_data_paths(config: TrainLmConfig) -> None:
    """The `data:` section's part of `check_local_paths`, which `cache_dataset` runs too:
    `data.cache_dir` can become a directory, there is training data (said before the
    validation cache is built, not after), and a tokenizer written as a local path exists."""
    check_cache_dir(config)
    source = getattr(config.data, "effective_source", None)  # a single source (not a mixture)
    if source is not None and not source.has_split("train"):
        raise lm.config.FieldError(
            "data",
            "has no training data: set train_urls, id or builtin (or nothing at all for the "
            "embedded corpus)",
        )
    _check_exists("data.tokenizer", getattr(config.data, "tokenizer", None), "a tokenizer")
    components = getattr(config.data, "configs", None) or {"": config.data}
    for name, component in components.items():
        where = f"data.configs.{name}.id" if name else "data.id"
        # an id written as a path is a local dataset, never a hub id to fetch
        _check_exists(where, getattr(component, "id", None), "an HF dataset directory")


def _check_exists(field: str, value: object, what: str) -> None:
    """A value written as a local path (`./x`, `/...`, `~/...`, `file://...`) must exist."""
    if isinstance(value, str) and looks_like_local_path(value):
        path = local_path(value)
        if path is not None and not os.path.exists(path):
            raise lm.config.FieldError(
                field, f"{value} does not exist; expected {what} (a local path or URL)"
            )


def check_checkpoint_to_load(trainer_config: TrainerConfig) -> None:
    """`load_checkpoint: true` must find a checkpoint: said before the run's log file and
    directories exist (the same error came after them)."""
    if trainer_config.load_checkpoint is not True:
        return
    if trainer_config.load_checkpoint_path is None and trainer_config.run_id_is_generated:
        raise lm.config.FieldError(
            "trainer.load_checkpoint",
            "is true, but this run has no id to resume (trainer.id, the RUN_ID environment "
            "variable or a W&B run id), so it would get a new random one with no checkpoints. "
            "Set trainer.id to the run to resume, or trainer.load_checkpoint_path",
        )
    try:
        path, field = resume_source(trainer_config)
        why = no_checkpoint_to_load(path, field)
    except ValueError as e:  # the path is a file
        raise lm.config.FieldError(field or "trainer.checkpointer.base_path", str(e)) from None
    if why is not None:
        raise lm.config.FieldError("trainer.load_checkpoint", f"is true, but {why}")


def check_exportable(model_config: LmConfig, vocab_size: int) -> None:
    """With `hf_save_path`, the model must have an HF config: said before training, not by
    the export after the last step (hybrid_norm, use_layer_norm_weight: false, ...)."""
    try:
        model_config.to_hf_config(vocab_size)
    except ValueError as e:
        raise lm.config.FieldError(
            "hf_save_path",
            f"is set, but this model cannot be saved as an HF checkpoint: {e}. Change the "
            "model, or remove hf_save_path (lm's own checkpoints keep the weights)",
        ) from None


def check_hf_checkpoint_path(config: TrainLmConfig) -> None:
    """A local `initialize_from_hf` must be a directory with a config.json (train_lm,
    export_lm_to_hf and plan read it; a missing one said `missing file: .../config.json`
    without naming the field)."""
    source = config.hf_checkpoint
    if not isinstance(source, str):
        return
    path = local_path(source)
    if path is None or not (looks_like_local_path(source) or os.path.exists(path)):
        return  # a hub id or a remote URL: checked when it is fetched
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise lm.config.FieldError(
            "initialize_from_hf",
            f"{source} {what}; expected a Hugging Face checkpoint directory (with config.json) "
            "or a hub id such as 'gpt2'",
        )
    if not os.path.exists(os.path.join(path, "config.json")):
        raise lm.config.FieldError(
            "initialize_from_hf",
            f"{source} has no config.json; expected a Hugging Face checkpoint directory",
        )


def check_hf_weights(converter, source: str, model_config: LmConfig) -> None:
    """The HF checkpoint a run starts from, checked before the run writes anything: its
    weights' names and shapes against the model, from the safetensors headers (a truncated
    or malformed file, a missing shard, another model's weights). The weights themselves are
    read once the trainer has set up the mesh to place them on."""
    try:
        converter.check_pretrained(source, config=model_config)
    except (ValueError, OSError) as e:
        raise lm.config.FieldError("initialize_from_hf", str(e)) from None


def check_enough_data(train_set, Pos: hax.Axis, trainer_config: TrainerConfig) -> None:
    """A finite training set must fill the first batch (a run that cannot take one step is a
    data or config problem, reported before the run directory is made)."""
    batch = trainer_config.batch_schedule.batch_size_at_step(0)
    if not train_set.is_finite() or len(train_set) >= batch:
        return
    raise ValueError(
        f"the training data holds {len(train_set)} window{'' if len(train_set) == 1 else 's'} "
        f"of seq_len={Pos.size}, fewer than "
        f"one batch (trainer.train_batch_size: {batch}): add data, or lower "
        "trainer.train_batch_size or model.seq_len"
    )


def check_cache_dir(config: TrainLmConfig) -> None:
    """`data.cache_dir` must be able to become a directory (a file in the way failed with a
    bare `[Errno 20] Not a directory`, naming no field)."""
    cache_dir = getattr(config.data, "cache_dir", None)
    if isinstance(cache_dir, str):
        why = not_a_directory(cache_dir)
        if why is not None:
            raise lm.config.FieldError("data.cache_dir", why)
