"""Console progress for the training loop: step, loss, tokens/s and ETA.

On a terminal it is one updating tqdm bar. When the output is not a terminal (CI logs,
`nohup`, Slurm files) it prints a plain line every `every` steps, or every `interval_s`
seconds when `every` is unset, instead of carriage-return noise. Only process 0 reports.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import jax

from lm.tracker.base import logged_metrics, to_python_scalar

logger = logging.getLogger(__name__)
# Non-terminal progress lines are log records of this logger when no stream is given, so
# they reach the console and `<log_dir>/<run_id>.log` through configure_logging.
progress_logger = logging.getLogger("lm.progress")

TOKENS_PER_SECOND_KEY = "throughput/tokens_per_second"
# Weight of the newest step in the moving average of seconds per step.
_EMA = 0.1
# At most this often (seconds) the terminal bar's loss/throughput text is refreshed: each
# refresh converts the loss, which waits for the device.
_POSTFIX_INTERVAL_S = 0.5


def format_duration(seconds: float) -> str:
    """`3725` -> `"1:02:05"`, `65` -> `"1:05"`; `"?"` for unknown or negative values."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_rate(value: float) -> str:
    """`12345.6` -> `"12.3k"`, SI suffixes up to `T`."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.1f}"


class ProgressReporter:
    """A trainer hook printing progress; call `on_step(info)` after each step, then `finish()`.

    Args:
        total_steps: number of steps the run will take in total.
        every: non-terminal mode prints every `every` steps; None: every `interval_s` s.
        interval_s: seconds between non-terminal lines when `every` is None.
        stream: where to write. Default: the bar goes to stderr and non-terminal lines
            are `logging` records of the `lm.progress` logger (so they also reach the
            run's log file once `configure_logging` ran).
        tty: force terminal (True) or plain-line (False) mode; default `stream.isatty()`.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        every: int | None = None,
        interval_s: float = 30.0,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ):
        if total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {total_steps}")
        if every is not None and every < 1:
            raise ValueError(f"every must be a positive number of steps (or None), got {every}")
        self.total_steps = total_steps
        self.every = every
        self.interval_s = interval_s
        self._stream = stream
        out = stream if stream is not None else sys.stderr
        self.tty = bool(tty) if tty is not None else bool(getattr(out, "isatty", lambda: False)())
        self.enabled = jax.process_index() == 0
        self._bar: Any = None
        self._start_time: float | None = None
        self._first_step: int | None = None
        self._last_call: float | None = None
        self._sec_per_step: float | None = None
        self._last_line_time = -math.inf
        self._last_line_step: int | None = None
        self._last_info: Any = None
        self._last_postfix = -math.inf

    # --- numbers -------------------------------------------------------------------------

    def _observe(self, step: int) -> None:
        now = time.monotonic()
        if self._start_time is None:
            self._start_time = now
            self._first_step = step
        elif self._last_call is not None:
            # The first interval includes compilation; it only seeds the average.
            dt = now - self._last_call
            self._sec_per_step = (
                dt if self._sec_per_step is None else (1 - _EMA) * self._sec_per_step + _EMA * dt
            )
        self._last_call = now

    def eta_seconds(self, step: int) -> float | None:
        """Seconds left after completing `step` (0-based), from the recent step time."""
        if self._sec_per_step is None:
            return None
        return max(self.total_steps - (step + 1), 0) * self._sec_per_step

    @staticmethod
    def _tokens_per_second(info: Any) -> float | None:
        # The trainer's metrics hook computes tokens/s outside the step and logs it to the
        # tracker (it is not in `info.metrics`); it runs before this hook, at the same step.
        metrics: Mapping[str, Any] = info.metrics or {}
        value = metrics.get(TOKENS_PER_SECOND_KEY)
        if value is None:
            value = logged_metrics(info.step).get(TOKENS_PER_SECOND_KEY)
        return None if value is None else float(to_python_scalar(value))

    def format_line(self, info: Any) -> str:
        """The plain progress line for `info` (a `StepInfo`)."""
        done = info.step + 1
        pct = 100.0 * done / self.total_steps if self.total_steps else 100.0
        parts = [f"step {done}/{self.total_steps} ({pct:.1f}%)"]
        parts.append(f"loss {float(to_python_scalar(info.loss)):.4f}")
        tps = self._tokens_per_second(info)
        if tps is not None:
            parts.append(f"{format_rate(tps)} tokens/s")
        elif self._sec_per_step:
            parts.append(f"{1.0 / self._sec_per_step:.2f} steps/s")
        elapsed = time.monotonic() - self._start_time if self._start_time is not None else 0.0
        parts.append(f"elapsed {format_duration(elapsed)}")
        eta = self.eta_seconds(info.step)
        parts.append(f"ETA {format_duration(math.nan if eta is None else eta)}")
        return " | ".join(parts)

    # --- hook ----------------------------------------------------------------------------

    def on_step(self, info: Any) -> None:
        if not self.enabled:
            return
        step = info.step
        self._observe(step)
        self._last_info = info
        if self.tty:
            self._update_bar(info)
        elif self._line_due(step):
            self._emit_line(info)

    def _line_due(self, step: int) -> bool:
        done = step + 1
        if self._last_line_step is None or done >= self.total_steps:
            return True
        if self.every is not None:
            return done - self._last_line_step >= self.every
        return time.monotonic() - self._last_line_time >= self.interval_s

    def _emit_line(self, info: Any) -> None:
        line = self.format_line(info)
        if self._stream is None:
            progress_logger.info(line)
        else:
            self._stream.write(line + "\n")
            self._stream.flush()
        self._last_line_step = info.step + 1
        self._last_line_time = time.monotonic()

    def _update_bar(self, info: Any) -> None:
        from tqdm import tqdm

        done = info.step + 1
        if self._bar is None:
            # A resumed run starts part-way; the bar's rate counts only this session.
            self._bar = tqdm(
                total=self.total_steps,
                initial=info.step,
                file=self._stream if self._stream is not None else sys.stderr,
                unit="step",
                dynamic_ncols=True,
                desc="train",
            )
        now = time.monotonic()
        if now - self._last_postfix >= _POSTFIX_INTERVAL_S or done >= self.total_steps:
            postfix = {"loss": f"{float(to_python_scalar(info.loss)):.4f}"}
            tps = self._tokens_per_second(info)
            if tps is not None:
                postfix["tok/s"] = format_rate(tps)
            self._bar.set_postfix(postfix, refresh=False)
            self._last_postfix = now
        self._bar.update(done - self._bar.n)

    def finish(self) -> None:
        """Close the bar, or print the last step's line if it was not printed yet."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif (
            not self.tty
            and self._last_info is not None
            and self._last_line_step != self._last_info.step + 1
        ):
            self._emit_line(self._last_info)
