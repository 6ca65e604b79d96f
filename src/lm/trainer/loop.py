"""The training loop of a `Trainer`: fetch a batch, run the step, run the hooks.

`training_steps` yields one `StepInfo` per step; `train` runs it to `num_train_steps`, then
the final hooks, and checkpoints the current step on SIGTERM (raising `Preempted`). A
resumed run redoes the hooks of its restored step that may have been cut short.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import jax.numpy as jnp

import lm.startup_gc
from lm.trainer.checks import batch_size_of, describe_batch_axes
from lm.trainer.compiled_step import run_step
from lm.trainer.state import StepInfo, TrainerState

if TYPE_CHECKING:
    from lm.trainer.trainer import Trainer

logger = logging.getLogger(__name__)

S = TypeVar("S", bound=TrainerState)


class Preempted(RuntimeError):
    """Training stopped on a termination signal after checkpointing the current step."""


def _preemption_cause(preemption) -> str:
    """`signal 15` here, or that another process was signalled (then this one got none)."""
    received = preemption.signal_received
    return f"signal {received}" if received is not None else "another process received SIGTERM"


def train(trainer: Trainer, state: S, train_loader: Iterable[Any]) -> StepInfo[S]:
    """`Trainer.train` once its arguments are checked: the steps under a SIGTERM handler,
    then the final hooks and the wait for pending checkpoints."""
    from lm.checkpoint import PreemptionSignal

    info = None
    # The handler stays installed until the final checkpoint has committed: a SIGTERM
    # during the final hooks must not kill the process half-way through that save.
    with PreemptionSignal() as preemption:
        for info in training_steps(trainer, state, train_loader):
            if preemption.requested_on_any_process():
                _save_for_preemption(trainer, info)
                raise Preempted(
                    f"Preempted ({_preemption_cause(preemption)}) after step {info.step}; "
                    f"checkpoint saved under {trainer.config.save_path}. "
                    f"{_how_to_resume(trainer)}"
                )
        if info is None and int(state.step) == 0 < trainer.num_train_steps:
            raise ValueError(
                "the data loader produced no batch for step 0 (the training data holds "
                "fewer examples than one batch): nothing was trained or saved"
            )
        if info is None and int(state.step) == 0:  # num_train_steps: 0
            logger.info("num_train_steps is 0: nothing to train, and no hooks run")
            return StepInfo(
                state=state, loss=jnp.float32(jnp.nan), step_duration=0.0, completed_step=-1
            )
        if info is None:  # nothing to do: the run had already finished (or ran out of data)
            info = StepInfo(
                state=state,
                loss=jnp.float32(jnp.nan),
                step_duration=0.0,
                completed_step=int(state.step) - 1,
            )
            logger.info(
                "Run %s at step %d of %d; running the final hooks only.",
                "already" if int(state.step) >= trainer.num_train_steps else "out of data",
                int(state.step),
                trainer.num_train_steps,
            )
            if trainer.hooks.run_final_hooks(info, functools.partial(_logged, trainer)):
                logger.info(
                    "The final evaluation of step %d is in the run's log: not run again",
                    info.step,
                )
        else:
            trainer.run_hooks(info, force=True)
        if trainer.checkpointer is not None:
            trainer.checkpointer.wait_until_finished()
        if preemption.requested:
            logger.warning(
                "Termination signal received during the final hooks; they have finished "
                "(final checkpoint committed), so the run is complete"
            )
    return info


def _how_to_resume(trainer: Trainer) -> str:
    """The rerun that resumes this run: the same command only if it fixes the run id."""
    if not trainer.config.run_id_is_generated:
        return "Rerun the same command to resume."
    return f"Rerun with --trainer.id {trainer.run_id} to resume (the run id was not set)."


def _save_for_preemption(trainer: Trainer, info: StepInfo) -> None:
    if trainer.checkpointer is None:
        logger.warning("Preempted, but this trainer has no checkpointer: nothing is saved")
        return
    logger.warning("Termination signal received: checkpointing step %d before exiting", info.step)
    trainer.checkpointer.on_step(info, force=True, temporary=True)
    trainer.checkpointer.wait_until_finished()


def training_steps(
    trainer: Trainer, state: S, train_loader: Iterable[Any]
) -> Iterator[StepInfo[S]]:
    """`Trainer.training_steps` once its arguments are checked: a step per batch, its hooks
    after it, until `num_train_steps` or the end of the data."""
    iterator = _iterate_from(train_loader, int(state.step))
    if int(state.step) < trainer.num_train_steps:
        _redo_hooks_of_the_restored_step(trainer, state)
        trainer.hooks.run_train_start(int(state.step))
    try:
        while int(state.step) < trainer.num_train_steps:
            load_start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                logger.warning(
                    "The data loader ran out at step %d; stopping early.", int(state.step)
                )
                return
            loading_time = time.perf_counter() - load_start
            batch_tuple = batch if isinstance(batch, tuple) else (batch,)
            _check_batch(trainer, batch_tuple, int(state.step))
            info, cb_infos = run_step(trainer, state, batch_tuple, {})
            lm.startup_gc.end_pause()  # start-up is over (a no-op unless train_lm paused)
            hook_start = time.perf_counter()
            trainer.hooks.run_jit_hooks_outside_step(info, cb_infos)
            info = dataclasses.replace(
                info, metrics={**info.metrics, "throughput/loading_time": loading_time}
            )
            trainer.run_hooks(info)
            trainer._last_hook_time = time.perf_counter() - hook_start
            state = info.state
            yield info
    finally:
        # Join the loader's producer thread now, rather than leaving it to end on its own
        # once the iterator is collected (possibly while the interpreter shuts down).
        # An iterator the caller passed in is theirs to close.
        close = getattr(iterator, "close", None)
        if close is not None and iterator is not train_loader:
            close()


def _check_batch(trainer: Trainer, batch: tuple, step: int) -> None:
    """The batch has the config's batch axis at the size the schedule gives `step`:
    microbatching, throughput and the data position of a resumed run all follow it."""
    Batch = trainer.config.batch_axis_at_step(step)
    size = batch_size_of(batch, Batch.name)
    if size == Batch.size:
        return
    where = (
        f"trainer.train_batch_size is {Batch.size}"
        if trainer.config.batch_schedule.is_constant
        else f"trainer.train_batch_size schedules {Batch.size} examples for step {step}"
    )
    if size is None:
        raise ValueError(
            f"The batch for step {step} has no axis {Batch.name!r} (trainer.batch_axis): "
            f"its arrays are {describe_batch_axes(batch)}. Batch a dataset with "
            "trainer.data_loader(dataset), which adds the batch axis; if your batches "
            "already have a batch axis under another name, set trainer.batch_axis to it"
        )
    got = "batches that disagree" if size == -1 else f"{size} examples"
    raise ValueError(
        f"The batch for step {step} has {got} along {Batch.name!r} "
        f"({describe_batch_axes(batch)}), but {where}: microbatching, throughput "
        "metrics and where a resumed run continues in the data all follow the config. "
        "Pass trainer.data_loader(dataset) (it follows the schedule) or set "
        "trainer.train_batch_size to your loader's batch size"
    )


def _redo_hooks_of_the_restored_step(trainer: Trainer, state: S) -> None:
    """On a resumed run, the hooks whose work at the restored step may have been cut
    short (`Callback.redo_after_resume`: evaluation) run again for that step, unless the
    run's JSON log shows they finished there."""
    step = int(state.step)
    if step == 0 or trainer.restored_step != step:
        return
    info = StepInfo(
        state=state, loss=jnp.float32(jnp.nan), step_duration=0.0, completed_step=step - 1
    )
    outcome = trainer.hooks.run_redo_after_resume(info, functools.partial(_logged, trainer))
    if outcome == "ran":
        logger.info(
            "Ran the evaluation of step %d again: the run stopped after that step's "
            "checkpoint, possibly before its evaluation was logged",
            step - 1,
        )
    elif outcome == "done before":
        logger.info(
            "The evaluation of step %d was logged before the run stopped: not run again",
            step - 1,
        )


def _logged(trainer: Trainer, keys: set[str], at: int) -> bool:
    """Whether the run's JSON log holds all of `keys` at step `at`. Process 0 holds the
    log: its answer, so that every process runs a (collective) evaluation or none does."""
    from lm.tracker.json_logger import logged_metric_keys

    found = keys <= logged_metric_keys(trainer.tracker, at)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        found = bool(multihost_utils.broadcast_one_to_all(jnp.bool_(found)))
    return found


def _iterate_from(loader: Iterable[Any], step: int) -> Iterator[Any]:
    if hasattr(loader, "iter_from_step"):
        return iter(loader.iter_from_step(step))
    return iter(loader)
