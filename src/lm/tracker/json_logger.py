"""A tracker that writes JSON lines: one record per call, easy to read back and plot.

Records: `{"event": "hparams", "hparams": {...}}`, `{"event": "log", "step": N,
"metrics": {...}}`, `{"event": "summary", "summary": {...}}`, `{"event": "artifact",
"path": ...}` (artifacts are copied to `artifacts/` beside the log) and a final `{"event": "finish", "summary": {...}}` whose summary holds the last value of
every logged metric plus everything passed to `log_summary`. The hparams record is written
ahead of a session's first other record: a session that records nothing else (a run that
stopped before its first step) leaves the log as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import tempfile
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import fsspec
import jax
import numpy as np

from lm.config.errors import FieldError
from lm.fs import is_local_filesystem, local_path, missing_folders, remove_folders
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


def _jsonable(value: Any) -> Any:
    value = to_python_scalar(value)
    if isinstance(value, Histogram):
        return {
            "histogram": {"min": value.min, "max": value.max, "mean": value.mean, "num": value.num}
        }
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible rather than invalid
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return scrub_text(str(value))


class JsonLogger(Tracker):
    """Appends JSON lines to `path` (local or any fsspec URL).

    Local files are appended and flushed line by line, so a killed run keeps everything
    logged up to the kill. Remote filesystems that cannot append are rewritten whole at
    most every `flush_interval_s` seconds and at `finish()`.
    """

    name = "json"

    def __init__(self, path: str, *, flush_interval_s: float = 30.0, plot_path: str | None = None):
        self.path = path
        self.plot_path = plot_path
        self._fs, self._fs_path = fsspec.core.url_to_fs(path)
        self._local = is_local_filesystem(self._fs)
        # what this logger creates, removed again if the run logs nothing (it failed before
        # its first record): no half-made run directory holding only a "finish" line
        self._made = missing_folders(os.path.dirname(self._fs_path)) if self._local else []
        self._new_file = self._local and not os.path.exists(self._fs_path)
        self._wrote = False
        self._fs.makedirs(self._fs._parent(self._fs_path), exist_ok=True)
        self._summary: dict[str, Any] = {}
        self._buffer: list[str] = []
        self._last_flush = time.monotonic()
        self._flush_interval_s = flush_interval_s
        self._file = self._fs.open(self._fs_path, "a") if self._local else None
        if self._file is not None and self._ends_mid_line():
            self._file.write("\n")  # a run killed mid-write: its cut-off record stays alone
        if not self._local and self._fs.exists(self._fs_path):
            with self._fs.open(self._fs_path, "r") as f:
                self._buffer = f.read().splitlines(keepends=True)
            if self._buffer and not self._buffer[-1].endswith("\n"):
                self._buffer[-1] += "\n"
        self._finished = False
        self._logged_metrics = False
        # hparams records wait for the session's first other record: a run that stops
        # before it logs anything (a resume refused for a changed batch size, say) leaves an
        # existing log as it was, without an hparams and a "finish" line of a run that never was
        self._pending: list[dict[str, Any]] = []

    def _ends_mid_line(self) -> bool:
        """Whether the local log's last byte is not a newline (the last record was cut)."""
        with open(self._fs_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    def _write(self, record: dict[str, Any]) -> None:
        pending, self._pending = self._pending, []
        for earlier in pending:
            self._write(earlier)
        self._wrote = True
        line = json.dumps(_jsonable(record)) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._buffer.append(line)
            if time.monotonic() - self._last_flush > self._flush_interval_s:
                self._flush_remote()

    def metric_keys_at(self, step: int) -> set[str]:
        """The metric keys of the `log` records at `step` in this log so far, the records of
        earlier sessions of the run included (a record cut off by a kill is left out)."""
        marker = f'"step": {int(step)},'
        keys: set[str] = set()

        def scan(lines) -> None:  # a run's log grows with its steps: read it line by line
            for line in lines:
                if marker not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == "log" and record.get("step") == step:
                    keys.update(record.get("metrics") or {})

        if self._file is None:
            scan(self._buffer)
            return keys
        self._file.flush()
        with open(self._fs_path, encoding="utf-8", errors="replace") as f:
            scan(f)
        return keys

    def _flush_remote(self) -> None:
        with self._fs.open(self._fs_path, "w") as f:
            f.write("".join(self._buffer))
        self._last_flush = time.monotonic()

    def log_hyperparameters(self, hparams):
        hparams = scrub_secrets(plain_value(dict(hparams)))
        self._pending.append({"event": "hparams", "time": time.time(), "hparams": hparams})

    def log(self, metrics, *, step, commit=None):
        metrics = {k: v for k, v in metrics.items()}
        self._summary.update({k: v for k, v in metrics.items() if not isinstance(v, Histogram)})
        self._write({"event": "log", "step": step, "time": time.time(), "metrics": metrics})
        self._logged_metrics = True

    def log_summary(self, metrics):
        self._summary.update(metrics)
        self._write({"event": "summary", "time": time.time(), "summary": dict(metrics)})

    def log_artifact(self, artifact_path, *, name=None, type=None):
        """Copy the file or directory (text scrubbed) to `artifacts/<name>` beside the log."""
        src = pathlib.Path(artifact_path)
        if not src.exists():
            raise FileNotFoundError(f"log_artifact: {artifact_path} does not exist")
        dest_root = sibling_path(self.path, f"artifacts/{name or src.name}")
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        with tempfile.TemporaryDirectory(prefix="lm-artifact-") as scratch:
            for f in files:
                rel = "" if src.is_file() else "/" + f.relative_to(src).as_posix()
                fs, dest = fsspec.core.url_to_fs(dest_root + rel)
                fs.makedirs(fs._parent(dest), exist_ok=True)
                source = scrubbed_copy(f, scratch)
                if _same_local_file(fs, source, dest):
                    continue  # already in place (e.g. written by Trainer.write_artifact)
                fs.put_file(str(source), dest)
        self._write(
            {
                "event": "artifact",
                "time": time.time(),
                "path": dest_root,
                "source": str(artifact_path),
                "name": name,
                "type": type,
            }
        )

    def finish(self):
        if self._finished:
            return
        self._finished = True
        if not self._wrote and not self._summary:
            # nothing but hyperparameters (or nothing at all): the log stays as it was
            if self._new_file:
                self._remove_what_it_made()
            elif self._file is not None:
                self._file.close()
            return
        try:
            self._write({"event": "finish", "time": time.time(), "summary": self._summary})
        finally:  # closed also when the write fails (a full disk)
            if self._file is not None:
                self._file.close()
            else:
                self._flush_remote()
        if self.plot_path is not None:
            self._plot()

    def _remove_what_it_made(self) -> None:
        """The empty log file and the folders made for it (a run that failed before it
        logged anything)."""
        self._file.close()
        with contextlib.suppress(OSError):
            os.remove(self._fs_path)
        remove_folders(self._made)

    def _plot(self) -> None:
        from lm.tracker.viz import RunLogError, plot_run

        if not self._logged_metrics:
            return  # nothing ran (a run that failed before its first step): no figure, no noise
        try:
            panels = plot_run(self.path, self.plot_path, missing_level=logging.INFO)
        except RunLogError as e:
            logger.warning("No training curves drawn: %s", e)
        else:
            logger.info("Training curves (%s) written to %s", ", ".join(panels), self.plot_path)


@TrackerConfig.register_subclass("json")
@dataclasses.dataclass(frozen=True)
class JsonLoggerConfig(TrackerConfig):
    """JSON-lines metrics file."""

    output_field: ClassVar[str | None] = "path"

    path: str | None = None
    """Where to write. Default: `<log_dir>/<run_id>/metrics.jsonl`. `{run_id}` is expanded."""
    plot: bool = True
    """At finish, draw loss / learning rate / throughput curves into `curves.png` beside
    the log (see `python -m lm.main.viz_run`)."""

    def __post_init__(self):
        if self.path is not None:
            try:
                self.path.format(run_id="run")
            except (KeyError, IndexError, ValueError) as e:
                what = (
                    f"has the placeholder {{{e.args[0]}}}"
                    if isinstance(e, KeyError)
                    else f"cannot be expanded ({e})"
                )
                raise FieldError(
                    "path",
                    f"{self.path!r} {what}: only {{run_id}} is replaced; write {{{{ and }}}} "
                    "for a literal brace",
                ) from None
        # a file in the way is found now, not once the run has set up its data and model
        self.check_output()

    def resolved_path(self, run_id: str | None, *, run_dir: str | None = None) -> str:
        """The file this tracker writes for run `run_id`."""
        if self.path is not None:
            return self.path.format(run_id=run_id or "run")
        if run_dir is not None:
            return f"{str(run_dir).rstrip('/')}/metrics.jsonl"
        return f"logs/{run_id or 'run'}/metrics.jsonl"

    def check_output(self, run_id=None, *, run_dir=None) -> None:
        if self.path is None:
            return  # under the run directory, which the trainer checks (trainer.log_dir)
        if run_id is None:
            # the folders before `{run_id}` do not depend on the run id
            path = self.path.format(run_id="\0")
            fixed, templated, _ = path.partition("\0")
            folder = os.path.dirname(fixed) if templated else os.path.dirname(path.rstrip("/"))
        else:
            path = self.resolved_path(run_id, run_dir=run_dir)
            templated, folder = "", os.path.dirname(path.rstrip("/"))
        if not path.strip():
            raise FieldError(
                "path",
                "is empty: give the file to write the metrics to, or leave it unset (null) for "
                "<log_dir>/<run_id>/metrics.jsonl",
            )
        local = local_path(path) if not templated else None
        if local is not None and os.path.isdir(local):
            raise FieldError(
                "path",
                f"cannot write the metrics log to {path}: it is a directory. Give the file to "
                f"write, e.g. {path.rstrip('/')}/metrics.jsonl",
            )
        if folder:
            self.check_folders("path", f"cannot write the metrics log to {self.path}", folder)

    def destination(self, run_id, *, run_dir=None) -> tuple[str, str]:
        path = self.resolved_path(run_id, run_dir=run_dir)
        return (
            f"JSON lines to {local_path(path) or path}",
            "every record would be written there twice. Remove one of them, or give one "
            "another `path`",
        )

    def init(self, run_id, *, run_dir=None) -> Tracker:
        if jax.process_index() != 0:
            # Every host computes the same metrics; one file, written by process 0.
            return NoopTracker()
        path = self.resolved_path(run_id, run_dir=run_dir)
        logger.info("Logging metrics as JSON lines to %s", path)
        plot_path = sibling_path(path, "curves.png") if self.plot else None
        return JsonLogger(path, plot_path=plot_path)


def _same_local_file(fs, source: pathlib.Path, dest: str) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" not in protocols and "local" not in protocols:
        return False
    return os.path.exists(dest) and os.path.samefile(source, dest)


def sibling_path(path: str, name: str) -> str:
    """`name` in the directory of `path` (a local path or URL)."""
    head, sep, _ = path.rpartition("/")
    return f"{head}{sep}{name}"


def read_json_log(path: str) -> list[dict[str, Any]]:
    """All records of a JSON-lines log (local or fsspec; a run directory reads its
    `metrics.jsonl`). A record cut off by a run killed while writing it is skipped with a
    warning, as `viz_run` skips it; a file that is not such a log, or cannot be read, is a
    `RunLogError` naming it."""
    from lm.tracker.viz import load_records

    return load_records(path)


def logged_metric_keys(tracker: Tracker, step: int) -> set[str]:
    """The metric keys the JSON logs among `tracker` (a `CompositeTracker` is searched) hold
    at `step`; empty when it has none."""
    from lm.tracker.base import CompositeTracker

    if isinstance(tracker, CompositeTracker):
        return set().union(*(logged_metric_keys(t, step) for t in tracker.trackers))
    return tracker.metric_keys_at(step) if isinstance(tracker, JsonLogger) else set()
