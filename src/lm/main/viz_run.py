"""Plot a run's training curves: `python -m lm.main.viz_run <run_dir or metrics.jsonl>`.

Draws loss (train and eval), learning rate and throughput over steps from the JSON-lines
metrics log of the `json` tracker. Exit codes: 0 written, 2 unreadable/missing log or
nothing to plot.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lm.fs import local_path, not_a_directory
from lm.tracker.json_logger import sibling_path
from lm.tracker.viz import METRICS_FILENAME, RunLogError, plot_run, resolve_log_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lm.main.viz_run",
        description="Plot loss, learning rate and throughput of a run from its JSON metrics log.",
    )
    p.add_argument(
        "path",
        help=f"run directory containing {METRICS_FILENAME}, or the JSON-lines log itself "
        "(local path or fsspec URL)",
    )
    p.add_argument(
        "--output",
        "-o",
        default=None,
        help="image to write (png/pdf/svg by extension); default: curves.png beside the log",
    )
    p.add_argument("--title", default=None, help="figure title (default: the log's path)")
    return p


def check_output(output: str) -> None:
    """Raise `RunLogError` naming `--output` if matplotlib cannot write an image there."""
    from matplotlib.figure import Figure

    path = local_path(output)
    if path is not None and os.path.isdir(path):
        raise RunLogError(f"--output {output} is a directory; give an image file's path")
    kinds = sorted(Figure().canvas.get_supported_filetypes())
    ext = os.path.splitext(output)[1].lstrip(".").lower()
    if ext not in kinds:
        raise RunLogError(
            f"--output {output}: {'.' + ext if ext else 'no extension'} is not an image type "
            f"matplotlib writes; end the name with one of {', '.join('.' + k for k in kinds)}"
        )
    why = not_a_directory(os.path.dirname(output) or ".")
    if why is not None:
        raise RunLogError(f"--output {output}: {why}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        log_path = resolve_log_path(args.path)
        output = args.output
        if output is None:
            output = sibling_path(log_path, "curves.png")
        else:
            check_output(output)
        panels = plot_run(log_path, output, title=args.title)
    except RunLogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = [p for p in ("loss", "learning rate", "throughput") if p not in panels]
    print(f"wrote {os.fspath(output)} ({', '.join(panels)})")
    if skipped:
        print(f"skipped (no data): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
