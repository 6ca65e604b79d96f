"""`TrainerConfig`: everything about a run that is not the model, the data or the optimizer.

Field names and defaults follow the reference's generated signature (see
docs/trainer.md). Derived properties answer the questions the trainer asks: the mesh, the
two axis mappings, the batch axis at a step, microbatching, eval batch size.

`initialize()` does the process-level setup in the order TRN-02/DST-03 require: jax config
flags, `jax.distributed`, the run id, logging to `<log_dir>/<run_id>.log`, the accelerator
check (lm.trainer.startup). Reading devices before `initialize()` in a multi-process run is a
bug. The field checks `__post_init__` makes are in lm.trainer.config_checks.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
import os
import platform
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import haliax as hax
import jax
import jmp
import numpy as np
from jax.sharding import Mesh

from lm.checkpoint import CheckpointerConfig
from lm.config import FieldError, SetupConfigError
from lm.config.errors import raise_problems
from lm.distributed import RayConfig
from lm.distributed.init import DistributedConfig
from lm.optim.model_averaging import ModelAveragingConfig
from lm.partitioning import (
    DATA,
    MODEL,
    REPLICA,
    MeshShape,
    ResourceMapping,
    compute_axis_mapping,
    count_slices,
    create_mesh,
    fsdp_override_warnings,
    parameter_axis_mapping,
    resolve_mesh_shape,
    unused_mesh_axes,
)
from lm.schedule import BatchSchedule, ScheduleStep
from lm.tracker import TrackerConfig
from lm.tracker.deprecations import move_deprecated_wandb
from lm.tracker.wandb import WandbConfig
from lm.trainer import startup
from lm.trainer.config_checks import MAX_SEED as MAX_SEED
from lm.trainer.config_checks import MAX_STEPS as MAX_STEPS
from lm.trainer.config_checks import convert_python_forms, field_problems
from lm.trainer.config_checks import run_id_problem as run_id_problem
from lm.trainer.quantization import QuantizationConfig
from lm.trainer.startup import NoAcceleratorError as NoAcceleratorError
from lm.trainer.watch import WatchConfig

logger = logging.getLogger(__name__)

DEFAULT_JAX_CONFIG: dict[str, Any] = {
    "jax_threefry_partitionable": True,
    "jax_softmax_custom_jvp": True,
}

JsonAtom = str | int | float | bool | None


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    seed: int = 0
    """Seed for model init and the per-step training keys."""
    mp: jmp.Policy = dataclasses.field(default_factory=lambda: jmp.get_policy("f32"))
    """Mixed precision policy, e.g. `p=f32,c=bfloat16` (params f32, compute bf16)."""
    quantization: QuantizationConfig | None = None
    """fp8 or int8 matmuls in the Linear layers (`fp8: true` or `int8: true`; Haliax's
    quantization, see lm.trainer.quantization)."""
    model_averaging: ModelAveragingConfig | None = None
    """Keep an averaged copy of the model (`type: ema | ema_decay_sqrt`) for eval and export."""

    wandb: WandbConfig | None = None
    """Deprecated: use `tracker`. Accepted with a DeprecationWarning and moved into `tracker`."""
    log_dir: Path = Path("logs/")
    """Python logs go to `<log_dir>/<run_id>.log`; run artifacts to `<log_dir>/<run_id>/`."""
    id: str | None = None
    """Run id. None: env RUN_ID, then the W&B run id, then a random 8-character id."""
    tracker: TrackerConfig | tuple[TrackerConfig, ...] = dataclasses.field(
        default_factory=WandbConfig
    )
    """Where metrics go: one tracker (`type: wandb | tensorboard | json | noop`) or a list of them."""
    watch: WatchConfig = dataclasses.field(default_factory=WatchConfig)
    """Gradient/parameter norms and histograms logged every `watch.interval` steps."""

    profiler: bool = False
    """Capture a JAX profile between `profiler_start_step` and `+profiler_num_steps`."""
    profiler_start_step: int = 5
    profiler_num_steps: int = 100
    profiler_perfetto_link: bool = False
    log_jaxprs: bool = True
    """Write the train step's jaxpr as an artifact (once)."""
    log_xla_hlo: bool = True
    """Write the train step's optimized HLO as an artifact (once)."""
    crash_on_nan: bool = True
    """Stop (with the step and the last good checkpoint) when the loss is NaN."""
    crash_on_inf: bool = True
    """Stop (with the step and the last good checkpoint) when the loss is infinite."""

    # partitioning
    batch_axis: str = "batch"
    fsdp_axis: str | list[str] | None = "embed"
    tensor_parallel_axes: list[str] | None = None
    axis_resources: Mapping[str, str | tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """Advanced: logical -> physical mapping shared by compute and parameters."""
    parameter_axis_resources: Mapping[str, str | tuple[str, ...]] = dataclasses.field(
        default_factory=dict
    )
    """Advanced: logical -> physical overrides for parameters and optimizer state."""
    replica_ici_axis_size: int = 1
    """Replicas (pure data parallel, no parameter sharding) within a slice; -1 fills the slice."""
    model_axis_size: int = 1
    """Tensor-parallel devices within a slice; -1 fills the slice."""
    replica_dcn_axis_size: int = 1
    """Replicas across slices (multislice); -1 means one per slice."""

    # batching
    train_batch_size: int | list[ScheduleStep] = 512
    """Examples per step, or a schedule `[{start: 0, value: 64}, {start: 1000, value: 128}]`."""
    per_device_parallelism: int = -1
    """Examples per device per forward/backward; the step accumulates gradients over
    `batch / (per_device_parallelism x data_axis_size)` microbatches, so every batch size
    (each phase of a schedule) must divide by that product. -1: the whole batch at once
    (`batch / data_axis_size` per device, no accumulation)."""
    per_device_eval_parallelism: int = -1
    """Examples per device per eval forward. -1: same as per_device_parallelism."""
    allow_nondivisible_batch_size: bool = False
    """Allow batch sizes that do not divide by the batch-parallel device count."""

    num_train_steps: int = 400_000
    """Total optimizer steps."""
    steps_per_eval: int = 1_000
    """Evaluate (every validation set) every this many steps."""
    max_eval_batches: int | None = None
    """Cap on eval batches per evaluation. None: the whole validation set; 0: no evaluation."""

    # checkpoints (see docs/checkpointing.md)
    checkpointer: CheckpointerConfig = dataclasses.field(default_factory=CheckpointerConfig)
    load_checkpoint: bool | None = None
    """None: resume if a checkpoint exists. True: must resume (error otherwise). False: never."""
    load_checkpoint_path: str | None = None
    """A run directory (latest checkpoint is used) or one checkpoint. None: the checkpointer's."""
    initialize_from: str | None = None
    """Start from another run's checkpoint when this run has none (continued training)."""
    initialize_from_params_only: bool = False
    """With `initialize_from`: take only the model parameters (a warm start: fresh optimizer
    state, step 0) instead of the full training state."""
    allow_partial_checkpoint: bool = False
    """Parameters missing from the checkpoint are freshly initialized instead of an error."""

    jax_config: Mapping[str, JsonAtom] = dataclasses.field(
        default_factory=lambda: copy.deepcopy(DEFAULT_JAX_CONFIG)
    )
    """`jax.config` flags applied at initialize(), merged over `DEFAULT_JAX_CONFIG`
    (`jax_threefry_partitionable`, `jax_softmax_custom_jvp`: true); set a default to false to
    turn it off. Unlike Levanter, where a given mapping replaces the defaults. Unknown flags
    and values of the wrong type are config errors."""
    jax_compilation_cache_dir: str | None = None
    """Persistent compilation cache directory (local or gs://). None: JAX's default."""
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    """The Ray cluster used for distributed preprocessing (tokenizing data caches)."""
    require_accelerator: bool | None = None
    """Refuse to run on CPU. None: True except on macOS."""
    shutdown_at_exit: bool | float = False
    """Shut the (TPU) VM down after the run: True = after 300 s, a number = after that many s."""

    def __post_init__(self):
        problems = convert_python_forms(self)
        _check_axis_names(self)
        if self.wandb is not None:
            try:
                tracker = move_deprecated_wandb(self.wandb, self.tracker, stacklevel=4)
            except FieldError as e:  # both set: reported with the other fields' problems
                problems.append(e)
            else:
                object.__setattr__(self, "tracker", tracker)
                object.__setattr__(self, "wandb", None)
        if not isinstance(self.train_batch_size, int | list | tuple):
            # (a Python mistake: a YAML is type-checked by the decoder)
            raise TypeError(
                f"trainer.train_batch_size: got {self.train_batch_size!r} "
                f"({type(self.train_batch_size).__name__}), expected an int or a schedule (a "
                "list of {start, value} steps)"
            )
        if str(self.log_dir).startswith("~"):
            # expanded once: the run's log file was written under a folder named `~` in the
            # working directory while everything else went to the home directory
            object.__setattr__(self, "log_dir", Path(os.path.expanduser(self.log_dir)))
        object.__setattr__(self, "jax_config", {**DEFAULT_JAX_CONFIG, **self.jax_config})
        problems += self._field_problems()
        raise_problems(problems)
        for message in fsdp_override_warnings(
            fsdp_axis=self.fsdp_axis,
            tensor_parallel_axes=self.tensor_parallel_axes,
            axis_resources=self.axis_resources,
            parameter_axis_resources=self.parameter_axis_resources,
        ):
            logger.warning("%s", message)

    def _field_problems(self) -> list[FieldError]:
        """Every invalid field, each at its own path (`trainer.<field>`), so that one run
        reports them all (see `lm.trainer.config_checks`)."""
        return field_problems(self)

    # ---------------------------------------------------------------- axis mappings

    @functools.cached_property
    def compute_axis_mapping(self) -> ResourceMapping:
        return compute_axis_mapping(
            batch_axis=self.batch_axis,
            tensor_parallel_axes=self.tensor_parallel_axes,
            axis_resources=self.axis_resources,
        )

    @functools.cached_property
    def parameter_axis_mapping(self) -> ResourceMapping:
        return parameter_axis_mapping(
            self.compute_axis_mapping,
            fsdp_axis=self.fsdp_axis,
            parameter_axis_resources=self.parameter_axis_resources,
        )

    # ---------------------------------------------------------------- mesh

    @functools.cached_property
    def mesh_shape(self) -> MeshShape:
        devices = jax.devices()
        return resolve_mesh_shape(
            len(devices),
            count_slices(devices),
            replica_ici_axis_size=self.replica_ici_axis_size,
            model_axis_size=self.model_axis_size,
            replica_dcn_axis_size=self.replica_dcn_axis_size,
        )

    @functools.cached_property
    def device_mesh(self) -> Mesh:
        return create_mesh(self.mesh_shape)

    @property
    def num_slices(self) -> int:
        return self.mesh_shape.num_slices

    @property
    def num_devices_per_slice(self) -> int:
        return self.mesh_shape.num_devices // self.mesh_shape.num_slices

    @property
    def data_ici_axis_size(self) -> int:
        return self.mesh_shape.data_ici

    @property
    def data_dcn_axis_size(self) -> int:
        return self.mesh_shape.data_dcn

    @property
    def data_axis_size(self) -> int:
        """Batch-parallel size: replicas x data-parallel devices."""
        return self.mesh_shape.data_axis_size

    @property
    def replica_axis_size(self) -> int:
        return self.mesh_shape.replica

    def mesh_warnings(self) -> list[str]:
        """A warning per mesh axis of several devices that neither axis mapping splits
        anything over (`model_axis_size: 2` without `tensor_parallel_axes`, say): its devices
        would repeat each other's work. Logged by `initialize()`, shown by `lm.main.plan`."""
        shape = self.mesh_shape
        sizes = {REPLICA: shape.replica, DATA: shape.data, MODEL: shape.model}
        return unused_mesh_axes(sizes, self.compute_axis_mapping, self.parameter_axis_mapping)

    def use_device_mesh(self) -> contextlib.AbstractContextManager:
        """Make `device_mesh` the current mesh (`jax.set_mesh` through haliax)."""
        return hax.set_mesh(self.device_mesh)

    # ---------------------------------------------------------------- batches

    @functools.cached_property
    def batch_schedule(self) -> BatchSchedule:
        if isinstance(self.train_batch_size, int):
            size = self.train_batch_size
            if size == -1:
                size = self.per_device_parallelism * self.data_axis_size
            return BatchSchedule(size)
        return BatchSchedule(list(self.train_batch_size))

    @property
    def TrainBatch(self) -> hax.Axis:
        if not self.batch_schedule.is_constant:
            raise ValueError(
                "TrainBatch is undefined for a scheduled train_batch_size; use batch_axis_at_step(step)"
            )
        return hax.Axis(self.batch_axis, self.batch_schedule.batch_size_at_step(0))

    def batch_axis_at_step(self, step: int) -> hax.Axis:
        return hax.Axis(self.batch_axis, self.batch_schedule.batch_size_at_step(step))

    @property
    def microbatch_size(self) -> int | None:
        """Examples per forward/backward across all devices; None if never accumulating."""
        if self.per_device_parallelism == -1:
            return None
        return self.per_device_parallelism * self.data_axis_size

    def num_microbatches_at_step(self, step: int) -> int:
        batch = self.batch_schedule.batch_size_at_step(step)
        micro = self.microbatch_size
        if micro is None:
            return 1
        if batch % micro:
            raise SetupConfigError(self._microbatch_problem(batch, self._batch_field(step)))
        return batch // micro

    @property
    def eval_batch_size(self) -> int:
        per_device = self.per_device_eval_parallelism
        if per_device == -1:
            per_device = self.per_device_parallelism
        if per_device == -1:
            largest = max(phase.value for phase in self.batch_schedule.phases())
            rounded = -(-largest // self.data_axis_size) * self.data_axis_size
            return rounded
        return per_device * self.data_axis_size

    @property
    def EvalBatch(self) -> hax.Axis:
        return hax.Axis(self.batch_axis, self.eval_batch_size)

    def validate_batch_sizes(self) -> None:
        """Device-dependent batch checks (PAR-06/08/09); call after devices are known.

        Every batch size (each phase of a schedule) must divide by `per_device_parallelism x
        data_axis_size`, the examples of one forward/backward, and (unless
        `allow_nondivisible_batch_size`) by `data_axis_size`.
        """
        parallel = self.data_axis_size
        micro = self.microbatch_size
        for phase in self.batch_schedule.phases():
            where = self._batch_field(phase.start)
            if micro is not None and phase.value % micro:
                raise SetupConfigError(self._microbatch_problem(phase.value, where))
            if not self.allow_nondivisible_batch_size and phase.value % parallel:
                raise SetupConfigError(
                    f"{where} ({phase.value}) must be divisible by the number of batch-parallel "
                    f"devices ({parallel}); change the batch size or set "
                    "trainer.allow_nondivisible_batch_size: true"
                )

    def _batch_field(self, step: int) -> str:
        if self.batch_schedule.is_constant:
            return "trainer.train_batch_size"
        start = max(p.start for p in self.batch_schedule.phases() if p.start <= step)
        return f"trainer.train_batch_size phase starting at step {start}"

    def _microbatch_problem(self, batch: int, where: str) -> str:
        per_device, parallel = self.per_device_parallelism, self.data_axis_size
        common = math.gcd(*(p.value for p in self.batch_schedule.phases()))
        fits = [n for n in range(1, common // parallel + 1) if common % (n * parallel) == 0]
        options = ", ".join(str(n) for n in fits[:8]) + (", ..." if len(fits) > 8 else "")
        if not fits:
            allowed = "use -1"
        else:
            allowed = f"use {options} or -1" if len(fits) == 1 else f"use one of {options} or -1"
        return (
            f"trainer.per_device_parallelism ({per_device}) does not fit {where} ({batch}): "
            f"{per_device} examples per device x {parallel} batch-parallel devices = "
            f"{per_device * parallel} examples per forward/backward, which must divide every "
            f"batch size; {allowed} (the whole batch at once, no gradient accumulation)"
        )

    # ---------------------------------------------------------------- run id & initialize

    @functools.cached_property
    def run_id(self) -> str:
        """TRN-02: `id`, env RUN_ID, the W&B run id, else a random id shared by all processes."""
        if self.id:
            return self.id
        if os.environ.get("RUN_ID"):
            if (problem := run_id_problem(os.environ["RUN_ID"])) is not None:
                raise SetupConfigError(
                    f"the RUN_ID environment variable ({os.environ['RUN_ID']!r}) names the run "
                    f"(trainer.id is unset), but it is not {problem}"
                )
            return os.environ["RUN_ID"]
        from lm.tracker.wandb import resolve_run_id_from_env

        if wandb_id := resolve_run_id_from_env(self.tracker):
            if (problem := run_id_problem(wandb_id)) is not None:
                # the tracker's `id` is checked when parsed: this one is WANDB_RUN_ID or W&B's
                # resume file
                raise SetupConfigError(
                    f"the W&B run id {wandb_id!r} (from WANDB_RUN_ID, or W&B's resume file with "
                    f"resume: auto) names the run (trainer.id is unset), but it is not {problem}"
                )
            return wandb_id
        alphabet = string.ascii_lowercase + string.digits
        run_id = "".join(secrets.choice(alphabet) for _ in range(8))
        if jax.process_count() > 1:
            run_id = _broadcast_string(run_id)
        return run_id

    @property
    def run_id_is_generated(self) -> bool:
        """Whether `run_id` is a random one (no `id`, env RUN_ID or W&B run id given): the
        same command run again would start another run, not resume this one."""
        from lm.tracker.wandb import resolve_run_id_from_env

        return not (self.id or os.environ.get("RUN_ID") or resolve_run_id_from_env(self.tracker))

    @property
    def checkpoint_path(self) -> str:
        """Where this run's checkpoints are read from: `load_checkpoint_path`, else the
        checkpointer's `<base_path>/<run_id>`. A run resumes from its own directory
        (`save_path`) once it holds a checkpoint, though: see `lm.trainer.resume.resume_source`."""
        if self.load_checkpoint_path is not None:
            return self.load_checkpoint_path
        return self.save_path

    @property
    def save_path(self) -> str:
        """Where this run saves its checkpoints: the checkpointer's `<base_path>/<run_id>`."""
        return self.checkpointer.expanded_path(self.run_id)

    @property
    def run_dir(self) -> str:
        """`<log_dir>/<run_id>`: resolved config, metrics, artifacts, profiles."""
        return os.path.join(str(self.log_dir), self.run_id)

    @property
    def effective_require_accelerator(self) -> bool:
        if self.require_accelerator is not None:
            return self.require_accelerator
        return platform.system() != "Darwin"

    def initialize(self) -> None:
        """Process-level setup, in order: jax flags, jax.distributed, run id, logging, checks
        (see `lm.trainer.startup`)."""
        startup.initialize(self)


def _check_axis_names(config: TrainerConfig) -> None:
    """`fsdp_axis` and `tensor_parallel_axes` given from Python hold axis names (a YAML is
    type-checked by the decoder): `fsdp_axis=["embed", 3]` is a TypeError at
    `trainer.fsdp_axis[1]`, not a mapping that silently never shards anything along `3`."""
    expected = {
        "fsdp_axis": "an axis name (str), a list of axis names, or None",
        "tensor_parallel_axes": "a list of axis names (str), or None",
    }
    for name, allowed in expected.items():
        value = getattr(config, name)
        if value is None or (name == "fsdp_axis" and isinstance(value, str)):
            continue
        if not isinstance(value, list | tuple):
            raise TypeError(
                f"trainer.{name}: got {value!r} ({type(value).__name__}), expected {allowed}"
            )
        for i, axis in enumerate(value):
            if not isinstance(axis, str):
                raise TypeError(
                    f"trainer.{name}[{i}]: got {axis!r} ({type(axis).__name__}), expected an "
                    "axis name (str)"
                )


def _broadcast_string(value: str, length: int = 8) -> str:
    from jax.experimental import multihost_utils

    codes = np.frombuffer(value.encode("ascii").ljust(length, b" "), dtype=np.uint8)
    shared = multihost_utils.broadcast_one_to_all(codes)
    return bytes(np.asarray(shared, dtype=np.uint8)).decode("ascii").strip()
