"""The hook-driven `Trainer` (TRN-05..TRN-13).

A small loop (lm.trainer.loop): fetch a batch, run the jitted step (lm.trainer.compiled_step), run
the hooks. Everything else (logging, evaluation, checkpoints, progress, watching, profiling)
is a hook.

    trainer = Trainer(config, optimizer, loss_fn)
    with trainer:
        state = trainer.initial_state(key, model_init=lambda: MyModel.init(key=k))
        trainer.add_eval_hook(val_set, "val")
        info = trainer.train(state, trainer.data_loader(train_set))
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import equinox as eqx
import fsspec
import haliax as hax
import jax
import optax
from jaxtyping import PRNGKeyArray

import lm.jax_compat
import lm.tracker
from lm.partitioning.jit import ShardedJit, with_shardings
from lm.tracker import Tracker
from lm.trainer import compiled_step, loop
from lm.trainer.checks import (
    as_scalar,
    check_model_arguments,
    check_not_donated,
    check_optimizer,
    is_dataset,
    split_loss_output,
)
from lm.trainer.compiled_step import NonFiniteLossError as NonFiniteLossError
from lm.trainer.config import TrainerConfig
from lm.trainer.hooks import TrainerHooks
from lm.trainer.loop import Preempted as Preempted
from lm.trainer.loop import _preemption_cause as _preemption_cause
from lm.trainer.quantization import quantize, split_overwrites
from lm.trainer.state import StepInfo, TrainerState, init_step, trainables_only
from lm.trainer.step import train_step as _pure_train_step

lm.jax_compat.install()  # haliax's matmuls on newer JAX (see lm.jax_compat)

logger = logging.getLogger(__name__)

M = TypeVar("M")
S = TypeVar("S", bound=TrainerState)


def _accepts_key(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "key" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class Trainer(Generic[M]):
    def __init__(
        self,
        config: TrainerConfig,
        optimizer: optax.GradientTransformation,
        loss_fn: Callable[..., Any],
        *,
        add_default_hooks: bool = True,
    ):
        """
        Args:
            config: the trainer config (call `config.initialize()` first in a real run).
            optimizer: an optax transformation, e.g. `OptimizerConfig.build(num_train_steps)`.
            loss_fn: `loss_fn(model, *batch, **batch_kwargs)` returning a scalar loss or
                `(loss, metrics_dict)`; may take `key=` for dropout. Must be jittable and pure.
            add_default_hooks: add logging, progress, watch and profiler hooks.
        """
        check_optimizer(optimizer, config)
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be a function loss_fn(model, *batch), got {_type_name(loss_fn)}"
            )
        self.config = config
        self.optimizer = optax.with_extra_args_support(optimizer)
        self._raw_loss_fn = loss_fn
        self._loss_takes_key = _accepts_key(loss_fn)
        self.hooks = TrainerHooks()
        self.is_trainable_param: Any = True
        self._tracker: Tracker | None = None
        self._tracker_finished = False  # set by __exit__: entering again builds a new one
        self._exit_stack: contextlib.ExitStack | None = None
        self._compiled_steps: dict[tuple[int, int], ShardedJit] = {}
        self._logged_step_artifacts = False
        self._eval_hooks: list[Any] = []
        self.tokens_per_example: int | None = None
        self.flops_per_example: float | None = None
        self.restored_from = None
        self.restored_step: int | None = None
        # real (unpadded) sizes of axes padded for partitioning, e.g. {"vocab": 50257}: every
        # checkpoint records them, and `initial_state` restores under
        # `lm.checkpoint.padded_axes(**real_axis_sizes)`, which loads a checkpoint padded for
        # another layout and refuses one saved with other real sizes
        self.real_axis_sizes: dict[str, int] = {}
        # more JSON entries for every checkpoint's metadata.json (train_lm records the model
        # architecture under "model", which eval_lm and the HF export check their config against)
        self.checkpoint_metadata: dict[str, Any] = {}
        # how long the last step's hooks took; logged with the next step (throughput/hook_time)
        self._last_hook_time = 0.0
        self.checkpointer = (
            config.checkpointer.create(self.run_id, metadata_fn=self._checkpoint_metadata)
            if add_default_hooks
            else None
        )
        if add_default_hooks:
            self._add_default_hooks()

    # ------------------------------------------------------------------ properties

    @property
    def tracker(self) -> Tracker:
        """The run's tracker. Unless tracking is off (`type: noop`), it always includes a local
        JSON-lines log (`<run_dir>/metrics.jsonl`, drawn as `curves.png` at the end), so every
        run leaves metrics a user can open without W&B or TensorBoard."""
        if self._tracker is None:
            user = self.config.tracker
            configs = (user,) if isinstance(user, lm.tracker.TrackerConfig) else tuple(user)
            wants_local = not all(isinstance(c, lm.tracker.NoopConfig) for c in configs)
            has_json = any(isinstance(c, lm.tracker.JsonLoggerConfig) for c in configs)
            self._tracker = lm.tracker.build_tracker(
                user,
                self.run_id,
                run_dir=self.config.run_dir,
                added=(lm.tracker.JsonLoggerConfig(),) if wants_local and not has_json else (),
                composite=wants_local,  # a tracker that fails is dropped, not the run
            )
        return self._tracker

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def mp(self):
        return self.config.mp

    @property
    def num_train_steps(self) -> int:
        return self.config.num_train_steps

    @property
    def parameter_axis_mapping(self):
        return self.config.parameter_axis_mapping

    @property
    def compute_axis_mapping(self):
        return self.config.compute_axis_mapping

    @property
    def device_mesh(self):
        return self.config.device_mesh

    @property
    def checkpoint_path(self) -> str:
        """Where this run's checkpoints are read from: `load_checkpoint_path`, else the
        checkpointer's `<base_path>/<run_id>` (the config's `checkpoint_path`)."""
        return self.config.checkpoint_path

    @property
    def TrainBatch(self) -> hax.Axis:
        return self.config.TrainBatch

    @property
    def EvalBatch(self) -> hax.Axis:
        return self.config.EvalBatch

    @functools.cached_property
    def loss_fn(self) -> Callable[..., tuple[jax.Array, dict[str, Any]]]:
        """The user loss, made to always return `(loss, metrics)`, run in compute precision
        under the compute axis mapping."""

        raw = self._raw_loss_fn
        takes_key = self._loss_takes_key

        def wrapped(model, *batch, key=None, **batch_kwargs):
            with hax.axis_mapping(self.compute_axis_mapping):
                model = self.mp.cast_to_compute(model)
                if takes_key:
                    batch_kwargs = {**batch_kwargs, "key": key}
                out = raw(model, *batch, **batch_kwargs)
            loss, metrics = split_loss_output(out)
            return as_scalar(loss), {k: as_scalar(v, f"metric {k!r}") for k, v in metrics.items()}

        return wrapped

    # ------------------------------------------------------------------ context

    def __enter__(self):
        if self._exit_stack is not None:
            raise RuntimeError("Trainer is already entered")
        if self._tracker_finished:  # entered again: the last exit finished the trackers
            self._tracker, self._tracker_finished = None, False
        stack = contextlib.ExitStack()
        stack.enter_context(self.config.use_device_mesh())
        stack.enter_context(hax.axis_mapping(self.parameter_axis_mapping))
        stack.enter_context(self.tracker)
        self._exit_stack = stack
        return self

    def __exit__(self, *exc):
        stack, self._exit_stack = self._exit_stack, None
        try:
            if stack is not None:
                stack.close()
        finally:
            self._tracker_finished = True
            if exc[0] is None:
                self.tracker.finish()
            else:  # an error ends the run: one from finishing must not replace it
                try:
                    self.tracker.finish()
                except Exception:
                    logger.exception("Finishing the trackers failed too (after the run's error)")

    # ------------------------------------------------------------------ hooks

    def add_hook(self, fn=None, *, every: int = 1):
        """Add a hook run every `every` steps: a callable, a `Callback`, a `JitCallback`,
        or, called with only `every=`, a decorator."""
        return self.hooks.add_hook(fn, every=every)

    def run_hooks(self, info: StepInfo, force: bool = False) -> None:
        self.hooks.run_hooks(info, force=force)

    def _add_default_hooks(self):
        from lm.trainer.default_hooks import add_default_hooks

        add_default_hooks(self)

    def set_throughput_model(
        self, *, tokens_per_example: int | None = None, flops_per_example: float | None = None
    ) -> None:
        """Tell the throughput hook how to turn examples/s into tokens/s and MFU."""
        self.tokens_per_example = tokens_per_example
        self.flops_per_example = flops_per_example

    # ------------------------------------------------------------------ state

    def _checkpoint_metadata(self, info: StepInfo) -> dict[str, Any]:
        """What a checkpoint records besides the state: the examples trained on so far, which
        a resumed run checks against its batch schedule (`lm.trainer.resume`)."""
        steps_done = info.step + 1
        metadata: dict[str, Any] = {
            **self.checkpoint_metadata,
            "examples_seen": self.config.batch_schedule.global_data_offset_by_step(steps_done),
        }
        if self.real_axis_sizes:
            from lm.checkpoint.restore import REAL_AXIS_SIZES_KEY

            metadata[REAL_AXIS_SIZES_KEY] = dict(self.real_axis_sizes)
        return metadata

    def initial_state(
        self,
        training_key: PRNGKeyArray,
        model: M | None = None,
        model_init: Callable[[], M] | None = None,
        *,
        is_trainable: Any = True,
    ) -> TrainerState[M]:
        """Resume from a checkpoint if one applies (see `load_checkpoint`), else a fresh state.

        Exactly one of `model` and `model_init` must be given. `is_trainable` is a filter spec:
        non-trainable parameters get no gradient, no optimizer state and are not checkpointed.
        """
        check_model_arguments(model, model_init, "initial_state")
        self.is_trainable_param = is_trainable
        from lm.trainer.resume import load_or_init_state

        return load_or_init_state(
            self, training_key, is_trainable, model=model, model_init=model_init
        )

    def abstract_state(
        self,
        training_key: PRNGKeyArray,
        model: M | None = None,
        model_init: Callable[[], M] | None = None,
        *,
        is_trainable: Any = True,
    ) -> TrainerState[M]:
        """The state `initial_state` builds from these arguments, as `jax.ShapeDtypeStruct`s
        carrying their shardings (the init is traced, nothing runs or is allocated)."""
        from lm.partitioning import abstract_shapes
        from lm.trainer.resume import check_model_shapes, state_initializer

        check_model_arguments(model, model_init, "abstract_state")
        check_model_shapes(
            self,
            model if model is not None else abstract_shapes(model_init),
            from_init=model is None,
        )
        if model is not None:
            init = state_initializer(self, training_key, lambda: model, is_trainable)
        else:
            init = state_initializer(self, training_key, model_init, is_trainable)
        mapping = self.parameter_axis_mapping
        with self.config.use_device_mesh(), hax.axis_mapping(mapping):
            return with_shardings(eqx.filter_eval_shape(init), mapping, self.device_mesh)

    def _initialize_state_from_scratch(
        self, model: M, training_key: PRNGKeyArray, is_trainable: Any
    ) -> TrainerState[M]:
        """A fresh state for `model`: parameters cast to the param dtype, quantized when
        `trainer.quantization` is set, optimizer state for the trainable leaves, an averaged
        copy when `model_averaging` is set. Traced under jit (also for shapes only).

        Override it to train with a `TrainerState` subclass carrying extra fields: call
        `super()` and extend the result with `MyState.from_state(state, extra=...)`. Fresh
        starts, `abstract_state` and the template a checkpoint is restored into all come from
        here, so the extra fields are initialized, checkpointed and restored like the rest.
        """
        model = self.mp.cast_to_param(model)
        if self.config.quantization is not None:
            model = quantize(model, self.config.quantization)
        trainable = trainables_only(model, is_trainable)
        # the quantization state is overwritten each step, never optimized
        _, optimized = split_overwrites(trainable)
        averaging = self.config.model_averaging
        return TrainerState(
            step=init_step(),
            model=model,
            opt_state=self.optimizer.init(optimized),
            training_key=training_key,
            model_averaging=averaging.create(trainable) if averaging else None,
            is_trainable=is_trainable,
            mp=self.mp,
        )

    # ------------------------------------------------------------------ stepping

    def _pure_step(self, num_microbatches: int, jit_hooks: tuple) -> Callable:
        """`step(state, batch, batch_kwargs)`: the un-jitted train step for this trainer."""
        from lm.optim import current_learning_rate

        return functools.partial(
            _pure_train_step,
            loss_fn=self.loss_fn,
            optimizer=self.optimizer,
            num_microbatches=num_microbatches,
            batch_axis=self.config.batch_axis,
            compute_mapping=self.compute_axis_mapping,
            parameter_mapping=self.parameter_axis_mapping,
            jit_callbacks=[h.callback for h in jit_hooks],
            learning_rate_fn=current_learning_rate,
        )

    def lower_train_step(
        self, state: S, *batch: Any, step: int | None = None, **batch_kwargs: Any
    ) -> jax.stages.Lowered:
        """Lower the train step (no hooks) for these inputs without running it.

        Array leaves may be `jax.ShapeDtypeStruct`s carrying their sharding (abstract inputs,
        nothing allocated): `lower_train_step(...).compile().memory_analysis()` is the
        per-device memory the step needs. Lowered like `train_step`: inputs keep their own
        shardings, outputs follow the parameter axis mapping, the state is donated, and
        the batch is split into `num_microbatches_at_step(step)` microbatches (`step`
        defaults to `state.step`)."""
        if step is None:
            step = int(state.step) if not isinstance(state.step, jax.ShapeDtypeStruct) else 0
        fn = compiled_step.step_fn(self, self.config.num_microbatches_at_step(step), ())
        with self.config.use_device_mesh():
            return fn.lower(state, batch, batch_kwargs)

    def train_step(self, state: S, *batch: Any, **batch_kwargs: Any) -> StepInfo[S]:
        """Run one optimizer step (no hooks).

        `state` is donated to the step (its buffers are reused for the new state): go on
        with the returned `info.state`; `state` itself is unusable afterwards."""
        check_not_donated(state, "train_step")
        info, _ = compiled_step.run_step(self, state, batch, batch_kwargs)
        return info

    def training_steps(self, state: S, train_loader: Iterable[Any]) -> Iterator[StepInfo[S]]:
        """Yield one `StepInfo` per step until `num_train_steps`, running hooks after each.

        Call it inside `with trainer:`. `state` is donated to the first step: keep going
        from the yielded `info.state`, never from `state` again.

        Raises:
            RuntimeError: the trainer is not entered (`with trainer:`).
            TypeError: `train_loader` is a dataset rather than batches of it.
            ValueError: `state` was already consumed by a step; or a batch does not have
                the config's batch axis at the size the batch schedule gives its step.
        """
        self._check_can_train(state, train_loader, "training_steps")
        return loop.training_steps(self, state, train_loader)

    def _check_can_train(self, state: S, train_loader: Any, method: str) -> None:
        if self._exit_stack is None:
            raise RuntimeError(
                f"trainer.{method}(...) must run inside `with trainer:`, which makes the "
                "trainer's device mesh, axis mapping and tracker current (the hooks log to "
                "it) and finishes the tracker at the end: `with trainer: info = "
                f"trainer.{method}(state, trainer.data_loader(dataset))`"
            )
        if is_dataset(train_loader):
            raise TypeError(
                f"trainer.{method} got a dataset ({_type_name(train_loader)}), not batches of "
                "it: iterating a dataset yields single examples. Use "
                f"trainer.{method}(state, trainer.data_loader(dataset)), which batches it "
                "along the batch axis by the batch schedule and shards the batches"
            )
        check_not_donated(state, method)

    def train(self, state: S, train_loader: Iterable[Any]) -> StepInfo[S]:
        """Train until `num_train_steps`, then run every host hook once more with
        `force=True` (final eval, final checkpoint; not the `JitCallback`s, which need a
        step) and wait for pending checkpoints.

        Call it inside `with trainer:`, with batches (`trainer.data_loader(dataset)`), not a
        dataset. `state` is donated to the first step: use the returned `info.state`.

        On SIGTERM (preemption) the current step is checkpointed and `Preempted` is raised
        once the checkpoint has committed."""
        self._check_can_train(state, train_loader, "train")
        return loop.train(self, state, train_loader)

    # ------------------------------------------------------------------ eval & data

    def add_eval_hook(self, eval_dataset, name: str | None = None) -> Any:
        """Evaluate the mean loss (and metrics) on `eval_dataset` every `steps_per_eval` steps,
        logged as `eval/<name>/...` (or `eval/...` without a name). Returns the hook (None
        when `max_eval_batches` is 0: evaluation off)."""
        from lm.trainer.evaluation import EvalHook

        if self.config.max_eval_batches == 0:
            return None
        hook = EvalHook(self, eval_dataset, name)
        self._eval_hooks.append(hook)
        self.add_hook(hook, every=self.config.steps_per_eval)
        return hook

    def add_eval_hooks(
        self, eval_sets: Mapping[str, Any], tags: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        """`add_eval_hook` for each named set (the name "" is the unnamed `eval/...` set), then
        for each tag in `tags` (set name -> its tags) `eval/<tag>/loss` and `/perplexity`: the
        token-weighted mean over the sets carrying the tag, at the same steps."""
        from lm.trainer.evaluation import TaggedEvalHook, group_by_tag

        added = {
            name: self.add_eval_hook(dataset, name or None) for name, dataset in eval_sets.items()
        }
        hooks = {name: hook for name, hook in added.items() if hook is not None}
        by_tag = group_by_tag(hooks, tags or {})
        if by_tag:
            self.add_hook(TaggedEvalHook(by_tag), every=self.config.steps_per_eval)

    def data_loader(self, dataset, batch: hax.Axis | None = None):
        """A loader over `dataset` batched along `batch` (default: the trainer's batch axis
        and schedule), sharded over the mesh by the compute axis mapping."""
        from lm.data import DataLoader

        return DataLoader(
            dataset,
            batch if batch is not None else self.config.batch_schedule,
            mesh=self.device_mesh,
            axis_mapping=self.compute_axis_mapping,
            batch_axis_name=self.config.batch_axis,
            allow_nondivisible=self.config.allow_nondivisible_batch_size,
        )

    # ------------------------------------------------------------------ artifacts

    def write_artifact(self, name: str, artifact: str | bytes, type: str | None = None) -> str:
        """Save `artifact` under `<log_dir>/<run_id>/artifacts/<name>` and log it to the tracker.

        A str is written as UTF-8 text (secrets scrubbed), bytes as they are. The name's
        extension picks the compression, as fsspec infers it: `.gz`, `.bz2`, `.xz`, `.lzma`,
        `.zst`, or `.zip` (an archive of one member, `file`); any other name is written as is.

        Raises:
            TypeError: `artifact` is neither str nor bytes (encode it first, e.g. `json.dumps`).
        """
        from lm.tracker.scrub import scrub_text

        if isinstance(artifact, str):
            data = scrub_text(artifact).encode("utf-8")
        elif isinstance(artifact, bytes | bytearray | memoryview):
            data = bytes(artifact)
        else:
            raise TypeError(
                f"write_artifact({name!r}): the artifact must be a str (written as text) or bytes "
                f"(bytes, bytearray, memoryview), got {_type_name(artifact)}; encode it first "
                "(e.g. json.dumps(...) for a dict)."
            )
        path = os.path.join(self.config.run_dir, "artifacts", name)
        fs, fs_path = fsspec.core.url_to_fs(path)
        fs.makedirs(os.path.dirname(fs_path), exist_ok=True)
        with fs.open(fs_path, "wb", compression="infer") as f:
            f.write(data)
        self.tracker.log_artifact(path, name=name, type=type)
        return path


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
