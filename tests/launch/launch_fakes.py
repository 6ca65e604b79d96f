"""A recording executor with scripted answers, for driving the launcher without gcloud/docker."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from lm.launch.executor import Command


def step(command: Command) -> str:
    """Short name of a launch step: `build`, `push`, `create`, `start`, `wait`, `delete`, ..."""
    argv = command.argv
    if argv[:3] == ("gcloud", "compute", "tpus"):
        if argv[4] == "ssh":  # `start` runs the container, `wait` streams and waits for it
            return "start" if "docker run" in argv[-1] else "wait"
        return argv[4]
    if argv[:2] == ("gcloud", "auth"):
        return argv[2]
    if argv[0] == "docker":
        return argv[1]
    if argv[0] == "sudo":
        return argv[1]
    raise AssertionError(f"unexpected command {argv}")


class RecordingExecutor:
    """Records every command; answers from per-step scripts, else with the healthy result.

    `answers={"wait": [255, 0], "describe": ["PREEMPTED"]}`: the first wait exits 255, the
    second 0; the first describe prints PREEMPTED. An int is an exit status, a str is the
    stdout of a successful `capture`.
    """

    def __init__(self, answers: dict[str, Iterable[int | str]] | None = None):
        self.commands: list[Command] = []
        self.answers = {k: deque(v) for k, v in (answers or {}).items()}

    def _next(self, command: Command) -> tuple[int, str]:
        self.commands.append(command)
        queue = self.answers.get(step(command))
        if not queue:
            return 0, command.expected_output
        answer = queue.popleft()
        return (answer, "") if isinstance(answer, int) else (0, answer + "\n")

    def run(self, command: Command) -> int:
        return self._next(command)[0]

    def capture(self, command: Command) -> tuple[int, str]:
        return self._next(command)

    @property
    def argvs(self) -> list[list[str]]:
        return [list(c.argv) for c in self.commands]

    @property
    def steps(self) -> list[str]:
        return [step(c) for c in self.commands]

    def unused(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.answers.items() if v}
