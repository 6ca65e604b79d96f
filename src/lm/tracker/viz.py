"""Training curves from a JSON-lines metrics log: loss, learning rate, throughput.

`plot_run` reads the records the `json` tracker writes (or a run directory holding
`metrics.jsonl`) and draws one panel per available series:

* loss: `train/loss` and every eval loss (`eval/loss`, `eval/<set>/loss`);
* learning rate: `optim/learning_rate`;
* throughput: `throughput/tokens_per_second` (`throughput/examples_per_second` for a run that
  logs no tokens/s).

A missing series skips its panel with a log message; a missing or unreadable file is a
`RunLogError` naming the path. `python -m lm.main.viz_run` is the command-line front end.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
TRAIN_LOSS = "train/loss"
LEARNING_RATE = "optim/learning_rate"
TOKENS_PER_SECOND = "throughput/tokens_per_second"
EXAMPLES_PER_SECOND = "throughput/examples_per_second"
_EVAL_LOSS = re.compile(r"^eval/(?:(?P<name>.+)/)?loss$")


class RunLogError(ValueError):
    """The metrics log is missing, unreadable or holds nothing to plot."""


def resolve_log_path(path: str | os.PathLike) -> str:
    """`path` itself for a file, `<path>/metrics.jsonl` for a run directory."""
    path = os.fspath(path)
    fs, fs_path = fsspec.core.url_to_fs(path)
    if fs.isdir(fs_path):
        candidate = path.rstrip("/") + "/" + METRICS_FILENAME
        if not fs.exists(fsspec.core.url_to_fs(candidate)[1]):
            raise RunLogError(
                f"{path} is a directory without {METRICS_FILENAME}; pass a run directory "
                "written by the json tracker or the JSON-lines file itself."
            )
        return candidate
    if not fs.exists(fs_path):
        raise RunLogError(f"metrics log {path} does not exist")
    return path


def load_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON records of a metrics log (file or run directory), with clear errors."""
    log_path = resolve_log_path(path)
    records = []
    try:
        with fsspec.open(log_path, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    if not line.lstrip().startswith("{"):
                        raise RunLogError(
                            f"{log_path}:{lineno} is not a JSON line ({e.msg}); is this a "
                            "metrics log written by the json tracker?"
                        ) from e
                    # a record cut off by a run killed while writing it
                    logger.warning("%s:%d: skipping a cut-off record (%s)", log_path, lineno, e.msg)
    except (OSError, UnicodeDecodeError) as e:
        raise RunLogError(f"cannot read metrics log {log_path}: {e}") from e
    return records


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def extract_series(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    """`{metric: {step: value}}` for every numeric metric of the `log` records.

    A step logged twice (e.g. replayed after a restart) keeps its last value.
    """
    series: dict[str, dict[int, float]] = {}
    for record in records:
        if record.get("event") != "log" or record.get("step") is None:
            continue
        metrics = record.get("metrics") or {}
        for key, value in metrics.items():
            x = _as_float(value)
            if x is not None:
                series.setdefault(key, {})[int(record["step"])] = x
    return series


def _sorted(points: Mapping[int, float]) -> tuple[list[int], list[float]]:
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def make_figure(
    records: Sequence[Mapping[str, Any]],
    *,
    title: str = "run",
    source: str = "run",
    missing_level: int = logging.WARNING,
):
    """A matplotlib `Figure` of the run's curves and the names of the panels drawn; a panel
    whose metrics are missing is skipped with a log line at `missing_level`.

    Raises:
        RunLogError: none of the plotted metrics is in `records`.
    """
    series = extract_series(records)
    panels: list[tuple[str, str, list[tuple[str, dict[int, float]]]]] = []
    losses = []
    if TRAIN_LOSS in series:
        losses.append(("train", series[TRAIN_LOSS]))
    for key in sorted(series):
        m = _EVAL_LOSS.match(key)
        if m:
            losses.append((f"eval {m.group('name')}" if m.group("name") else "eval", series[key]))
    if losses:
        panels.append(("loss", "loss", losses))
    else:
        logger.log(
            missing_level,
            "%s: no %s or eval/.../loss metrics; skipping the loss panel",
            source,
            TRAIN_LOSS,
        )
    if LEARNING_RATE in series:
        panels.append(("learning rate", "learning rate", [("lr", series[LEARNING_RATE])]))
    else:
        logger.log(
            missing_level,
            "%s: no %s metric; skipping the learning-rate panel",
            source,
            LEARNING_RATE,
        )
    if TOKENS_PER_SECOND in series:
        panels.append(("throughput", "tokens / s", [("tokens/s", series[TOKENS_PER_SECOND])]))
    elif EXAMPLES_PER_SECOND in series:  # a Trainer run without set_throughput_model
        panels.append(("throughput", "examples / s", [("examples/s", series[EXAMPLES_PER_SECOND])]))
    else:
        logger.log(
            missing_level,
            "%s: no %s or %s metric; skipping the throughput panel",
            source,
            TOKENS_PER_SECOND,
            EXAMPLES_PER_SECOND,
        )
    if not panels:
        raise RunLogError(
            f"{source} has no plottable metrics: expected {TRAIN_LOSS}, eval/<set>/loss, "
            f"{LEARNING_RATE} or {TOKENS_PER_SECOND} in its log records"
        )

    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 2.6 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (_, ylabel, lines) in zip(axes, panels, strict=True):
        for label, points in lines:
            steps, values = _sorted(points)
            marker = "o" if len(steps) < 30 else None
            ax.plot(steps, values, label=label, marker=marker, markersize=3)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(lines) > 1:
            ax.legend(loc="best")
    axes[-1].set_xlabel("step")
    fig.suptitle(title)
    return fig, [name for name, _, _ in panels]


def plot_run(
    records_or_path: Sequence[Mapping[str, Any]] | str | os.PathLike,
    output: str | os.PathLike,
    *,
    title: str | None = None,
    missing_level: int = logging.WARNING,
) -> list[str]:
    """Draw the run's curves into the image `output` (local path or fsspec URL).

    Args:
        records_or_path: JSON-log records, a `metrics.jsonl` path, or a run directory.
        output: image path; the format follows the extension (png, pdf, svg).
        title: figure title; default the log's path.
        missing_level: the log level of "skipping the ... panel" lines (the `json` tracker,
            which plots every run it logs, passes INFO: an eval-only run has no throughput).

    Returns:
        The panels drawn, a subset of `["loss", "learning rate", "throughput"]`.

    Raises:
        RunLogError: the log cannot be read or has none of the plotted metrics.
    """
    if isinstance(records_or_path, str | os.PathLike):
        source = os.fspath(records_or_path)
        records = load_records(source)
    else:
        source = "run"
        records = list(records_or_path)
    fig, panels = make_figure(
        records, title=title or source, source=source, missing_level=missing_level
    )

    output = os.fspath(output)
    fmt = os.path.splitext(output)[1].lstrip(".").lower() or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    fs, fs_path = fsspec.core.url_to_fs(output)
    parent = fs._parent(fs_path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(fs_path, "wb") as f:
        f.write(buf.getvalue())
    return panels
