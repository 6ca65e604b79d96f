"""Plan a run without training it: shardings, sizes, FLOPs and the step's per-device memory.

Nothing here allocates parameters. The training state is built with
`eqx.filter_eval_shape`, given the shardings the trainer would give it (parameter axis
mapping for the state, compute axis mapping for the batch) as `jax.ShapeDtypeStruct`s,
and the trainer's own step is lowered and compiled on those abstract inputs
(`Trainer.lower_train_step`). XLA's memory analysis of that executable is per device:
arguments (state + batch shards), outputs, the part of the outputs that reuses donated
arguments, temporaries (activations, gradients, optimizer scratch) and generated code.

`plan_training` works for any `Trainer` (a research script's own model and batch);
`plan_lm` builds the pieces of a `train_lm` run from its config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
from haliax.partitioning import round_axis_for_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from lm.checkpoint import leaf_name
from lm.models.layers.scan import AUTO
from lm.partitioning.jit import with_shardings
from lm.trainer.state import trainables_only

if TYPE_CHECKING:
    from lm.main.train_lm import TrainLmConfig
    from lm.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """One parameter array: where it lives in the model and how it is split over devices."""

    path: str
    """Leaf path in the model, e.g. `transformer/blocks/stacked/attn/c_attn/weight`."""
    axes: tuple[tuple[str, int], ...]
    """Logical axes (name, size); empty for an array without named axes."""
    shape: tuple[int, ...]
    dtype: str
    pspec: PartitionSpec
    """Physical partitioning from the parameter axis mapping (mesh axis per dimension)."""
    shard_shape: tuple[int, ...]
    """Shape of the piece one device holds."""
    trainable: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def shard_nbytes(self) -> int:
        return math.prod(self.shard_shape) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """XLA's memory analysis of the compiled train step, in bytes per device."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    """Output bytes written into donated argument buffers (counted once, as arguments)."""
    temp_bytes: int
    generated_code_bytes: int
    host_temp_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """Arguments + outputs not aliased to them + temporaries + code: what must fit."""
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.generated_code_bytes
        )

    @staticmethod
    def from_compiled(compiled: jax.stages.Compiled) -> MemoryEstimate:
        stats = compiled.memory_analysis()
        if stats is None:
            raise RuntimeError(
                f"XLA gave no memory analysis for the compiled step on {jax.default_backend()}"
            )
        if isinstance(stats, list | tuple):  # one entry per executable; SPMD has one
            stats = stats[0]
        return MemoryEstimate(
            argument_bytes=int(stats.argument_size_in_bytes),
            output_bytes=int(stats.output_size_in_bytes),
            alias_bytes=int(stats.alias_size_in_bytes),
            temp_bytes=int(stats.temp_size_in_bytes),
            generated_code_bytes=int(stats.generated_code_size_in_bytes),
            host_temp_bytes=int(getattr(stats, "host_temp_size_in_bytes", 0)),
        )


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run will look like on its devices. Built by `plan_training` / `plan_lm`."""

    mesh_shape: dict[str, int]
    num_devices: int
    platform: str
    device_kind: str
    compute_axis_mapping: dict[str, Any]
    parameter_axis_mapping: dict[str, Any]
    params: list[ParamInfo]
    state_bytes_per_device: int
    """Bytes of the whole training state (model, optimizer state, averaging) one device holds."""
    opt_state_bytes: int
    """Bytes of the optimizer state, all devices together."""
    batch_size: int
    num_microbatches: int
    examples_per_device: int
    """Examples one device processes per forward/backward (one microbatch)."""
    tokens_per_example: int | None = None
    flops_per_token: float | None = None
    """Forward FLOPs per token (the model config's count; x3 for a training step)."""
    num_train_steps: int = 0
    planned_examples: int = 0
    memory: MemoryEstimate | None = None
    compile_seconds: float | None = None
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Run settings the advice looks at (gradient checkpointing, dtypes, vocab, ...)."""
    warnings: tuple[str, ...] = ()
    """What the run would warn about its layout: a mesh axis nothing is split over, batches
    replicated because the batch-parallel devices do not divide them."""

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params)

    @property
    def num_trainable_params(self) -> int:
        return sum(p.size for p in self.params if p.trainable)

    @property
    def param_bytes(self) -> int:
        return sum(p.nbytes for p in self.params)

    @property
    def param_bytes_per_device(self) -> int:
        return sum(p.shard_nbytes for p in self.params)

    @property
    def tokens_per_step(self) -> int | None:
        if self.tokens_per_example is None:
            return None
        return self.batch_size * self.tokens_per_example

    @property
    def train_flops_per_step(self) -> float | None:
        if self.flops_per_token is None or self.tokens_per_step is None:
            return None
        return 3 * self.flops_per_token * self.tokens_per_step

    @property
    def planned_tokens(self) -> int | None:
        if self.tokens_per_example is None:
            return None
        return self.planned_examples * self.tokens_per_example


# ---------------------------------------------------------------------------- abstract inputs


def _is_named(x: Any) -> bool:
    return isinstance(x, hax.NamedArray)


def _nbytes(leaf: jax.ShapeDtypeStruct, per_device: bool) -> int:
    shape = leaf.sharding.shard_shape(leaf.shape) if per_device else leaf.shape
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, leaf)
        return math.prod(shape) * math.prod(data.shape[len(leaf.shape) :]) * data.dtype.itemsize
    return math.prod(shape) * np.dtype(leaf.dtype).itemsize


def tree_nbytes(tree: Any, *, per_device: bool) -> int:
    """Bytes of the `ShapeDtypeStruct` leaves of `tree`, whole or per device (from their
    shardings; a replicated leaf counts fully on each device)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return sum(_nbytes(x, per_device) for x in leaves if isinstance(x, jax.ShapeDtypeStruct))


def describe_parameters(model: Any, is_trainable: Any = True) -> list[ParamInfo]:
    """One `ParamInfo` per array leaf of an abstract, sharded model (see `with_shardings`)."""

    def is_leaf(x: Any) -> bool:
        return x is None or _is_named(x)

    flat, treedef = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_leaf)
    trainable_flat = treedef.flatten_up_to(trainables_only(model, is_trainable))
    out: list[ParamInfo] = []
    for (path, leaf), kept in zip(flat, trainable_flat, strict=True):
        array = leaf.array if isinstance(leaf, hax.NamedArray) else leaf
        if not isinstance(array, jax.ShapeDtypeStruct):
            continue
        kept_array = kept.array if isinstance(kept, hax.NamedArray) else kept
        trainable = kept_array is not None
        axes = tuple((a.name, a.size) for a in leaf.axes) if _is_named(leaf) else ()
        sharding = array.sharding
        pspec = sharding.spec if isinstance(sharding, NamedSharding) else PartitionSpec()
        out.append(
            ParamInfo(
                path=leaf_name(path),
                axes=axes,
                shape=tuple(array.shape),
                dtype=str(np.dtype(array.dtype)),
                pspec=pspec,
                shard_shape=tuple(sharding.shard_shape(array.shape)),
                trainable=trainable,
            )
        )
    return out


# ---------------------------------------------------------------------------- planning


def _batch_shards(trainer: Trainer) -> tuple[tuple[str, ...], int]:
    """The mesh axes the compute mapping splits the batch axis over, and their device count."""
    config = trainer.config
    mapped = trainer.compute_axis_mapping.get(config.batch_axis, ())
    names = (mapped,) if isinstance(mapped, str) else tuple(mapped)
    return names, math.prod(config.device_mesh.shape[name] for name in names)


def abstract_batch(trainer: Trainer, make_batch: Callable[[hax.Axis], Any], Batch: hax.Axis) -> Any:
    """`make_batch(Batch)` as `ShapeDtypeStruct`s (traced, nothing allocated) laid out as the
    trainer's data loader lays out a batch of that size: by the compute axis mapping, and
    replicated along the batch axis when the batch-parallel devices do not divide
    `Batch.size` (`trainer.allow_nondivisible_batch_size`)."""
    mapping = trainer.compute_axis_mapping
    if Batch.size % _batch_shards(trainer)[1]:
        mapping = {k: v for k, v in mapping.items() if k != trainer.config.batch_axis}
    with trainer.config.use_device_mesh(), hax.axis_mapping(trainer.compute_axis_mapping):
        shapes = eqx.filter_eval_shape(make_batch, Batch)
    return with_shardings(shapes, mapping, trainer.config.device_mesh)


def plan_training(
    trainer: Trainer,
    model_init: Callable[[], Any],
    make_batch: Callable[[hax.Axis], Any],
    *,
    is_trainable: Any = True,
    tokens_per_example: int | None = None,
    flops_per_token: float | None = None,
    compile_step: bool = True,
    facts: Mapping[str, Any] | None = None,
) -> Plan:
    """Plan `trainer`'s run of the model `model_init()` builds.

    Args:
        trainer: the trainer (its config gives the mesh, mappings, batch schedule, precision).
        model_init: builds the model; only traced, never run.
        make_batch: `make_batch(Batch)` builds one batch for batch axis `Batch` (traced only;
            e.g. zeros of the right shapes and dtypes).
        is_trainable: the filter spec `initial_state` would get.
        tokens_per_example: tokens in one example (for tokens/step), if the data has tokens.
        flops_per_token: forward FLOPs per token, if known.
        compile_step: lower and compile the step for the memory analysis (the slow part).
        facts: run settings for `memory_advice` (see `Plan.facts`).
    """
    config = trainer.config
    mesh = config.device_mesh
    # (abstract_state checks the mapping first: jax would fail with a bare DuplicateSpecError)
    state = trainer.abstract_state(
        jax.random.PRNGKey(0), model_init=model_init, is_trainable=is_trainable
    )

    schedule = config.batch_schedule
    biggest = max(schedule.phases(), key=lambda p: p.value)
    Batch = config.batch_axis_at_step(biggest.start)
    num_micro = config.num_microbatches_at_step(biggest.start)

    warnings = config.mesh_warnings()
    batch_mesh_axes, num_shards = _batch_shards(trainer)
    for phase in schedule.phases():
        if phase.value % num_shards:
            warnings.append(
                f"batch size {phase.value} (from step {phase.start}) is not divisible by the "
                f"{num_shards} batch-parallel devices (mesh axes {list(batch_mesh_axes)}): "
                "batches of that size are replicated on every device, not sharded "
                "(trainer.allow_nondivisible_batch_size)"
            )

    memory = seconds = None
    if compile_step:
        batch = abstract_batch(trainer, make_batch, Batch)
        start = time.perf_counter()
        lowered = trainer.lower_train_step(state, batch, step=biggest.start)
        memory = MemoryEstimate.from_compiled(lowered.compile())
        seconds = time.perf_counter() - start

    device = mesh.devices.flat[0]
    return Plan(
        mesh_shape=dict(mesh.shape),
        num_devices=mesh.devices.size,
        platform=device.platform,
        device_kind=device.device_kind,
        compute_axis_mapping=dict(trainer.compute_axis_mapping),
        parameter_axis_mapping=dict(trainer.parameter_axis_mapping),
        params=describe_parameters(state.model, is_trainable),
        state_bytes_per_device=tree_nbytes(state, per_device=True),
        opt_state_bytes=tree_nbytes(state.opt_state, per_device=False),
        batch_size=Batch.size,
        num_microbatches=num_micro,
        examples_per_device=max(1, Batch.size // num_micro // config.data_axis_size),
        tokens_per_example=tokens_per_example,
        flops_per_token=flops_per_token,
        num_train_steps=config.num_train_steps,
        planned_examples=schedule.global_data_offset_by_step(config.num_train_steps),
        memory=memory,
        compile_seconds=seconds,
        facts=dict(facts or {}),
        warnings=tuple(warnings),
    )


def plan_lm(config: TrainLmConfig, *, compile_step: bool = True) -> Plan:
    """Plan a `train_lm` run: the same trainer, model, loss and batch shapes it would use.

    Reads the tokenizer (for the vocabulary size), and the config.json of an
    `initialize_from_hf` checkpoint, but no data or weights."""
    from lm.models import LmExample
    from lm.models.loss import compute_next_token_loss_and_metrics
    from lm.trainer import Trainer

    trainer_config = config.trainer
    run_model = config.run_model()  # as train_lm resolves it (initialize_from_hf included)
    model_config = run_model.config
    loss_fn = functools.partial(
        compute_next_token_loss_and_metrics,
        z_loss_weight=config.z_loss_weight,
        valid_vocab=run_model.vocab_size,
    )
    optimizer = config.optimizer.build(trainer_config.num_train_steps)
    trainer = Trainer(trainer_config, optimizer, loss_fn, add_default_hooks=False)
    vocab_size = run_model.vocab_size
    with trainer_config.use_device_mesh():
        Vocab = round_axis_for_partitioning(
            hax.Axis("vocab", vocab_size), trainer.parameter_axis_mapping
        )
    Pos = model_config.Pos
    requested_remat = getattr(model_config, "gradient_checkpointing", None)
    if requested_remat == AUTO:
        from lm.main.train_lm import resolve_auto_remat

        # as train_lm resolves it, against --device_memory when the plan has one
        budget = getattr(config, "device_memory_bytes", None)
        model_config = resolve_auto_remat(trainer, model_config, Vocab, Pos, bytes_available=budget)

    def make_batch(Batch: hax.Axis) -> LmExample:
        tokens = hax.zeros((Batch, Pos), dtype=jnp.int32)
        return LmExample(
            tokens=tokens,
            loss_mask=hax.ones((Batch, Pos), dtype=jnp.bool_),
            segment_ids=hax.zeros((Batch, Pos), dtype=jnp.int32),
        )

    mp = trainer_config.mp
    facts = {
        "model": type(model_config).__name__,
        "gradient_checkpointing": getattr(model_config, "gradient_checkpointing", None),
        "gradient_checkpointing_requested": requested_remat,
        "cross_entropy_block_size": model_config.cross_entropy_block_size,
        "vocab_size": Vocab.size,
        "tokenizer_vocab_size": run_model.tokenizer_size,
        "seq_len": Pos.size,
        "param_dtype": str(np.dtype(mp.param_dtype)),
        "compute_dtype": str(np.dtype(mp.compute_dtype)),
        "fsdp_axis": trainer_config.fsdp_axis,
        "model_axis_size": trainer_config.mesh_shape.model,
        "replica_axis_size": trainer_config.replica_axis_size,
        "data_axis_size": trainer_config.data_axis_size,
        "per_device_parallelism": trainer_config.per_device_parallelism,
        "expected_params": model_config.total_trainable_params(Vocab.size),
    }
    return plan_training(
        trainer,
        lambda: model_config.build(Vocab, key=jax.random.PRNGKey(0)),
        make_batch,
        tokens_per_example=Pos.size,
        flops_per_token=model_config.flops_per_token(Vocab.size),
        compile_step=compile_step,
        facts=facts,
    )
