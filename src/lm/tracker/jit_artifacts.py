"""Jaxpr and XLA HLO of jitted functions as run artifacts (`log_jaxprs`, `log_xla_hlo`).

The trainer calls these once it has traced/compiled its step (TRK-07):

* `log_jaxpr("train_step", traced.jaxpr)` -> artifact `train_step.jaxpr.txt.gz`
* `log_xla_hlo("train_step", compiled)` -> artifact `train_step.hlo.txt`

Each is logged once per function name and tracker; later calls (a recompile after a
restart inside the same process, another step with the same name) return False.
"""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
import weakref
from typing import Any

from jax.stages import Compiled, Lowered, Traced

from lm.tracker.base import Tracker, current_tracker

logger = logging.getLogger(__name__)

# tracker -> artifact file names already logged to it
_logged: weakref.WeakKeyDictionary[Tracker, set[str]] = weakref.WeakKeyDictionary()


def _log_once(tracker: Tracker | None, filename: str, data: bytes, artifact_type: str) -> bool:
    tracker = tracker if tracker is not None else current_tracker()
    done = _logged.setdefault(tracker, set())
    if filename in done:
        return False
    with tempfile.TemporaryDirectory(prefix="lm-jit-artifact-") as scratch:
        path = os.path.join(scratch, filename)
        with open(path, "wb") as f:
            f.write(data)
        tracker.log_artifact(path, name=filename, type=artifact_type)
    done.add(filename)
    logger.debug("Logged %s (%d bytes) as a %s artifact", filename, len(data), artifact_type)
    return True


def jaxpr_text(jaxpr: Any) -> str:
    """Text of a `ClosedJaxpr`/`Jaxpr`, a `jax.stages.Traced` (its `.jaxpr`), or a string."""
    if isinstance(jaxpr, Traced):
        jaxpr = jaxpr.jaxpr
    return jaxpr if isinstance(jaxpr, str) else str(jaxpr)


def hlo_text(hlo: Any) -> str:
    """HLO text of a `jax.stages.Compiled` (optimized), a `Lowered` (before XLA's passes)
    or a string."""
    if isinstance(hlo, str):
        return hlo
    if isinstance(hlo, Lowered):
        return hlo.as_text(dialect="hlo")
    if isinstance(hlo, Compiled):
        text = hlo.as_text()
        if text is None:
            raise ValueError("this backend cannot print the compiled HLO")
        return text
    raise TypeError(
        f"log_xla_hlo expects a jax Compiled or Lowered stage or HLO text, got {type(hlo).__name__}"
    )


def log_jaxpr(name: str, jaxpr: Any, *, tracker: Tracker | None = None) -> bool:
    """Log `<name>.jaxpr.txt.gz` once; True if it was logged now.

    Args:
        name: function name, e.g. "train_step".
        jaxpr: a `ClosedJaxpr`, `jax.jit(f).trace(...)` result, or text.
        tracker: where to log; default the current tracker.
    """
    data = gzip.compress(jaxpr_text(jaxpr).encode(), mtime=0)
    return _log_once(tracker, f"{name}.jaxpr.txt.gz", data, "jaxpr")


def log_xla_hlo(name: str, hlo: Any, *, tracker: Tracker | None = None) -> bool:
    """Log `<name>.hlo.txt` once; True if it was logged now.

    Args:
        name: function name, e.g. "train_step".
        hlo: `jax.jit(f).lower(...).compile()` (optimized HLO), a `Lowered`, or text.
        tracker: where to log; default the current tracker.
    """
    return _log_once(tracker, f"{name}.hlo.txt", hlo_text(hlo).encode(), "xla_hlo")
