"""Config problems, the aggregated `ConfigError`, and the helpers `__post_init__` raises with
(`invalid`; `field_problem` and `raise_problems` to report several fields at once)."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any


@dataclasses.dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration.

    `path` is the YAML path of the offending value (`optimizer.cycles`,
    `trainer.tracker[1].type`; empty for the document itself). `location` is where the value
    was written, `file:line` or `--a.b` for a command-line override, when known.
    """

    path: str
    message: str
    location: str | None = None

    def __str__(self) -> str:
        where = self.path or "(top level)"
        if self.location:
            where = f"{where} [{self.location}]"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in one configuration, reported together.

    Attributes:
        problems: the problems, in the order they were found.
        source: the config file (path or URL) being parsed, if any.
    """

    def __init__(self, problems: Iterable[ConfigProblem], source: str | None = None):
        self.problems: list[ConfigProblem] = list(problems)
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        n = len(self.problems)
        noun = "problem" if n == 1 else "problems"
        origin = f" in {self.source}" if self.source else ""
        lines = [f"Invalid configuration{origin} ({n} {noun}):"]
        for problem in _display_order(self.problems):
            text = str(problem).replace("\n", "\n    ")
            lines.append(f"  - {text}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._format()

    def with_source(self, source: str | None) -> ConfigError:
        """The same problems, attributed to `source`."""
        return ConfigError(self.problems, source=source)


_FILE_LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+)$")


def _display_order(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """The problems grouped by top-level section, in the order the sections were found (the
    order the file writes them, as the decoder follows it; an override that could not be
    applied comes before), and within a section in the order of the file (line by line, each
    included file after the one found first), then the command line's."""
    sections: dict[str, int] = {}
    files: dict[str, int] = {}

    def key(item: tuple[int, ConfigProblem]) -> tuple:
        index, problem = item
        section = sections.setdefault(first_key(problem.path), len(sections))
        match = _FILE_LINE.match(problem.location or "")
        if match is None:
            return (section, 1, 0, index)
        return (section, 0, files.setdefault(match["file"], len(files)), int(match["line"]))

    return [p for _, p in sorted(enumerate(problems), key=key)]


class FieldError(ValueError):
    """A `__post_init__` failure that belongs to one field.

    The decoder reports it at `<dataclass path>.<field>` instead of at the dataclass, so the
    user sees `optimizer.warmup: ...` rather than `optimizer: ...`. `field` may itself be a
    dotted or indexed path below the dataclass (`schedule[1].start`), or empty for a problem
    of the dataclass as a whole (reported at its own path).
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class SetupConfigError(ValueError):
    """A config value that turns out wrong only once the run is set up: batch sizes against
    the device count, say. Its message starts with the YAML path (`trainer.train_batch_size
    (12) must be divisible by ...`); the command-line entry points report it as
    `error: <message>` and exit with status 2, as for any other bad configuration."""


def invalid(field: str, value: object, allowed: str) -> FieldError:
    """Build the error for a field whose value is not allowed; `raise` the result.

    `allowed` completes the sentence "expected ...":

        raise invalid("warmup", self.warmup, "a step count >= 0 or a fraction in [0, 1]")

    gives `warmup: got -3, expected a step count >= 0 or a fraction in [0, 1]`, reported by the
    decoder at `optimizer.warmup`. The value is shown as YAML spells it (`true`, `null`).
    """
    from lm.config.typeinfo import show_value

    return FieldError(field, f"got {show_value(value, limit=200)}, expected {allowed}")


def is_int(value: object) -> bool:
    """An int that is not a bool: YAML's `true` is no count (Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: object, *, minimum: int = 1) -> bool:
    """An int (not a bool) of at least `minimum`: a size, step or count."""
    return is_int(value) and value >= minimum


def closest_name(value: object, options: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The option a misspelt `value` most likely meant, or None.

    In order: the same name in another case (`Adam` -> `adam`); an option that has `value` as
    one of its `_`/`-`/`.` separated parts (`flash` -> `jax_flash`, which plain string
    similarity ranks below `splash`); else the closest by `difflib` above `cutoff`."""
    if not isinstance(value, str) or not value:
        return None
    options = list(dict.fromkeys(options))
    folded = value.casefold()
    for option in options:
        if option.casefold() == folded:
            return option
    for option in options:
        if folded in re.split(r"[_.\-]", option.casefold()):
            return option
    close = difflib.get_close_matches(value, options, n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(value: object, options: Iterable[str], *, cutoff: float = 0.6) -> str:
    """`; did you mean 'x'?` for the option `closest_name` finds for `value`, else "": the
    end of an error message, which every did-you-mean hint of lm's messages is."""
    close = closest_name(value, options, cutoff=cutoff)
    return f"; did you mean {close!r}?" if close else ""


def first_key(path: str) -> str:
    """The first key of a YAML path: `trainer.tracker[1].type` -> `trainer`."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def join_path(path: str, key: object) -> str:
    """`path` extended by a mapping key: `a.b` + `c` -> `a.b.c`."""
    key = str(key)
    if not key or any(ch in key for ch in ".[] \t"):
        key = repr(key)
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def index_path(path: str, index: int) -> str:
    """`path` extended by a list index: `a.b` + 1 -> `a.b[1]`."""
    return f"{path}[{index}]"


class ConfigProblems(ConfigError, ValueError):
    """Several invalid fields of one config, raised together from `__post_init__`.

    The decoder reports each at its own path (`optimizer.warmup`, `optimizer.beta1`); code
    that builds a config directly can catch it as the `ValueError` a single problem is.
    """


def raise_problems(problems: list[FieldError]) -> None:
    """Raise the problems one `__post_init__` found: the `FieldError` itself when there is
    one, `ConfigProblems` with all of them when there are several."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigProblems([ConfigProblem(p.field, p.message) for p in problems])


def field_problem(check: Callable[[], Any]) -> list[FieldError]:
    """`[the FieldError check() raises]`, or `[]` when it passes."""
    try:
        check()
    except FieldError as e:
        return [e]
    return []
