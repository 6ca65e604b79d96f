"""Command line: `--config_path`, dotted overrides, `parse` and the `main` entry decorator.

    python -m lm.main.train_lm --config_path run.yaml --trainer.num_train_steps 10 \\
        --optimizer.learning_rate=3e-4 --trainer.tracker[0].project demo --model.type llama

Override values are parsed as YAML (`[1,2]`, `null`, `{type: noop}`, `p=f32,c=bf16`) and
written into the loaded document before decoding, so they are checked exactly like YAML.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import yaml

from lm.config.decoding import Decoder
from lm.config.errors import (
    ConfigError,
    ConfigProblem,
    FieldError,
    SetupConfigError,
    index_path,
    join_path,
)
from lm.config.helptext import format_help
from lm.config.loading import load_document, scalar_texts, under
from lm.config.typeinfo import show_value

T = TypeVar("T")
CONFIG_PATH_FLAG = "--config_path"
HELP_FLAGS = ("-h", "--help")
_UNPARSED = object()
_SEGMENT = re.compile(r"^([^.\[\]=\s]+)((?:\[\d+\])*)$")


def parse(cls: type[T], config_path: str | None = None, args: Sequence[str] = ()) -> T:
    """Build `cls` from an optional YAML file plus command-line style arguments.

    Args:
        cls: the config dataclass.
        config_path: YAML file (local path or fsspec URL); `--config_path` in `args` wins.
        args: `--config_path PATH` and `--dotted.field VALUE` / `--dotted.field=VALUE` items.

    Raises:
        ConfigError: with every problem in the file, the arguments and the decoded values.
    """
    problems: list[ConfigProblem] = []
    overrides: list[tuple[str, str, str]] = []  # (dotted path, raw value, flag as written)
    given = config_path
    config_path = _split_args(list(args), config_path, overrides, problems)
    data: Any = {}
    locations: dict[str, str] = {}
    texts: dict[str, str] = {}  # the numbers and booleans as written, for `str` fields
    if config_path is not None:
        via = CONFIG_PATH_FLAG if config_path != given else None
        loaded = load_document(config_path, via=via)  # ConfigError for an unreadable document
        data, locations, texts = loaded.data, dict(loaded.locations), dict(loaded.texts)
        if not data:  # an empty file (or only comments) is a mistake, not "all defaults"
            problems.append(
                ConfigProblem(
                    "",
                    f"{config_path} holds no settings (it is empty, or only comments); give "
                    f"the run's config, or leave out {CONFIG_PATH_FLAG} to start from the "
                    "defaults",
                    via,
                )
            )
    written = _Written(locations, texts, from_file=config_path is not None)
    for dotted, raw, flag in overrides:
        data = _apply_override(data, dotted, raw, flag, written, problems)
    decoder = Decoder(locations, texts, root=(cls, ""))
    value = decoder.run(cls, data, "")
    problems.extend(decoder.problems)
    if problems:
        raise ConfigError(problems, source=config_path)
    return value


def main(fn: Callable[[T], Any]) -> Callable[..., Any]:
    """Wrap an entry point taking one config: `lm.config.main(train)()` parses `sys.argv[1:]`.

    The config class is the annotation of `fn`'s first parameter. The returned callable takes
    an optional `args` list (default `sys.argv[1:]`), which is how tests drive it:
    `lm.config.main(train)(args=["--config_path", "run.yaml", "--x", "2"])`.

    `--help` prints the field tree and exits 0. Any configuration problem prints the
    aggregated message to stderr and exits with status 2 before `fn` runs (as does a
    `SetupConfigError` or `FieldError` that `fn` raises once it has started, e.g. when
    the devices are known or a local path is checked). Warnings the
    config classes raise while parsing (deprecated fields) are printed to stderr as
    `warning: ...` lines: Python hides DeprecationWarnings from library code by default, and
    logging is not configured yet.
    """
    cls = _config_class(fn)

    def run(args: Sequence[str] | None = None) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if any(a in HELP_FLAGS for a in argv):
            print(format_help(cls, prog=_prog()))
            raise SystemExit(0)
        error: ConfigError | None = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                config = parse(cls, args=argv)
            except ConfigError as e:
                error = e
        _report_warnings(caught)
        if error is not None:
            print(str(error), file=sys.stderr)
            print(f"(run with --help to list the fields of {cls.__name__})", file=sys.stderr)
            raise SystemExit(2) from None
        try:
            return fn(config)
        except KeyboardInterrupt as e:
            _interrupted(e)
        except Exception as e:
            if is_keyboard_interrupt(e):
                _interrupted(e)
            peer = _peer_failure(e)
            message = peer or _out_of_memory(e) or (str(e) if _is_user_facing(e) else None)
            if message is None or os.environ.get("LM_TRACEBACK"):
                raise
            if isinstance(e, SetupConfigError | FieldError):
                # a bad configuration found once the run started, reported as when parsing,
                # and, as then, nothing left behind: the run's new log file goes too
                from lm.tracker.logs import discard_new_log_file

                discard_new_log_file()
                print(f"error: {message}", file=sys.stderr)
                raise SystemExit(2) from None
            logged = _traceback_to_log_files(e)
            print(f"error: {message}", file=sys.stderr)
            where = "is in the run's log file; set" if logged else "is not shown: set"
            print(f"(the Python traceback {where} LM_TRACEBACK=1 to print it)", file=sys.stderr)
            if peer is not None:
                # jax's exit-time distributed shutdown waits on a barrier with the dead peer
                # (until its heartbeat times out, a minute or more, then aborts with a C++
                # stack dump): leave now, which also frees the accelerator at once
                _exit_now(1)
            raise SystemExit(1) from None

    def _interrupted(e: BaseException) -> None:
        if os.environ.get("LM_TRACEBACK"):
            raise e
        _traceback_to_log_files(e)
        print("interrupted (Ctrl-C)", file=sys.stderr)
        _exit_now(130)

    run.__name__ = getattr(fn, "__name__", "main")
    run.__doc__ = fn.__doc__
    return run


_LM_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_keyboard_interrupt(error: BaseException) -> bool:
    """Ctrl-C, also when it reached Python inside a callback from C: a SIGINT that lands while
    jax resolves a dtype surfaces as `SystemError: ... returned a result with an exception
    set`, whose cause is the KeyboardInterrupt (it exited 1 with a traceback)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _report_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Print the warnings lm's config classes raised (deprecated fields: their text starts
    with the YAML path, `optimizer.cooldown is deprecated: ...`), one line each, once each.
    Warnings from other packages go back to the `warnings` machinery unchanged."""
    seen: set[str] = set()
    for w in caught:
        if not os.path.abspath(w.filename).startswith(_LM_DIR + os.sep):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
            continue
        text = " ".join(str(w.message).split())
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)


def _is_user_facing(error: BaseException) -> bool:
    """Errors that explain themselves (bad values, missing files, a missing optional package,
    lm's own runtime errors such as an unreadable checkpoint or a NaN loss): shown as one
    message, not a traceback."""
    user_errors = (
        ValueError
        | FileNotFoundError
        | FileExistsError
        | PermissionError
        | IsADirectoryError
        | NotADirectoryError
        | ImportError
    )
    if isinstance(error, user_errors):
        return True
    return isinstance(error, RuntimeError) and type(error).__module__.startswith("lm.")


# What XLA's runtime says when a collective or the coordination service cannot reach a peer.
_PEER_FAILURE_MARKERS = ("Gloo", "gloo", "DEADLINE_EXCEEDED", "CoordinationService", "UNAVAILABLE")


def _runtime_error_text(error: BaseException) -> str | None:
    """The text of XLA's runtime error (jax's `JaxRuntimeError`: jax is imported then), else
    None."""
    return str(error).strip() if type(error).__name__ == "JaxRuntimeError" else None


def _status_line(error: BaseException, text: str) -> str:
    """The runtime error's first line, at most 300 characters (the rest is C++ detail)."""
    first_line = text.splitlines()[0] if text else type(error).__name__
    return first_line if len(first_line) <= 300 else first_line[:300] + " ..."


def _peer_failure(error: BaseException) -> str | None:
    """For a multi-process run whose collective with the other processes failed (the XLA
    runtime's error, a screenful of C++ status text), one message that says what to look at."""
    text = _runtime_error_text(error)
    if text is None:
        return None
    import jax

    count = jax.process_count()
    if count <= 1 or not any(marker in text for marker in _PEER_FAILURE_MARKERS):
        return None
    return (
        f"process {jax.process_index()} of {count} could not complete a collective operation "
        f"with the other processes: {_status_line(error, text)}\nAnother process has most "
        "likely died or stalled: look at its output and log file."
    )


def _exit_now(status: int) -> None:
    """Exit at once, skipping the interpreter's teardown.

    Ctrl-C can land while XLA compiles: jax returns the KeyboardInterrupt while XLA's
    compile threads are still running, and tearing the interpreter down under them crashes
    the process ("pure virtual method called", SIGSEGV). Everything the run wrote is
    already flushed here (the trainer's context has exited); the log files are closed first.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _out_of_memory(error: BaseException) -> str | None:
    """XLA's RESOURCE_EXHAUSTED (a buffer that does not fit the device, or the host on CPU) as
    one message that says what to change, instead of the runtime's traceback."""
    text = _runtime_error_text(error)
    if text is None or "RESOURCE_EXHAUSTED" not in text:
        return None
    return (
        f"out of memory: {_status_line(error, text)}\nMake the step smaller: a lower trainer.train_batch_size "
        "or trainer.per_device_parallelism (gradient accumulation), "
        "model.gradient_checkpointing: true, or a smaller model. "
        "`python -m lm.main.plan --config_path ...` estimates a config's memory before a run."
    )


def _traceback_to_log_files(error: BaseException) -> bool:
    """Write the traceback to the file handlers only (the console gets the short message);
    whether there was one (entry points other than train_lm / eval_lm have no log file)."""
    record = logging.getLogger("lm").makeRecord(
        "lm",
        logging.ERROR,
        __file__,
        0,
        "Run failed: %s",
        (error,),
        (type(error), error, error.__traceback__),
    )
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and h.baseFilename != os.devnull
    ]
    for handler in handlers:
        handler.handle(record)
    return bool(handlers)


def _prog() -> str:
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name}"
    return sys.argv[0] or "python"


def _config_class(fn: Callable) -> type:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise TypeError(f"{fn!r} must take the config as its first parameter")
    hints = typing.get_type_hints(fn)
    if params[0].name not in hints:
        raise TypeError(
            f"the first parameter of {getattr(fn, '__qualname__', fn)!r} needs a config "
            "class annotation"
        )
    return hints[params[0].name]


def _split_args(
    args: list[str],
    config_path: str | None,
    overrides: list[tuple[str, str, str]],
    problems: list[ConfigProblem],
) -> str | None:
    i = 0
    from_args: str | None = None  # the --config_path given in args, if any
    while i < len(args):
        arg = args[i]
        if arg in HELP_FLAGS:
            problems.append(ConfigProblem("", "--help is answered by lm.config.main"))
            i += 1
            continue
        if not arg.startswith("--") or arg == "--":
            problems.append(
                ConfigProblem(
                    "",
                    f"unexpected argument {arg!r}; arguments are `--config_path PATH` and "
                    "`--dotted.field VALUE` overrides",
                )
            )
            i += 1
            continue
        if "=" in arg:
            flag, value = arg.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
            flag, value = arg, args[i + 1]
            i += 2
        else:
            problems.append(ConfigProblem("", f"{arg} needs a value, like `{arg} VALUE`"))
            i += 1
            continue
        name = flag[2:]
        if flag in (CONFIG_PATH_FLAG, "--config-path"):
            if not value:
                problems.append(ConfigProblem("", f"{flag} needs a file, like `{flag} run.yaml`"))
            elif from_args is not None and value != from_args:
                problems.append(
                    ConfigProblem(
                        "",
                        f"{CONFIG_PATH_FLAG} is given twice ({from_args} and {value}); a run "
                        "reads one file: to combine files, `!include` one from the other or "
                        "start it with `base: <file>`",
                    )
                )
            else:
                config_path = from_args = value
        elif name in ("config", "config_file"):
            problems.append(
                ConfigProblem("", f"unknown argument {flag}; did you mean {CONFIG_PATH_FLAG}?")
            )
        else:
            overrides.append((name, value, f"{flag} {value}"))
    return config_path


@dataclasses.dataclass
class _Written:
    """What the overrides update besides the data: where each YAML path was written, the text
    of each number and boolean, and whether a config file was read."""

    locations: dict[str, str]
    texts: dict[str, str]
    from_file: bool


def _parse_value(
    raw: str, dotted: str, problems: list[ConfigProblem], flag: str
) -> tuple[Any, dict[str, str]]:
    """The YAML value `raw` and the text of each number and boolean in it (by path below
    `dotted`); `_UNPARSED` after recording why it cannot be used."""
    if raw == "":
        return "", {}
    try:
        value = yaml.safe_load(raw)
        return value, scalar_texts(raw, dotted)
    except ConfigError as e:  # an alias inside its own anchor's value
        problems.extend(ConfigProblem(p.path, p.message, flag) for p in e.problems)
        return _UNPARSED, {}
    except yaml.YAMLError as e:
        detail = getattr(e, "problem", None) or str(e)
        problems.append(
            ConfigProblem(
                dotted,
                f"cannot parse the value {raw!r} as YAML: {detail}; for a string, quote it "
                f"inside the shell's quotes: --{dotted} '{_yaml_quoted(raw)}'",
                flag,
            )
        )
        return _UNPARSED, {}


def _yaml_quoted(raw: str) -> str:
    """`raw` as a double-quoted YAML string (for the hint; shell single quotes go around it)."""
    return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _whole_list_example(steps: list[str | int], raw: str) -> str:
    """The YAML for a list written whole that puts `raw` where `steps` (from a list index on)
    lead: `[0, "every"]`, `5` -> `[{every: 5}]`."""
    if not steps:
        return raw
    step, rest = steps[0], steps[1:]
    inner = _whole_list_example(rest, raw)
    if isinstance(step, int):
        return "[" + ", ".join(["..."] * step + [inner]) + "]"
    return f"{{{step}: {inner}}}"


def _apply_override(
    data: Any,
    dotted: str,
    raw: str,
    flag: str,
    written: _Written,
    problems: list[ConfigProblem],
) -> Any:
    """Write one `--a.b[0].c VALUE` into `data` (a fresh root if needed); returns the root."""
    locations = written.locations
    steps: list[str | int] = []
    for segment in dotted.split("."):
        match = _SEGMENT.match(segment)
        if match is None:
            problems.append(
                ConfigProblem(
                    "",
                    f"malformed override --{dotted}: expected dotted field names with optional "
                    "[index], like --trainer.num_train_steps or --trainer.tracker[0].project",
                )
            )
            return data
        steps.append(match.group(1))
        steps.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    value, value_texts = _parse_value(raw, dotted, problems, flag)
    if value is _UNPARSED:
        return data
    if not isinstance(data, dict):
        data = {}
    node: Any = data
    path = ""
    for i, (step, nxt) in enumerate(zip(steps, steps[1:] + [None], strict=True)):
        child_path = index_path(path, step) if isinstance(step, int) else join_path(path, step)
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                size = f"has {len(node)} items" if isinstance(node, list) else "is not a list"
                problems.append(
                    ConfigProblem(child_path, f"cannot set --{dotted}: {path} {size}", flag)
                )
                return data
        if nxt is None:
            node[step] = value
            for table in (locations, written.texts):
                for p in [p for p in table if under(p, child_path)]:
                    del table[p]
            locations[child_path] = flag
            written.texts.update(value_texts)
            return data
        child = node[step] if isinstance(step, int) else node.get(step)
        if child is None:
            if isinstance(nxt, int):
                if isinstance(step, int) or step in node:
                    why = f"{child_path} is null in the config"
                elif written.from_file:
                    why = f"the config file does not set {child_path}"
                else:
                    why = f"no config file sets {child_path}"
                example = _whole_list_example(steps[i + 1 :], raw)
                problems.append(
                    ConfigProblem(
                        child_path,
                        f"cannot set --{dotted}: {why}, so it has no items to set one by one; "
                        f"give the whole list, like --{child_path} '{example}'",
                        flag,
                    )
                )
                return data
            child = {}
            node[step] = child
        elif isinstance(nxt, str) and not isinstance(child, dict):
            if isinstance(child, list):
                kind, hint = "a list", f"; use --{child_path}[0]..."
            else:
                kind = f"the value {show_value(child)}"
                hint = f"; set it whole, like --{child_path} '{{{nxt}: ...}}'"
            problems.append(
                ConfigProblem(
                    child_path,
                    f"cannot set --{dotted}: {child_path} is {kind} in the config, not a mapping{hint}",
                    flag,
                )
            )
            return data
        node, path = child, child_path
    return data
