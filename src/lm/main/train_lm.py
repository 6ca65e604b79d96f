"""Train a causal language model: `python -m lm.main.train_lm --config_path run.yaml`."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
from collections.abc import Mapping
from typing import Any

import haliax as hax
import jax
import jax.numpy as jnp

import lm.config
import lm.host_memory
import lm.prefault
import lm.startup_gc
import lm.tracker
from lm.data import LMDatasetConfig, LMMixtureDatasetConfig
from lm.distributed.consistency import CACHES, check_same_config, check_shared_directory
from lm.lm_run import (
    MODEL_METADATA_KEY,
    RunModel,
    check_checkpoint_architecture,
    describe_vocab_change,
    model_architecture,
    resolve_run_model,
    vocab_axis,
)
from lm.main.run_checks import check_cache_dir as check_cache_dir
from lm.main.run_checks import check_checkpoint_to_load as check_checkpoint_to_load
from lm.main.run_checks import check_enough_data as check_enough_data
from lm.main.run_checks import check_exportable as check_exportable
from lm.main.run_checks import check_hf_checkpoint_path as check_hf_checkpoint_path
from lm.main.run_checks import check_hf_weights
from lm.main.run_checks import check_local_paths as check_local_paths
from lm.main.run_checks import check_schedule as check_schedule
from lm.main.run_config import config_changes as config_changes
from lm.main.run_config import save_run_config as save_run_config
from lm.main.run_config import with_config_changes as with_config_changes
from lm.main.run_summary import RunSummary as RunSummary
from lm.models import Gpt2Config, LmConfig
from lm.models.layers.attention import check_backend_platform
from lm.models.loss import compute_next_token_loss_and_metrics
from lm.optim import AdamConfig, OptimizerConfig
from lm.partitioning import abstract_shapes, check_distinct_mesh_axes, check_divisible
from lm.trainer import Preempted, Trainer, TrainerConfig
from lm.trainer.quantization import check_targets
from lm.trainer.resume import resume_source, sharded_axis_warnings

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 143
"""Exit status after a SIGTERM-triggered checkpoint (128 + SIGTERM, what schedulers expect)."""


@dataclasses.dataclass(frozen=True)
class TrainLmConfig:
    data: LMDatasetConfig | LMMixtureDatasetConfig = dataclasses.field(
        default_factory=LMDatasetConfig
    )
    """Training and validation data (see docs/data.md). Default: the embedded stdlib corpus."""
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    model: LmConfig = dataclasses.field(default_factory=Gpt2Config)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=AdamConfig)

    initialize_from_hf: bool | str = False
    """Initialize the model from an HF checkpoint directory (True: the model's reference_checkpoint).
    Without use_hf_model_config, `model` must have the checkpoint's architecture."""
    use_hf_model_config: bool = False
    """Take the model architecture from the HF checkpoint's config.json; `model` then only
    sets runtime fields (seq_len, attn_backend, gradient_checkpointing, scan_layers, ...)."""
    hf_save_path: str | None = None
    """Also export HF checkpoints (safetensors + config + tokenizer) under this directory."""
    hf_save_steps: int = 10_000
    """Export an HF checkpoint every this many steps (and at the end) when hf_save_path is set."""
    z_loss_weight: float = 0.0
    """Weight of the z-loss (logsumexp^2) regulariser; 0 disables it."""

    def __post_init__(self):
        problems: list[lm.config.FieldError] = []
        if not (math.isfinite(self.z_loss_weight) and self.z_loss_weight >= 0):
            problems.append(
                lm.config.invalid("z_loss_weight", self.z_loss_weight, "a finite number >= 0")
            )
        if self.hf_save_path == "":
            # the export would go to /<run_id>/ at the file system's root
            problems.append(
                lm.config.FieldError(
                    "hf_save_path", "is empty; give a directory, or leave it unset (null)"
                )
            )
        # an empty initialize_from_hf is said once, not again as "no HF checkpoint" below
        hf_ok = self.initialize_from_hf != ""
        if not hf_ok:
            problems.append(
                lm.config.FieldError(
                    "initialize_from_hf",
                    "is empty; give an HF checkpoint directory or hub id, true (the model's "
                    "reference checkpoint) or false",
                )
            )
        if self.hf_save_steps <= 0:
            problems.append(
                lm.config.invalid("hf_save_steps", self.hf_save_steps, "a positive number of steps")
            )
        if hf_ok and self.use_hf_model_config and not self.initialize_from_hf:
            problems.append(
                lm.config.FieldError(
                    "use_hf_model_config", "true needs initialize_from_hf to name an HF checkpoint"
                )
            )
        if self.initialize_from_hf and self.trainer.initialize_from:
            problems.append(
                lm.config.FieldError(
                    "initialize_from_hf",
                    "and trainer.initialize_from are both set: start from one of them",
                )
            )
        elif self.initialize_from_hf is True and not getattr(
            self.model, "reference_checkpoint", None
        ):
            problems.append(
                lm.config.FieldError(
                    "initialize_from_hf",
                    f"is true but model type {type(self.model).__name__} has no "
                    "reference_checkpoint; give the HF checkpoint directory instead",
                )
            )
        steps = self.trainer.num_train_steps
        if isinstance(steps, int) and steps == 0:
            problems.append(
                lm.config.invalid(
                    "trainer.num_train_steps", steps, "a number of steps >= 1 (a run trains)"
                )
            )
        problems += lm.config.field_problem(lambda: check_schedule(self.optimizer, steps))
        lm.config.raise_problems(problems)

    @property
    def hf_checkpoint(self) -> str | None:
        """The HF checkpoint to initialize from, if any."""
        if self.initialize_from_hf is True:
            return self.model.reference_checkpoint
        return self.initialize_from_hf or None

    def run_model(self) -> RunModel:
        """The model this run trains (config and vocabulary size), from `model` or the HF
        checkpoint; eval_lm and export_lm_to_hf resolve it the same way."""
        return resolve_run_model(
            self.model,
            tokenizer_size=self.data.the_vocab_size,
            hf_checkpoint=self.hf_checkpoint,
            use_hf_model_config=self.use_hf_model_config,
        )


def build_data_caches(config: TrainLmConfig, *, progress: bool = False) -> dict:
    """Build (or just open and check) every tokenized cache the run needs.

    Ray is only started when a shard actually needs building, on the cluster `trainer.ray`
    names, and a cluster started here is shut down afterwards (it holds ~1.7 GB)."""
    from lm.distributed import shutdown_ray

    def ray_running() -> bool:
        # ray is imported (~0.3 s) only when a shard needs building
        return "ray" in sys.modules and sys.modules["ray"].is_initialized()

    was_running = ray_running()
    try:
        return config.data.build_caches(progress=progress, ray_config=config.trainer.ray)
    finally:
        if not was_running and ray_running():
            shutdown_ray()


def main(config: TrainLmConfig) -> RunSummary:
    trainer_config = config.trainer
    check_local_paths(config)
    trainer_config.initialize()
    check_same_config(config)
    check_shared_directory(
        trainer_config.checkpointer.expanded_path(trainer_config.run_id),
        field="trainer.checkpointer.base_path",
    )
    # process 0 builds the caches while the others wait for them to appear
    for field, cache_dir in config.data.cache_dirs():
        check_shared_directory(cache_dir, field=field, why=CACHES)
    _log_to_file("Resolved configuration:\n%s", lm.config.to_yaml(config))
    # before the caches are built and the run directory is made
    run_model = config.run_model()
    model_config = run_model.config
    if config.hf_save_path is not None:
        check_exportable(model_config, run_model.vocab_size)
    check_backend_platform(getattr(model_config, "attn_backend", None), field="model.attn_backend")
    # the model's parameter shapes (any vocabulary size will do) for the checks that need them
    shapes = abstract_shapes(
        lambda: model_config.build(hax.Axis("vocab", 8), key=jax.random.PRNGKey(0))
    )
    check_distinct_mesh_axes(shapes, trainer_config.parameter_axis_mapping)
    mesh_shape = dict(trainer_config.device_mesh.shape)
    check_divisible(shapes, trainer_config.parameter_axis_mapping, mesh_shape, padded=["vocab"])
    sharded_axis_warnings(shapes, trainer_config)  # its errors, before the tracker starts
    if trainer_config.quantization is not None:
        check_targets(shapes, trainer_config.quantization)
    config.data.check_filesystems()
    # an HF start that resumes its own checkpoints does not read the HF weights
    load_hf = run_model.converter is not None and not _will_resume(trainer_config)
    if load_hf:
        check_hf_weights(run_model.converter, config.hf_checkpoint, model_config)
    if lm.host_memory.applied:
        logger.info(
            "glibc allocator tuned for CPU training (%s; %s=0 to disable)",
            lm.host_memory.DESCRIPTIONS[lm.host_memory.mode],
            lm.host_memory.ENV_VAR,
        )
    build_data_caches(config)
    converter = run_model.converter

    optimizer = config.optimizer.build(trainer_config.num_train_steps)
    loss_fn = functools.partial(
        compute_next_token_loss_and_metrics,
        z_loss_weight=config.z_loss_weight,
        # the vocabulary may be padded for the mesh: padding rows get no probability
        valid_vocab=run_model.vocab_size,
    )
    data_key, model_key, training_key = _run_keys(trainer_config.seed)

    Pos = model_config.Pos
    train_set = config.data.train_set(
        Pos, key=data_key, batch_schedule=trainer_config.batch_schedule
    )
    check_enough_data(train_set, Pos, trainer_config)

    trainer = Trainer(trainer_config, optimizer, loss_fn)
    summary = RunSummary(trainer_config)
    trainer.add_hook(summary.record, every=1)
    try:
        with trainer:
            run_dir = trainer_config.run_dir
            resolved = dataclasses.replace(config, model=model_config)
            trainer.tracker.log_hyperparameters(lm.config.to_flat_dict(resolved))

            Vocab = vocab_axis(run_model.vocab_size, trainer.parameter_axis_mapping)
            model_config = resolve_auto_remat(trainer, model_config, Vocab, Pos)
            state_bytes = plan_prefault(trainer, model_config, Vocab, Pos)

            if load_hf:
                vocab_warning = describe_vocab_change(run_model)
                if vocab_warning is not None:
                    logger.warning("%s", vocab_warning)
                # new rows: the tokenizer's extra tokens (warned above) and partition padding,
                # added on the host before sharding (the checkpoint's size need not divide)
                model = converter.load_pretrained(
                    config.hf_checkpoint,
                    config=model_config,
                    axis_mapping=trainer.parameter_axis_mapping,
                    vocab_size=Vocab.size,
                    key=model_key,
                )
                logger.info(
                    "Loaded the HF checkpoint %s (vocab %d)", config.hf_checkpoint, Vocab.size
                )
                start: dict[str, Any] = dict(model=model)
            else:
                start = dict(model_init=lambda: model_config.build(Vocab, key=model_key))
            # a checkpoint saved on a layout that padded the vocabulary differently resumes;
            # one saved with another vocabulary does not (checkpoints record its real size)
            trainer.real_axis_sizes["vocab"] = run_model.vocab_size
            trainer.checkpoint_metadata[MODEL_METADATA_KEY] = model_architecture(model_config)
            # the state's share of the prefaulted pages, for the init's outputs
            lm.prefault.release(state_bytes)
            try:
                state = trainer.initial_state(training_key, **start)
            except ValueError as e:
                raise with_config_changes(e, resolved, run_dir) from None
            if trainer.restored_step is not None:
                check_checkpoint_architecture(
                    model_config, trainer.restored_from.checkpoint, refuse=False
                )
            # written once the state is there: a resume that fails (another model, say)
            # leaves the config the checkpoints were saved with in place
            save_run_config(resolved, run_dir, trainer.restored_step)
            _log_plan(trainer, model_config, Vocab, Pos)

            validation_sets = config.data.validation_sets(Pos)
            warn_if_no_validation(validation_sets, trainer_config)
            trainer.add_eval_hooks(validation_sets, config.data.validation_tags())
            if config.hf_save_path is not None:
                exporter = HfExportHook(
                    model_config.hf_checkpoint_converter(),
                    config.hf_save_path,
                    trainer_config.run_id,
                    tokenizer=config.data.the_tokenizer,
                    vocab_size=run_model.vocab_size,
                    source_checkpoint=config.hf_checkpoint,
                )
                trainer.add_hook(exporter, every=config.hf_save_steps)
            flops = model_config.flops_per_token(Vocab.size)  # forward only
            trainer.set_throughput_model(
                tokens_per_example=Pos.size,
                # forward + backward = 3x forward: 6N + 12*L*S*d per token, as the reference counts
                flops_per_example=3 * flops * Pos.size if flops is not None else None,
            )
            try:
                info = trainer.train(state, trainer.data_loader(train_set))
            except Preempted as e:
                logger.warning("%s", e)
                print(f"Run {trainer_config.run_id}: {e}", flush=True)
                raise SystemExit(PREEMPTED_EXIT_CODE) from None
            finally:
                lm.startup_gc.end_pause()  # if no step ran (a finished run, an error)
                lm.prefault.release()
            summary.finish(info, trainer)
    except BaseException as e:
        if lm.config.cli.is_keyboard_interrupt(e):  # also one inside a callback from C
            summary.interrupted()
        raise
    summary.print()
    return summary


def _log_to_file(message: str, *args) -> None:
    """An INFO record for the run's log file only: the console shows INFO too, and this is
    long (the whole resolved config)."""
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, args, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The data, model and training keys: `jax.random.split(PRNGKey(seed), 3)`, as one small
    program (op by op, seeding, splitting and unpacking compile four)."""
    return jax.jit(lambda: tuple(jax.random.split(jax.random.PRNGKey(seed), 3)))()


def _will_resume(trainer_config: TrainerConfig) -> bool:
    """Whether `initial_state` will load this run's own checkpoint (which wins over HF init)."""
    from lm.checkpoint import discover_latest_checkpoint

    if trainer_config.load_checkpoint is False:
        return False
    return discover_latest_checkpoint(resume_source(trainer_config)[0]) is not None


class HfExportHook:
    """Exports the (averaged, if enabled) model as an HF checkpoint to
    `<hf_save_path>/<run_id>/step-<N>` every `hf_save_steps` steps and at the end.

    A run initialized from an HF checkpoint (`source_checkpoint`) carries over its
    special-token id lists, larger `max_position_embeddings` and generation_config.json
    (see `HFCheckpointConverter.save_pretrained`)."""

    def __init__(
        self,
        converter,
        base_path: str,
        run_id: str,
        *,
        tokenizer,
        vocab_size: int,
        source_checkpoint: str | None = None,
    ):
        self.converter = converter
        self.base_path = base_path.rstrip("/")
        self.run_id = run_id
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.source_checkpoint = source_checkpoint
        self._last_step: int | None = None

    def on_step(self, info, force: bool = False) -> None:
        if info.step == self._last_step or (info.step == 0 and not force):
            return
        self._last_step = info.step
        path = f"{self.base_path}/{self.run_id}/step-{info.step}"
        self.converter.save_pretrained(
            info.state.eval_model,
            path,
            tokenizer=self.tokenizer,
            vocab_size=self.vocab_size,
            source_checkpoint=self.source_checkpoint,
        )
        logger.info("Exported HF checkpoint %s", path)


def warn_if_no_validation(validation_sets: Mapping[str, Any], config: TrainerConfig) -> None:
    """Say so when a run will never evaluate because its data has no validation set."""
    if not validation_sets:
        logger.warning(
            "No validation data (data has no validation_urls or validation split): the run "
            "will not evaluate. Set data.validation_urls to evaluate every "
            "trainer.steps_per_eval (%d) steps",
            config.steps_per_eval,
        )


def resolve_auto_remat(
    trainer: Trainer, model_config: LmConfig, Vocab, Pos, *, bytes_available: int | None = None
) -> LmConfig:
    """`gradient_checkpointing: auto` resolved for this trainer's batch and devices (see
    `resolve_gradient_checkpointing`; `bytes_available` defaults to the device's memory).
    Shared by `train_lm` and `plan`, so a plan compiles the step the run would."""
    from lm.models.layers.scan import resolve_gradient_checkpointing

    return resolve_gradient_checkpointing(
        model_config,
        vocab_size=Vocab.size,
        tokens_per_device=_tokens_per_device(trainer, Pos),
        compute_dtype=trainer.mp.compute_dtype,
        bytes_available=bytes_available,
    )


def _tokens_per_device(trainer: Trainer, Pos) -> int:
    """Tokens of step 0's microbatch on each device (what the memory estimates count)."""
    config = trainer.config
    micro = config.batch_schedule.batch_size_at_step(0) // config.num_microbatches_at_step(0)
    return max(1, micro * Pos.size // jax.device_count())


def plan_prefault(trainer: Trainer, model_config: LmConfig, Vocab, Pos) -> int:
    """Size this process's prefault pool (`lm.prefault`) to the run's estimated state and
    first step on its local devices; returns the state's share (0 without a pool)."""
    if not lm.prefault.active():
        return 0
    from lm.models.layers.scan import SAVE_PROJECTIONS, estimate_step_bytes

    policy = getattr(model_config, "gradient_checkpointing", SAVE_PROJECTIONS)
    try:
        per_device = estimate_step_bytes(
            model_config,
            vocab_size=Vocab.size,
            tokens_per_device=_tokens_per_device(trainer, Pos),
            compute_bytes=jnp.dtype(trainer.mp.compute_dtype).itemsize,
            # other policies keep no more than save_projections: an upper bound
            policy=policy if policy in (False, SAVE_PROJECTIONS, True) else SAVE_PROJECTIONS,
        )
        params = model_config.total_trainable_params(Vocab.size)
    except (AttributeError, TypeError, ValueError) as e:  # a model the estimate cannot size
        logger.debug("prefault pool left at its initial size: %s", e)
        return 0
    planned = lm.prefault.plan(per_device * jax.local_device_count())
    logger.info(
        "Faulting in %.2f GiB for the state and the first step ahead of them, on an idle core "
        "(%s=0 to disable)",
        planned / 2**30,
        lm.prefault.ENV_VAR,
    )
    # parameters and two Adam moments, float32, replicated: an upper bound
    return 12 * params * jax.local_device_count()


def _log_plan(trainer: Trainer, model_config: LmConfig, Vocab: hax.Axis, Pos: hax.Axis) -> None:
    config = trainer.config
    params = model_config.total_trainable_params(Vocab.size)
    batch = config.batch_schedule.batch_size_at_step(0)
    tokens_per_step = batch * Pos.size
    planned = config.batch_schedule.global_data_offset_by_step(config.num_train_steps) * Pos.size
    logger.info(
        "Model: %s, %.2fM parameters, %.3g training FLOPs/token; batch %d x %d tokens = %d tokens/step "
        "(microbatches: %d); planned %.3gM tokens = %.2f x the 20-tokens-per-parameter budget",
        type(model_config).__name__,
        params / 1e6,
        3 * (model_config.flops_per_token(Vocab.size) or float("nan")),
        batch,
        Pos.size,
        tokens_per_step,
        config.num_microbatches_at_step(0),
        planned / 1e6,
        planned / (20 * params),
    )


if __name__ == "__main__":
    lm.config.main(main)()
