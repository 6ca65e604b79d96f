"""PreemptionSignal: SIGTERM sets a flag; a second one goes to the previous handler."""

import os
import signal
import time

import pytest

from lm.checkpoint import PreemptionSignal


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_sigterm_sets_the_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionSignal() as preempt:
        assert not preempt.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(lambda: preempt.requested)
        assert preempt.signal_received == signal.SIGTERM
        assert preempt.requested_on_any_process()
        preempt.reset()
        assert not preempt.requested
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_signal_goes_to_previous_handler():
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        with PreemptionSignal(signals=(signal.SIGUSR1,)) as preempt:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert _wait_for(lambda: preempt.requested)
            assert calls == []
            os.kill(os.getpid(), signal.SIGUSR1)
            assert _wait_for(lambda: calls == [signal.SIGUSR1])
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_request_by_hand():
    preempt = PreemptionSignal()
    preempt.request()
    assert preempt.requested


def test_install_needs_main_thread():
    import threading

    errors = []

    def target():
        try:
            PreemptionSignal().install()
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=target)
    t.start()
    t.join()
    assert errors and "main thread" in errors[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_default_signal_set(sig):
    assert PreemptionSignal().signals == (sig,)
