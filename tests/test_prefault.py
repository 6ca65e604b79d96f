import sys
import time

import pytest

from lm import prefault

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, mmap")

MiB = 1 << 20


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def pool():
    made = []

    def make(limit, initial):
        p = prefault.Prefaulter(limit, initial=initial, chunk=2 * MiB)
        made.append(p)
        return p

    yield make
    for p in made:
        if not p.closed:
            p.release()


@pytest.mark.parametrize("value", ["", "auto", "1", "ON", " yes "])
def test_on_values(value):
    assert prefault.requested({prefault.ENV_VAR: value})


@pytest.mark.parametrize("value", ["0", "off", "False", "no"])
def test_off_values(value):
    assert not prefault.requested({prefault.ENV_VAR: value})


def test_unset_is_on():
    assert prefault.requested({})


def test_a_bad_value_names_the_variable_and_the_settings():
    with pytest.raises(SystemExit) as e:
        prefault.requested({prefault.ENV_VAR: "lots"})
    assert str(e.value) == (
        "LM_HOST_PREFAULT='lots' is not a setting: use auto (the default) or 1 to fault in the "
        "first train step's memory ahead of it, 0/off to leave it to the step"
    )


@linux_only
def test_the_pool_writes_its_pages_and_gives_them_back(pool):
    before = _rss()
    p = pool(256 * MiB, initial=64 * MiB)
    _wait_until(lambda: p.held_bytes == 64 * MiB)  # the initial size, then it waits
    time.sleep(0.05)
    assert p.held_bytes == 64 * MiB
    assert p.plan(160 * MiB) == 160 * MiB
    _wait_until(lambda: p.held_bytes == 160 * MiB)
    # the pages are resident: written, not only reserved
    assert _rss() - before >= 0.9 * 160 * MiB
    resident = _rss()
    assert p.release(40 * MiB) == 40 * MiB  # the state's share
    assert p.held_bytes == 120 * MiB
    assert resident - _rss() >= 0.9 * 40 * MiB
    resident = _rss()
    assert p.release() == 120 * MiB  # the rest, closing the pool
    assert p.closed and p.held_bytes == 0
    assert resident - _rss() >= 0.9 * 120 * MiB
    assert p.release() == 0 and p.plan(64 * MiB) == 0  # closed: nothing more


@linux_only
def test_a_smaller_plan_gives_back_what_was_written_beyond_it(pool):
    p = pool(128 * MiB, initial=96 * MiB)
    _wait_until(lambda: p.held_bytes == 96 * MiB)
    resident = _rss()
    assert p.plan(32 * MiB) == 32 * MiB
    assert p.held_bytes == 32 * MiB
    assert resident - _rss() >= 0.9 * 64 * MiB
    # and a larger plan writes the trimmed pages again (the mapping is still there)
    assert p.plan(80 * MiB) == 80 * MiB
    _wait_until(lambda: p.held_bytes == 80 * MiB)


@linux_only
def test_plans_are_capped_at_the_limit_and_count_what_was_released(pool):
    p = pool(64 * MiB, initial=32 * MiB)
    _wait_until(lambda: p.held_bytes == 32 * MiB)
    assert p.release(16 * MiB) == 16 * MiB
    assert p.plan(1 << 40) == 64 * MiB  # capped
    _wait_until(lambda: p.held_bytes == 48 * MiB)  # 64 written in all, 16 released
    assert p.plan(0) == 16 * MiB  # never below what was released
    assert p.held_bytes == 0


@linux_only
def test_a_chunk_written_while_the_pool_was_trimmed_below_it_is_not_counted():
    """plan(0) then plan(all) while the thread writes its second chunk: that chunk is dropped
    and the pool writes from its new end again, so what it counts is what is resident."""
    before = _rss()
    p = prefault.Prefaulter(384 * MiB, initial=384 * MiB, chunk=128 * MiB)
    try:
        _wait_until(lambda: p.held_bytes > 0)  # the first chunk is in, the second under way
        p.plan(0)
        p.plan(384 * MiB)
        _wait_until(lambda: p.held_bytes == 384 * MiB)
        assert _rss() - before >= 0.9 * 384 * MiB
    finally:
        p.release()


@linux_only
def test_release_while_the_thread_writes_waits_for_its_chunk(pool):
    p = pool(512 * MiB, initial=512 * MiB)
    _wait_until(lambda: p.held_bytes > 0)
    freed = p.release()  # mid-way: the thread stops after its chunk, then all is unmapped
    assert 0 < freed <= 512 * MiB and p.closed


def test_the_module_functions_do_nothing_without_a_pool(monkeypatch):
    monkeypatch.setattr(prefault, "_pool", None)
    assert not prefault.active()
    assert prefault.plan(1 << 30) == 0
    assert prefault.release() == 0 and prefault.release(1 << 20) == 0
    assert prefault.held_bytes() == 0


def test_start_follows_the_variable(monkeypatch):
    monkeypatch.setattr(prefault, "_pool", None)
    assert not prefault.start({prefault.ENV_VAR: "0"})
    assert prefault._pool is None


@linux_only
def test_start_makes_one_pool_and_release_closes_it(monkeypatch):
    monkeypatch.setattr(prefault, "_pool", None)
    monkeypatch.setattr(prefault, "INITIAL_BYTES", 8 * MiB)
    try:
        assert prefault.start({}) and prefault.active()
        first = prefault._pool
        assert prefault.start({}) and prefault._pool is first  # once per process
        assert first.limit >= prefault.CHUNK_BYTES
        assert prefault.held_bytes() == first.held_bytes
    finally:
        prefault.release()
    assert not prefault.active() and prefault.held_bytes() == 0
