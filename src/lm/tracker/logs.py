"""Python logging for a run: stderr plus `<log_dir>/<run_id>.log`, secrets scrubbed.

`configure_logging` is called once by `TrainerConfig.initialize()` (and by entry points);
calling it again replaces the handlers it installed before instead of adding more.
Everything it writes goes through `scrub_text`, so an API key in a message, an argument or
a traceback never reaches the terminal or the log file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys
from typing import TextIO

from lm.config.errors import is_int
from lm.tracker.scrub import scrub_text

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Marks the handlers configure_logging installed, so a second call can replace them.
_OWNED = "_lm_configure_logging"


class ScrubbingFormatter(logging.Formatter):
    """A `logging.Formatter` whose output (message, arguments, traceback) is scrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub_text(super().format(record))


class _ConsoleHandler(logging.StreamHandler):
    """Writes above any live tqdm progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            with tqdm.external_write_mode(file=self.stream):
                super().emit(record)
        except Exception:
            self.handleError(record)


def _parse_level(level: str | int) -> int:
    if is_int(level):
        return level
    names = [n for n in logging.getLevelNamesMapping() if n not in ("NOTSET", "WARN", "FATAL")]
    value = logging.getLevelNamesMapping().get(str(level).upper())
    if value is None:
        raise ValueError(f"log level must be one of {', '.join(names)}, got {level!r}")
    return value


def configure_logging(
    log_file: str | os.PathLike | None,
    *,
    level: str | int = "INFO",
    stream: TextIO | None = None,
    fmt: str = DEFAULT_FORMAT,
    process_index: int | None = None,
) -> None:
    """Send `logging` records at `level` and above to `stream` (stderr) and `log_file`.

    Args:
        log_file: local file to append to (parents are created), e.g.
            `<log_dir>/<run_id>.log`; None for the console only.
        level: level name ("DEBUG", "INFO", ...) or number, applied to the root logger.
        stream: console stream; default `sys.stderr` at the time of the call.
        fmt: `logging.Formatter` format string.
        process_index: set in a multi-process run: every line then carries `process <i>`
            after its time (first, when `fmt` has no `%(asctime)s `), so the processes'
            lines in a shared log file (and in collected console output) can be told apart.
    """
    numeric_level = _parse_level(level)
    if process_index is not None:
        tag = f"process {process_index} "
        if "%(asctime)s " in fmt:  # after the time, where a reader looks first
            fmt = fmt.replace("%(asctime)s ", f"%(asctime)s {tag}", 1)
        else:
            fmt = tag + fmt
    if log_file is not None and "://" in str(log_file) and not str(log_file).startswith("file://"):
        raise ValueError(
            f"log file {str(log_file)!r} must be a local path (the Python log is appended "
            "line by line); set trainer.log_dir to a local directory."
        )
    reset_logging()
    root = logging.getLogger()
    formatter = ScrubbingFormatter(fmt)
    console = _ConsoleHandler(stream if stream is not None else sys.stderr)
    handlers: list[logging.Handler] = [console]
    global _new_log
    _new_log = None
    if log_file is not None:
        from lm.fs import missing_folders

        path = pathlib.Path(str(log_file).removeprefix("file://"))
        made = missing_folders(str(path.parent.absolute()))
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _new_log = (path, made)
        handlers.append(logging.FileHandler(path, mode="a", encoding="utf-8"))
    for handler in handlers:
        setattr(handler, _OWNED, True)
        handler.setFormatter(formatter)
        handler.setLevel(numeric_level)
        root.addHandler(handler)
    root.setLevel(numeric_level)
    logging.captureWarnings(True)


_new_log: tuple[pathlib.Path, list[str]] | None = None
"""The log file the last `configure_logging` created (it did not exist) and the folders it
made for it, deepest first."""


def discard_new_log_file() -> None:
    """Close and remove the log file `configure_logging` created, and the (then empty)
    folders it made for it: a run refused for its configuration after logging started leaves
    nothing behind, as one refused while parsing does. A log that existed before (a resumed
    run's) stays."""
    global _new_log
    if _new_log is None:
        return
    path, made = _new_log
    _new_log = None
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and getattr(handler, _OWNED, False):
            root.removeHandler(handler)
            handler.close()
    with contextlib.suppress(OSError):
        path.unlink()
    from lm.fs import remove_folders

    remove_folders(made)


def reset_logging() -> None:
    """Remove (and close) the handlers `configure_logging` installed; others stay."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OWNED, False):
            root.removeHandler(handler)
            handler.close()
