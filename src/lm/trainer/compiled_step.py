"""Running the jitted train step for a `Trainer` (the pure step is lm.trainer.step).

One executable per microbatch count and set of due `JitCallback`s, compiled on first use;
the step's jaxpr and HLO logged once, in the background while XLA compiles; the step
timed; a NaN or infinite loss stopped (crash_on_nan / crash_on_inf).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import jax

import lm.prefault
from lm.compile_options import xla_compiler_options
from lm.partitioning.jit import ShardedJit, sharded_jit
from lm.trainer.state import StepInfo, TrainerState

if TYPE_CHECKING:
    from lm.trainer.trainer import Trainer

S = TypeVar("S", bound=TrainerState)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite (crash_on_nan / crash_on_inf)."""


class _Background:
    """Runs `fn` in a thread; `join()` waits and re-raises its exception in the caller."""

    def __init__(self, fn: Callable[[], None], *, name: str):
        self._error: BaseException | None = None

        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 (handed to join)
                self._error = e

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def join(self, *, reraise: bool = True) -> None:
        self._thread.join()
        if reraise and self._error is not None:
            raise self._error


def step_fn(trainer: Trainer, num_microbatches: int, jit_hooks: tuple) -> ShardedJit:
    """The jitted `trainer._pure_step(num_microbatches, jit_hooks)`, made once per pair."""
    key = (num_microbatches, tuple(id(h.callback) for h in jit_hooks))
    fn = trainer._compiled_steps.get(key)
    if fn is None:
        fn = sharded_jit(
            trainer._pure_step(num_microbatches, jit_hooks),
            axis_resources=trainer.compute_axis_mapping,
            out_mapping=trainer.parameter_axis_mapping,
            mesh=lambda: trainer.device_mesh,
            donate_argnums=(0,),
            compiler_options=xla_compiler_options(),
        )
        trainer._compiled_steps[key] = fn
    return fn


def run_step(trainer: Trainer, state: S, batch, batch_kwargs) -> tuple[StepInfo[S], list[Any]]:
    """One step from `state` (donated): its `StepInfo`, the loss checked finite, and what
    the due `JitCallback`s collected inside it."""
    step = int(state.step)
    jit_hooks = tuple(trainer.hooks.jit_hooks_due(step))
    fn = step_fn(trainer, trainer.config.num_microbatches_at_step(step), jit_hooks)
    artifacts = None
    if not trainer._logged_step_artifacts:
        trainer._logged_step_artifacts = True
        artifacts = _log_step_artifacts(trainer, fn, state, batch, batch_kwargs)
    start = time.perf_counter()  # a step's duration counts its compile, pool or not
    try:
        if lm.prefault.active():
            # compiled first (the call below finds it in jax's caches), so that the pages
            # faulted in ahead go back to the kernel just before the step allocates its own
            with trainer.config.use_device_mesh():
                fn.lower(state, tuple(batch), batch_kwargs).compile()
            lm.prefault.release()
        # the step's span in a profile (TensorBoard's step view, ProfileData's "train")
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            with trainer.config.use_device_mesh():
                loss, new_state, metrics, cb_infos = fn(state, tuple(batch), batch_kwargs)
            loss = jax.block_until_ready(loss)
    except BaseException:
        if artifacts is not None:
            artifacts.join(reraise=False)  # the step's own error is the one to report
        raise
    duration = time.perf_counter() - start
    if artifacts is not None:
        artifacts.join()
    info = StepInfo(
        state=new_state, loss=loss, step_duration=duration, metrics=metrics, completed_step=step
    )
    _check_finite(trainer, info)
    return info, list(cb_infos)


def _log_step_artifacts(trainer: Trainer, fn, state, batch, batch_kwargs) -> _Background | None:
    """The train step's jaxpr and HLO as artifacts (log_jaxprs / log_xla_hlo).

    The step is traced and lowered here, once: the call that runs it reuses both. The
    texts are produced and logged in a background thread while XLA compiles the step,
    and joined after the step."""
    from lm.tracker.jit_artifacts import log_jaxpr, log_xla_hlo

    if not (trainer.config.log_jaxprs or trainer.config.log_xla_hlo):
        return None
    with trainer.config.use_device_mesh():
        traced = fn.trace(state, tuple(batch), batch_kwargs)
        lowered = traced.lower() if trainer.config.log_xla_hlo else None

    def work():
        if lowered is not None:
            log_xla_hlo("train_step", lowered, tracker=trainer.tracker)
        if trainer.config.log_jaxprs:
            log_jaxpr("train_step", traced.jaxpr, tracker=trainer.tracker)

    return _Background(work, name="lm-step-artifacts")


def _check_finite(trainer: Trainer, info: StepInfo) -> None:
    value = float(info.loss)
    if math.isfinite(value):
        return
    if (math.isnan(value) and trainer.config.crash_on_nan) or (
        math.isinf(value) and trainer.config.crash_on_inf
    ):
        last = None
        if trainer.checkpointer is not None:
            from lm.checkpoint import discover_latest_checkpoint

            trainer.checkpointer.wait_until_finished()
            last = discover_latest_checkpoint(trainer.config.save_path)
        kind = "NaN" if math.isnan(value) else "infinite"
        raise NonFiniteLossError(
            f"Loss is {kind} at step {info.step}. Last good checkpoint: {last or 'none saved'}. "
            "Set trainer.crash_on_nan / crash_on_inf: false to keep going."
        )
