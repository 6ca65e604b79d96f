"""Pages for a CPU run's first train step, faulted in ahead of it on an idle core.

The first write to a page the process never had costs the kernel a fault and a zeroing, and
on a VM whose host backs guest memory lazily (and takes freed memory back: virtio-balloon
free page reporting) the host's own fault on top: 2.3 s per GiB on the 2-vCPU AMD VM of
docs/benchmarks.md, against 0.1 s per GiB for pages the guest freed less than a second
before. A run's state init and its first train step write ~1.2 GiB of fresh memory on
`bench/configs/gpt2_512.yaml`: 2-2.5 s of kernel time on the critical path, paid once (later
steps reuse the pages the previous one freed).

`python -m lm.main.train_lm` on a CPU-only Linux run therefore starts a `Prefaulter` as the
process starts: a thread at the lowest priority (it runs when a core would idle: the imports
and the tracing are single-threaded) maps a pool and writes it 16 MiB at a time
(`memset` through ctypes, which releases the GIL; a write fault takes only the mapping's own
lock, where `MADV_POPULATE_WRITE` held the process's `mmap_lock` and stalled the imports'
own mappings). Once the run knows its model, `plan(bytes)` sizes the pool to the estimated
step; `release(bytes)` gives the state's share back to the kernel just before the state is
initialized, and `release()` the rest just before the first step runs, after its compile,
so XLA's allocations get the pages the guest already has.

`LM_HOST_PREFAULT=0` (or `off`) turns it off; `auto` (the default) or `1` keeps it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading

from lm.memory_limits import available_memory_bytes

logger = logging.getLogger(__name__)

ENV_VAR = "LM_HOST_PREFAULT"
_ON = {"", "auto", "1", "on", "true", "yes"}
_OFF = {"0", "off", "false", "no"}

CHUNK_BYTES = 16 << 20
"""Bytes written per call: the thread re-takes the GIL once per chunk."""
INITIAL_BYTES = 512 << 20
"""What the pool grows to before the run calls `plan` (the imports' idle core)."""
MAX_FRACTION = 0.25
"""The pool never holds more than this fraction of the memory available when it starts (the
machine's, or the room under the container's limit: `lm.memory_limits`)."""

_PROT_READ_WRITE = 0x1 | 0x2
_MAP_PRIVATE_ANONYMOUS_NORESERVE = 0x02 | 0x20 | 0x4000
_MADV_DONTNEED = 4
_MADV_HUGEPAGE = 14
_MAP_FAILED = ctypes.c_void_p(-1).value


def requested(environ=os.environ) -> bool:
    """Whether `LM_HOST_PREFAULT` allows a pool; any value but on/off ones is an error."""
    raw = environ.get(ENV_VAR, "auto")
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise SystemExit(
        f"{ENV_VAR}={raw!r} is not a setting: use auto (the default) or 1 to fault in the first "
        "train step's memory ahead of it, 0/off to leave it to the step"
    )


class Prefaulter:
    """A pool of written pages: grown by a background thread up to `plan`'s size (at most
    `limit` bytes), handed back to the kernel by `release`, oldest pages first."""

    def __init__(self, limit: int, *, initial: int = INITIAL_BYTES, chunk: int = CHUNK_BYTES):
        libc = ctypes.CDLL(None, use_errno=True)
        self._mmap = libc.mmap
        self._mmap.restype = ctypes.c_void_p
        self._mmap.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        )
        self._munmap = libc.munmap
        self._munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        self._madvise = libc.madvise
        self._madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        self.limit = limit
        self._chunk = chunk
        addr = self._mmap(None, limit, _PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS_NORESERVE, -1, 0)
        if addr is None or addr == _MAP_FAILED:
            raise OSError(ctypes.get_errno(), f"mmap of {limit} bytes for the prefault pool")
        self._addr = addr
        self._madvise(addr, limit, _MADV_HUGEPAGE)  # fewer, larger faults where THP exists
        self._cond = threading.Condition()
        self._target = min(initial, limit)  # bytes the pool should reach
        self._written = 0  # [0, _written) has been written (and not trimmed)
        self._released = 0  # [0, _released) is back with the kernel
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lm-prefault", daemon=True)
        self._thread.start()

    @property
    def held_bytes(self) -> int:
        """Written pages the pool holds now."""
        with self._cond:
            return self._written - self._released

    @property
    def closed(self) -> bool:
        return self._closed

    def _run(self) -> None:
        try:  # the lowest priority: only a core's idle time
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass
        while True:
            with self._cond:
                while not self._closed and self._written >= self._target:
                    self._cond.wait()
                if self._closed:
                    return
                start = self._written
                size = min(self._chunk, self._target - start)
            ctypes.memset(self._addr + start, 0, size)  # the GIL is released meanwhile
            with self._cond:
                if self._written == start:
                    self._written = start + size
                    self._trim()
                else:  # trimmed below this chunk meanwhile: it is not part of the pool
                    self._drop(start, start + size)

    def _drop(self, start: int, end: int) -> None:
        """Give the pages of [start, end) back to the kernel, keeping the mapping (a later
        write there faults in a fresh page)."""
        self._madvise(self._addr + start, end - start, _MADV_DONTNEED)

    def _trim(self) -> None:
        """Drop what was written beyond the target (the caller holds the lock; the thread
        writes only beyond `_written`, so this never races its write)."""
        low = max(self._target, self._released)
        if self._written > low:
            self._drop(low, self._written)
            self._written = low

    def plan(self, total: int) -> int:
        """Hold `total` bytes in all (capped at the pool's limit), counting those already
        released: written pages beyond that go back to the kernel, missing ones are written.
        Returns the bytes the pool will have written in all."""
        with self._cond:
            if self._closed:
                return 0
            self._target = max(self._released, min(int(total), self.limit))
            self._trim()
            self._cond.notify()
            return self._target

    def release(self, nbytes: int | None = None) -> int:
        """Give the oldest `nbytes` of the written pages (all of them, and stop, when None)
        back to the kernel; returns the bytes released."""
        if nbytes is None:
            with self._cond:
                self._closed = True
                self._cond.notify()
            self._thread.join()  # its chunk in progress lies in the range unmapped below
            with self._cond:
                freed = self._written - self._released
                self._munmap(self._addr, self.limit)
                self._released = self._written = self.limit
            return freed
        with self._cond:
            end = min(self._written, self._released + max(0, int(nbytes)))
            freed = end - self._released
            if freed > 0:
                self._drop(self._released, end)
                self._released = end
            return freed


_pool: Prefaulter | None = None


def start(environ=os.environ) -> bool:
    """Start this process's pool (once) if `LM_HOST_PREFAULT` allows it and this is Linux;
    returns whether a pool runs. `lm.main` calls it for CPU-only `train_lm` runs."""
    global _pool
    if _pool is not None:
        return True
    if not requested(environ) or not sys.platform.startswith("linux"):
        return False
    available = available_memory_bytes()
    if not available:
        return False
    limit = int(available * MAX_FRACTION) // CHUNK_BYTES * CHUNK_BYTES
    if limit < CHUNK_BYTES:
        return False
    try:
        _pool = Prefaulter(limit)
    except (OSError, AttributeError) as e:  # no mmap / madvise in this C library
        logger.debug("no prefault pool: %s", e)
        return False
    return True


def start_for_command(argv) -> bool:
    """`start()` when the interpreter's command line (`sys.orig_argv`) runs `-m lm.main.train_lm`
    on the CPU only (an accelerator's first step does not run in host memory)."""
    from lm.host_memory import cpu_only
    from lm.startup_gc import PAUSED_COMMANDS, command_module

    if command_module(argv) not in PAUSED_COMMANDS or not cpu_only():
        return False
    return start()


def active() -> bool:
    """Whether this process has a pool that still holds (or will write) pages."""
    return _pool is not None and not _pool.closed


def held_bytes() -> int:
    """Pages the pool holds now (0 without a pool): resident in this process, but kept for the
    first step's own allocations."""
    return 0 if _pool is None or _pool.closed else _pool.held_bytes


def plan(total: int) -> int:
    """Size the pool to the run's estimated state and first step; returns the bytes it will
    have written in all (capped at its limit; 0 without a pool)."""
    if _pool is None:
        return 0
    return _pool.plan(total)


def release(nbytes: int | None = None) -> int:
    """Hand `nbytes` of the pool (all of it, closing it, when None) back to the kernel, for
    the allocations that follow (a no-op without a pool)."""
    if _pool is None or _pool.closed:
        return 0
    freed = _pool.release(nbytes)
    if nbytes is None:
        logger.debug("prefault pool released (%d MiB)", freed >> 20)
    return freed
