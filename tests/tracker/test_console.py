"""Console progress: plain periodic lines off a terminal, one tqdm bar on it."""

import io
import logging

import jax
import jax.numpy as jnp
import pytest

import lm.tracker
import lm.tracker.console as console
from lm.tracker import ProgressReporter
from lm.trainer.state import StepInfo


class FakeClock:
    def __init__(self, times):
        self.times = list(times)
        self.now = self.times[0]

    def __call__(self):
        return self.now

    def advance_to(self, t):
        self.now = t


def run(reporter, clock, times, *, tokens_per_second=12345.0):
    for step, t in enumerate(times):
        clock.advance_to(t)
        metrics = (
            {} if tokens_per_second is None else {console.TOKENS_PER_SECOND_KEY: tokens_per_second}
        )
        info = StepInfo(
            state=None,
            loss=jnp.float32(5.0 - step),  # a device scalar, converted only when printed
            step_duration=0.5,
            metrics=metrics,
            completed_step=step,
        )
        reporter.on_step(info)
    reporter.finish()


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock([0.0])
    monkeypatch.setattr(console.time, "monotonic", c)
    return c


def test_plain_lines_every_n_steps(clock):
    out = io.StringIO()
    reporter = ProgressReporter(5, every=2, stream=out)
    assert not reporter.tty
    run(reporter, clock, [0.0, 1.0, 2.0, 3.0, 4.0])
    assert out.getvalue().splitlines() == [
        "step 1/5 (20.0%) | loss 5.0000 | 12.3k tokens/s | elapsed 0:00 | ETA ?",
        "step 3/5 (60.0%) | loss 3.0000 | 12.3k tokens/s | elapsed 0:02 | ETA 0:02",
        "step 5/5 (100.0%) | loss 1.0000 | 12.3k tokens/s | elapsed 0:04 | ETA 0:00",
    ]
    assert "\r" not in out.getvalue()


def test_plain_lines_every_interval_and_eta_from_recent_steps(clock):
    out = io.StringIO()
    reporter = ProgressReporter(100, interval_s=30.0, stream=out)
    # 10 s per step: a line at step 1, then each time 30 s have passed.
    run(reporter, clock, [10.0 * i for i in range(8)], tokens_per_second=None)
    lines = out.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == [
        "step 1/100 (1.0%)",
        "step 4/100 (4.0%)",
        "step 7/100 (7.0%)",
        "step 8/100 (8.0%)",  # finish() prints the last step
    ]
    assert lines[1].endswith("0.10 steps/s | elapsed 0:30 | ETA 16:00")


def test_default_plain_output_is_a_log_record(clock, caplog):
    reporter = ProgressReporter(2, tty=False)
    with caplog.at_level(logging.INFO, logger="lm.progress"):
        run(reporter, clock, [0.0, 1.0])
    assert [r.name for r in caplog.records] == ["lm.progress", "lm.progress"]
    assert caplog.records[-1].getMessage().startswith("step 2/2 (100.0%) | loss 4.0000")


def test_tokens_per_second_logged_to_the_tracker_at_the_step(clock):
    # The trainer's metrics hook logs tokens/s to the tracker (not into `info.metrics`)
    # before the progress hook runs; the line shows it, as docs/tracking.md does.
    out = io.StringIO()
    reporter = ProgressReporter(3, every=1, stream=out)
    with lm.tracker.NoopTracker():
        for step, t in enumerate([0.0, 1.0, 2.0]):
            clock.advance_to(t)
            if step != 1:  # step 1 logged nothing: no stale rate from step 0
                lm.tracker.log({console.TOKENS_PER_SECOND_KEY: 125_300.0 * (step + 1)}, step=step)
            reporter.on_step(StepInfo(state=None, loss=1.0, step_duration=1.0, completed_step=step))
    assert out.getvalue().splitlines() == [
        "step 1/3 (33.3%) | loss 1.0000 | 125.3k tokens/s | elapsed 0:00 | ETA ?",
        "step 2/3 (66.7%) | loss 1.0000 | 1.00 steps/s | elapsed 0:01 | ETA 0:01",
        "step 3/3 (100.0%) | loss 1.0000 | 375.9k tokens/s | elapsed 0:02 | ETA 0:00",
    ]


def test_terminal_bar(clock):
    out = io.StringIO()
    reporter = ProgressReporter(3, stream=out, tty=True)
    run(reporter, clock, [0.0, 1.0, 2.0])
    text = out.getvalue()
    assert "\r" in text  # one line redrawn in place
    assert "3/3" in text and "loss=3.0000" in text and "tok/s=12.3k" in text
    assert "step 1/3" not in text  # no plain lines


def test_resumed_run_bar_starts_part_way(clock):
    out = io.StringIO()
    reporter = ProgressReporter(10, stream=out, tty=True)
    clock.advance_to(0.0)
    reporter.on_step(StepInfo(state=None, loss=1.0, step_duration=0.1, completed_step=6))
    assert reporter._bar.n == 7 and reporter._bar.initial == 6
    reporter.finish()


def test_only_process_zero_reports(clock, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 3)
    out = io.StringIO()
    run(ProgressReporter(3, every=1, stream=out), clock, [0.0, 1.0, 2.0])
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    "seconds, text", [(0, "0:00"), (65, "1:05"), (3725, "1:02:05"), (-1, "?"), (float("nan"), "?")]
)
def test_format_duration(seconds, text):
    assert console.format_duration(seconds) == text


@pytest.mark.parametrize("value, text", [(12.34, "12.3"), (12345.6, "12.3k"), (2.5e6, "2.5M")])
def test_format_rate(value, text):
    assert console.format_rate(value) == text


def test_bad_arguments():
    with pytest.raises(ValueError, match="every must be a positive number of steps"):
        ProgressReporter(10, every=0)
    with pytest.raises(ValueError, match="total_steps must be >= 0"):
        ProgressReporter(-1)
