"""Noticing preemption: a SIGTERM handler the training loop polls.

Cloud schedulers (GCE/TPU preemption, Kubernetes, Slurm) send SIGTERM and wait a grace
period before SIGKILL. The handler only sets a flag; the trainer checks `.requested`
after each step, saves a checkpoint of the current step (`Checkpointer.on_step(info,
force=True, temporary=True)`), waits for it to commit and exits. A second signal while
that happens gets the previous handler (by default: terminate now).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import jax
import numpy as np

logger = logging.getLogger(__name__)


class PreemptionSignal:
    """Turns termination signals into a flag: `with PreemptionSignal() as preempt: ...`.

    Handlers are installed on `__enter__` (or `install()`) and the previous ones restored
    on `__exit__`. Must be installed from the main thread (a Python rule for signals).

    Args:
        signals: the signals to catch; SIGTERM by default.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = tuple(signals)
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}
        self._received: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a signal arrived on this process."""
        return self._event.is_set()

    @property
    def signal_received(self) -> int | None:
        """The first signal received, or None."""
        return self._received

    def requested_on_any_process(self) -> bool:
        """Whether any process got a signal (a collective: every process must call it)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(self.requested, dtype=np.int32))
        return bool(np.any(flags))

    def request(self) -> None:
        """Set the flag by hand (tests, or a scheduler's own preemption notice)."""
        self._event.set()

    def reset(self) -> None:
        self._event.clear()
        self._received = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set():
            logger.warning("Second %s: no more waiting", signal.Signals(signum).name)
            previous = self._previous.get(signum, signal.SIG_DFL)
            self.uninstall()
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
            return
        self._received = signum
        self._event.set()
        logger.warning(
            "Got %s: will checkpoint after the current step and exit",
            signal.Signals(signum).name,
        )

    def install(self) -> PreemptionSignal:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionSignal must be installed from the main thread")
        for s in self.signals:
            if s not in self._previous:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> PreemptionSignal:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
