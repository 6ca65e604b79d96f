"""Commands as argv lists, and the executors that run them, print them, or (in tests) record them.

Every external step of a launch is a `Command`: the real argv plus a copy with secret values
masked, which is the only form ever printed or logged. An executor has two verbs: `run`
(stream the output, return the exit status) and `capture` (return status and stdout, for state
queries). `SubprocessExecutor` runs them; `PrintingExecutor` is `--dry-run`: it prints each
command with `shlex.join` and answers state queries with the healthy state the command was
built to expect, so a dry run walks the whole happy path without touching anything.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Protocol, TextIO

logger = logging.getLogger(__name__)

MASK = "<redacted>"


@dataclasses.dataclass(frozen=True)
class Command:
    """One subprocess invocation.

    Attributes:
        argv: what is executed.
        shown: `argv` with secret values replaced by `MASK`; what is printed and logged.
        expected_output: for state queries, the stdout of a healthy system (`READY`,
            `ACTIVE`); a dry run answers with it.
    """

    argv: tuple[str, ...]
    shown: tuple[str, ...]
    expected_output: str = ""

    def __post_init__(self):
        assert len(self.argv) == len(self.shown), (self.argv, self.shown)

    @staticmethod
    def plain(*argv: str, expected_output: str = "") -> Command:
        """A command with nothing to mask."""
        return Command(tuple(argv), tuple(argv), expected_output)

    def __str__(self) -> str:
        return shlex.join(self.shown)


class Executor(Protocol):
    """Runs `Command`s; swapped for a printer by `--dry-run` and for a recorder in tests."""

    def run(self, command: Command) -> int:
        """Run `command` with its output streamed to ours; return its exit status."""
        ...

    def capture(self, command: Command) -> tuple[int, str]:
        """Run `command` and return (exit status, stdout)."""
        ...


class SubprocessExecutor:
    """Runs commands for real; logs each (masked) before running it."""

    def run(self, command: Command) -> int:
        logger.info("$ %s", command)
        return subprocess.run(list(command.argv), check=False).returncode

    def capture(self, command: Command) -> tuple[int, str]:
        logger.debug("$ %s", command)
        done = subprocess.run(list(command.argv), check=False, capture_output=True, text=True)
        if done.returncode != 0:
            logger.debug("exit %d: %s", done.returncode, done.stderr.strip())
        return done.returncode, done.stdout


class PrintingExecutor:
    """`--dry-run`: prints each command on its own line and runs nothing.

    `run` reports success and `capture` answers with `command.expected_output`, so the caller
    follows the path of a launch where everything works.
    """

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def _print(self, command: Command) -> None:
        print(str(command), file=self.stream if self.stream is not None else sys.stdout)

    def run(self, command: Command) -> int:
        self._print(command)
        return 0

    def capture(self, command: Command) -> tuple[int, str]:
        self._print(command)
        return 0, command.expected_output


def require_programs(
    programs: Sequence[str], which: Callable[[str], str | None] = shutil.which
) -> None:
    """Raise `LaunchError` naming every program in `programs` that is not on PATH."""
    hints = {
        "gcloud": "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) "
        "and run `gcloud auth login`",
        "docker": "install Docker (https://docs.docker.com/engine/install/)",
    }
    missing = [p for p in programs if which(p) is None]
    if missing:
        lines = [
            f"`{p}` is not installed or not on PATH: {hints.get(p, 'install it')}" for p in missing
        ]
        raise LaunchError(
            "cannot launch:\n  " + "\n  ".join(lines) + "\n(--dry-run prints the commands "
            "without running them)"
        )


class LaunchError(RuntimeError):
    """A launch step failed in a way that retrying cannot fix."""
