"""Python's cyclic garbage collector paused while `python -m lm.main.train_lm` starts up.

Start-up (imports, configuration, model init, tracing and compiling the train step) creates
a few hundred thousand long-lived objects (modules, jaxprs, lowering caches) and almost no
cyclic garbage, yet the collector runs about 500 times over it, the full collections walking
every object each time: 0.15-0.2 s of a 7 s start on `bench/configs/gpt2_512.yaml`.

`pause()` turns automatic collection off; `end_pause()`, called once the first train step has
run, moves every object alive at that point into the permanent generation (`gc.freeze()`, so
later collections skip them) and turns collection back on. Unreachable cycles left by
start-up are frozen with the rest: on config 2 that was 3,756 objects, and collecting them
instead did not change the process's resident memory.

Only the `train_lm` command pauses (`lm.main` calls `pause_for_command`); library users of
`Trainer` keep Python's defaults, and `end_pause` does nothing unless a pause is active.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

PAUSED_COMMANDS = ("lm.main.train_lm",)

_paused = False


def command_module(argv: Sequence[str]) -> str | None:
    """The module a `python [options] -m <module> ...` command line runs (`sys.orig_argv`)."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith("-m"):
            return arg[2:]
        if arg.startswith("-c") or not arg.startswith("-"):
            return None  # a -c program or a script: no module
        i += 2 if arg in ("-X", "-W") else 1  # the interpreter options that take a value
    return None


def pause() -> bool:
    """Turn automatic collection off until `end_pause()`. Returns whether it paused (not if
    collection was already off: whoever turned it off owns it)."""
    global _paused
    if _paused or not gc.isenabled():
        return False
    gc.disable()
    _paused = True
    return True


def pause_for_command(argv: Sequence[str]) -> bool:
    """`pause()` if this process runs one of `PAUSED_COMMANDS`."""
    return command_module(argv) in PAUSED_COMMANDS and pause()


def end_pause() -> bool:
    """Freeze what start-up left and resume collection, if `pause()` is in effect."""
    global _paused
    if not _paused:
        return False
    _paused = False
    gc.freeze()
    gc.enable()
    return True


def paused() -> bool:
    return _paused
