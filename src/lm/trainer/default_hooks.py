"""The hooks every Trainer gets unless `add_default_hooks=False`: metrics logging with
throughput and MFU, console progress, watch, and the profiler."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import jax

import lm.tracker
from lm.trainer.hooks import Callback
from lm.trainer.state import StepInfo
from lm.trainer.throughput import device_peak_flops, measured_cpu_peak_flops

if TYPE_CHECKING:
    from lm.trainer.trainer import Trainer

logger = logging.getLogger(__name__)


class LogMetricsHook(Callback):
    """Logs the step's metrics plus throughput (examples/s, tokens/s, MFU, totals) every step."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self._peak: float | None | bool = False  # False = not looked up yet
        self._checked_over_100 = False

    def _peak_flops(self) -> float | None:
        if self._peak is False:
            self._peak = device_peak_flops(self.trainer.mp.compute_dtype)
            if self._peak:
                lm.tracker.log_summary({"throughput/peak_flops_per_device": self._peak})
        return self._peak

    def _mfu(self, achieved: float, peak: float) -> float:
        """MFU in percent. Above 100% (once per run): on CPU the peak, measured at step 0
        while other work held the cores, is measured again and the larger kept; if it stays
        above 100%, a warning says the figure is relative to a low peak."""
        mfu = 100.0 * achieved / (peak * jax.device_count())
        if mfu <= 100.0 or self._checked_over_100:
            return mfu
        self._checked_over_100 = True
        on_cpu = jax.devices()[0].platform == "cpu"
        if on_cpu:
            again = measured_cpu_peak_flops.__wrapped__() / max(1, jax.local_device_count())
            if again > peak:
                self._peak = peak = again
                lm.tracker.log_summary({"throughput/peak_flops_per_device": peak})
                mfu = 100.0 * achieved / (peak * jax.device_count())
        if mfu > 100.0:
            logger.warning(
                "MFU is %.0f%%: above the device's peak of %.1f GFLOP/s (%s). MFU figures of "
                "this run are relative to it",
                mfu,
                peak / 1e9,
                "measured on this CPU with a float32 matmul while other work may have held its "
                "cores"
                if on_cpu
                else "from lm.trainer.throughput's table of device peaks, which may not know "
                "this device's",
            )
        return mfu

    def on_step(self, info: StepInfo, force: bool = False) -> None:
        if force:
            return  # the last step was logged when it ran
        trainer = self.trainer
        schedule = trainer.config.batch_schedule
        batch_size = schedule.batch_size_at_step(info.step)
        metrics = dict(jax.device_get(dict(info.metrics)))
        metrics["train/loss"] = float(info.loss)
        duration = max(info.step_duration, 1e-9)
        examples_per_s = batch_size / duration
        metrics["throughput/duration"] = duration
        metrics["throughput/examples_per_second"] = examples_per_s
        metrics["throughput/total_examples"] = schedule.global_data_offset_by_step(info.step + 1)
        # this step's hooks are still running: the time is the previous step's
        metrics["throughput/hook_time"] = trainer._last_hook_time
        if trainer.tokens_per_example:
            metrics["throughput/tokens_per_second"] = examples_per_s * trainer.tokens_per_example
            metrics["throughput/total_tokens"] = (
                metrics["throughput/total_examples"] * trainer.tokens_per_example
            )
        if trainer.flops_per_example and (peak := self._peak_flops()):
            achieved = examples_per_s * trainer.flops_per_example
            metrics["throughput/mfu"] = self._mfu(achieved, peak)
        lm.tracker.log(metrics, step=info.step)


class ProfilerHook(Callback):
    """Captures a JAX trace of steps [start, start + num) into `<run_dir>/profiler`.

    The trace starts once step `start - 1` is done, or before the first step when the run
    starts at `start` (`profiler_start_step: 0`), and stops after step `start + num - 1`
    (clamped to the run) or at the end of training. Each step is a `train` step annotation
    in it. Only process 0 offers a Perfetto link (it waits until the link is opened)."""

    def __init__(self, trainer: Trainer):
        config = trainer.config
        self.start = config.profiler_start_step
        self.stop = min(
            config.profiler_start_step + config.profiler_num_steps, config.num_train_steps
        )
        if self.stop <= self.start:
            logger.warning(
                "Profiler window [%d, %d) is empty for %d training steps; not profiling",
                self.start,
                self.stop,
                config.num_train_steps,
            )
        self.perfetto = config.profiler_perfetto_link
        self.log_dir = os.path.join(config.run_dir, "profiler")
        self.active = False

    def _maybe_start(self, next_step: int) -> None:
        if self.active or next_step != self.start or self.start >= self.stop:
            return
        logger.info(
            "Starting profiler (steps %d-%d) into %s", self.start, self.stop - 1, self.log_dir
        )
        jax.profiler.start_trace(
            self.log_dir,
            create_perfetto_link=self.perfetto and jax.process_index() == 0,
            create_perfetto_trace=self.perfetto,
        )
        self.active = True

    def on_train_start(self, step: int) -> None:
        self._maybe_start(step)

    def on_step(self, info: StepInfo, force: bool = False) -> None:
        next_step = info.step + 1
        if self.active and (next_step >= self.stop or force):
            jax.block_until_ready(info.state)
            jax.profiler.stop_trace()
            self.active = False
            logger.info(
                "Profile written to %s (view with `tensorboard --logdir %s`)",
                self.log_dir,
                self.log_dir,
            )
        elif not force:
            self._maybe_start(next_step)


class CheckpointHook(Callback):
    """Runs the checkpointer's policy after every step; forced at the end of training.

    A forced save of the very state the run resumed from is skipped when this run's
    directory holds it (resuming a finished run must not rewrite its final checkpoint); a
    temporary one is marked permanent instead."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_step(self, info: StepInfo, force: bool = False) -> None:
        checkpointer = self.trainer.checkpointer
        if checkpointer is None:
            return
        if (
            force
            and self.trainer.restored_step == info.step + 1
            and checkpointer.keep_final(info.step)
        ):
            return
        checkpointer.on_step(info, force=force)


class ProgressHook(Callback):
    """The console progress bar (TTY) or periodic progress lines (logs); closed at the end."""

    def __init__(self, total_steps: int):
        from lm.tracker.console import ProgressReporter

        self.reporter = ProgressReporter(total_steps)

    def on_step(self, info: StepInfo, force: bool = False) -> None:
        if force:
            self.reporter.finish()
        else:
            self.reporter.on_step(info)


def add_default_hooks(trainer: Trainer) -> None:
    config = trainer.config
    trainer.add_hook(LogMetricsHook(trainer), every=1)
    if jax.process_index() == 0:
        trainer.add_hook(ProgressHook(config.num_train_steps), every=1)
    if config.watch.is_enabled:
        trainer.add_hook(config.watch.build(), every=config.watch.interval)
    if config.profiler:
        trainer.add_hook(ProfilerHook(trainer), every=1)
    trainer.add_hook(CheckpointHook(trainer), every=1)
