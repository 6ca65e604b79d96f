"""TensorBoard tracker (`type: tensorboard`): scalars, histograms, text, hyperparameters.

Events go to `<logdir>/<run_id>/events.out.tfevents.*`, written with TensorBoard's own
record writer and summary protos (no TensorFlow or torch needed) through fsspec, so
`logdir` may be a local path or any fsspec URL. Needs the `profiling` extra:
`pip install 'lm[profiling]'`.

Each session marks its start with a `SessionLog` START event, TensorBoard's restart marker: a
fresh run at the top of its file, a resumed run (earlier event files are there) at the step
its training resumes at, the first step it logs `train/loss` at. TensorBoard then drops the
earlier sessions' points from that step on, which the resumed run logs again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import logging
import os
import pathlib
import socket
import tempfile
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import fsspec
import jax
import numpy as np

from lm.config.errors import FieldError, field_problem, raise_problems
from lm.fs import local_path
from lm.tracker.base import (
    Histogram,
    NoopTracker,
    Tracker,
    TrackerConfig,
    plain_value,
    to_python_scalar,
)
from lm.tracker.scrub import scrub_secrets, scrub_text, scrubbed_copy

logger = logging.getLogger(__name__)

SESSION_START_METRIC = "train/loss"
"""The metric the trainer logs at every training step: its first step in a session is the
step the run starts (or resumes) at."""

_file_counter = itertools.count()

_INSTALL_HINT = (
    "The tensorboard tracker needs the `tensorboard` package: pip install 'lm[profiling]' "
    "(or `uv sync --extra profiling`)."
)


def _require_tensorboard():
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2 as hparams_summary
        from tensorboard.plugins.text import summary_v2 as text_summary
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return event_pb2, summary_pb2, hparams_summary, text_summary, RecordWriter


@TrackerConfig.register_subclass("tensorboard")
@dataclasses.dataclass(frozen=True)
class TensorboardConfig(TrackerConfig):
    """TensorBoard event files under `<logdir>/<run_id>/`."""

    logdir: str = "logs"
    """Root directory (local or fsspec URL); each run writes into `<logdir>/<run_id>/`."""
    flush_interval_s: float = 10.0
    """Seconds between flushes of the event file (it is always flushed at finish)."""

    output_field: ClassVar[str | None] = "logdir"

    def __post_init__(self):
        problems: list[FieldError] = []
        if not self.logdir:
            problems.append(FieldError("logdir", "must be a non-empty path, got an empty string"))
        else:
            problems += field_problem(self.check_output)
        if self.flush_interval_s < 0:
            problems.append(
                FieldError("flush_interval_s", f"must be >= 0 seconds, got {self.flush_interval_s}")
            )
        # Checked here, when the config is parsed, not when the tracker starts: that comes
        # after the cluster, the data cache and the model are set up.
        if importlib.util.find_spec("tensorboard") is None:
            problems.append(
                FieldError(
                    "type",
                    "`type: tensorboard` needs the `tensorboard` package, which is not "
                    "installed: pip install 'lm[profiling]' (or `uv sync --extra profiling`), or "
                    "choose another tracker type (json, wandb).",
                )
            )
        raise_problems(problems)

    def run_path(self, run_id: str | None) -> str:
        """`<logdir>/<run_id>`, the directory the run's event files go to."""
        return f"{self.logdir.rstrip('/')}/{run_id or 'run'}"

    def check_output(self, run_id=None, *, run_dir=None) -> None:
        path = self.logdir if run_id is None else self.run_path(run_id)
        self.check_folders("logdir", "cannot write TensorBoard events", path)

    def destination(self, run_id, *, run_dir=None) -> tuple[str, str]:
        path = self.run_path(run_id)
        return (
            f"TensorBoard events to {local_path(path) or path}",
            "TensorBoard would show every point twice. Remove one of them, or give one "
            "another `logdir`",
        )

    def init(self, run_id: str | None, *, run_dir: str | None = None) -> Tracker:
        _require_tensorboard()
        if jax.process_index() != 0:
            return NoopTracker()
        path = self.run_path(run_id)
        logger.info("Writing TensorBoard events to %s", path)
        return TensorboardTracker(path, flush_interval_s=self.flush_interval_s)


class TensorboardTracker(Tracker):
    """Writes one TensorBoard event file in `log_path`."""

    name = "tensorboard"

    def __init__(self, log_path: str, *, flush_interval_s: float = 10.0):
        (
            self._event_pb2,
            self._summary_pb2,
            self._hparams_summary,
            self._text_summary,
            record_writer_cls,
        ) = _require_tensorboard()
        self.log_path = log_path
        fs, root = fsspec.core.url_to_fs(log_path)
        fs.makedirs(root, exist_ok=True)
        self._fs = fs
        self._root = root
        # event files of an earlier session of this run: a resumed run writes beside them
        self._continues_run = any(_is_event_file(p) for p in fs.ls(root, detail=False))
        # time, then a per-process counter: TensorBoard reads a directory's event files in
        # name order, so a later session's file (and its restart marker) comes after
        filename = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_file_counter):06d}"
        )
        self.event_file = f"{root.rstrip('/')}/{filename}"
        self._writer = record_writer_cls(fs.open(self.event_file, "wb"))
        self._flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self._last_step = 0
        self._warned: set[str] = set()
        self._finished = False
        self._hparams_values: list = []
        self._write_event(
            self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        )
        # TensorBoard takes the first session start it reads as the run's beginning and each
        # later one as a restart: a fresh run marks its start here, a resumed run where its
        # training resumes (`_mark_restart`)
        self._restart_pending = self._continues_run
        if not self._continues_run:
            self._write_session_start(0)

    def _write_session_start(self, step: int) -> None:
        start = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
        event = self._event_pb2.Event(wall_time=time.time(), step=step, session_log=start)
        self._write_event(event, force_flush=True)

    def _mark_restart(self, step: int) -> None:
        """A resumed run trains again from `step`: write TensorBoard's restart marker (a
        `SessionLog` START event at `step`), so that TensorBoard drops the earlier sessions'
        points at `step` and later, which this run logs again, instead of showing each of
        them twice."""
        self._restart_pending = False
        logger.info(
            "TensorBoard: the run resumes at step %d; its earlier points from step %d on are "
            "replaced",
            step,
            step,
        )
        self._write_session_start(step)
        if step <= 0 and self._hparams_values:
            # the marker also drops this session's own hyperparameters (step 0): again
            self._write_summary(self._hparams_values, 0, force_flush=True)

    # --- writing -------------------------------------------------------------------------

    def _write_event(self, event, *, force_flush: bool = False) -> None:
        self._writer.write(event.SerializeToString())
        if force_flush or time.monotonic() - self._last_flush >= self._flush_interval_s:
            self.flush()

    def flush(self) -> None:
        self._writer.flush()
        self._last_flush = time.monotonic()

    def _write_summary(self, values: list, step: int, *, force_flush: bool = False) -> None:
        if not values:
            return
        summary = self._summary_pb2.Summary(value=values)
        event = self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        self._write_event(event, force_flush=force_flush)

    def _values(self, metrics: Mapping[str, Any]) -> list:
        values = []
        for tag, raw in metrics.items():
            value = to_python_scalar(raw)
            if isinstance(value, bool | int | float | np.number):
                values.append(self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value)))
            elif isinstance(value, str):
                values.extend(self._text_summary.text_pb(tag, scrub_text(value)).value)
            elif isinstance(value, Histogram):
                values.append(self._summary_pb2.Summary.Value(tag=tag, histo=_histo(value)))
            elif isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.number):
                hist = Histogram.from_array(value)
                values.append(self._summary_pb2.Summary.Value(tag=tag, histo=_histo(hist)))
            elif tag not in self._warned:
                self._warned.add(tag)
                logger.warning(
                    "TensorBoard cannot show %r of type %s; logging it is skipped. Log a "
                    "number, a string, an array or an lm.tracker.Histogram.",
                    tag,
                    type(raw).__name__,
                )
        return values

    # --- Tracker -------------------------------------------------------------------------

    def log_hyperparameters(self, hparams: Mapping[str, Any]) -> None:
        plain = scrub_secrets(plain_value(dict(hparams)))
        flat = _flatten(plain)
        summary = self._hparams_summary.hparams_pb(flat)
        text = self._text_summary.text_pb(
            "hparams", "```json\n" + json.dumps(plain, indent=2, sort_keys=True) + "\n```"
        )
        self._hparams_values = list(summary.value) + list(text.value)
        self._write_summary(self._hparams_values, 0, force_flush=True)

    def log(self, metrics: Mapping[str, Any], *, step: int | None, commit: bool | None = None):
        if step is None:
            step = self._last_step
        step = int(step)
        if self._restart_pending and SESSION_START_METRIC in metrics:
            self._mark_restart(step)
        self._last_step = max(self._last_step, step)
        self._write_summary(self._values(metrics), step)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        self._write_summary(self._values(metrics), self._last_step, force_flush=True)

    def log_artifact(self, artifact_path, *, name: str | None = None, type: str | None = None):
        """Copy the file or directory (text scrubbed of secrets) into `<log_path>/artifacts/`."""
        src = pathlib.Path(artifact_path)
        if not src.exists():
            raise FileNotFoundError(f"log_artifact: {artifact_path} does not exist")
        dest_root = f"{self._root.rstrip('/')}/artifacts/{name or src.name}"
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        with tempfile.TemporaryDirectory(prefix="lm-artifact-") as scratch:
            for f in files:
                rel = "" if src.is_file() else "/" + f.relative_to(src).as_posix()
                dest = dest_root + rel
                self._fs.makedirs(self._fs._parent(dest), exist_ok=True)
                self._fs.put_file(str(scrubbed_copy(f, scratch)), dest)

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.flush()
        self._writer.close()


def _is_event_file(path: str) -> bool:
    return "tfevents" in path.rstrip("/").rpartition("/")[2]


def _histo(h: Histogram):
    from tensorboard.compat.proto import summary_pb2

    edges = np.asarray(h.edges, dtype=np.float64)
    counts = np.asarray(h.counts, dtype=np.float64)
    # TensorBoard buckets are (previous limit, limit]; bucket i ends at edges[i + 1].
    return summary_pb2.HistogramProto(
        min=float(h.min),
        max=float(h.max),
        num=float(h.num),
        sum=float(h.sum),
        sum_squares=float(h.sum_squares),
        bucket_limit=edges[1:].tolist(),
        bucket=counts.tolist(),
    )


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested hyperparameters as `a/b/c` keys with values the hparams plugin accepts."""
    out: dict[str, bool | int | float | str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
        else:  # None, lists
            out[key] = json.dumps(v)
    return out
