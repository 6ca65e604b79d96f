"""The build lease: one process at a time builds a tokenized cache.

Two runs started at once on the same new `cache_dir` would otherwise both build every shard,
each wiping the other's finished shards. The builder holds `<cache>/build.lease`, a small
JSON file naming its owner (host, pid, the process's start time) with a heartbeat it
refreshes every `HEARTBEAT_S` from a background thread. Everyone else waits for the ledger
to say complete, and takes the build over when the lease is released without finishing it
(the builder failed) or goes stale:

- the owner ran on this host and its process is gone (or its pid now names another
  process): stale at once;
- otherwise: its contents (the heartbeat) have not changed for `TIMEOUT_S`, by the waiting
  process's own clock, so clocks that disagree between hosts do not matter.

The lease is created atomically where the filesystem allows it: on a local disk it is
written aside and hard-linked into place (`O_EXCL` where links are not supported), in
`memory://` under a process-wide lock; on object stores (`gs://`, `s3://`) with fsspec's
create-only write (`pipe_file(mode="create")`), which the store's filesystem implements as a
conditional write where it can (else: a check that the file is absent, then a write), and is
then read back after `SETTLE_S`, so that of two creates racing through a non-atomic check,
only the one whose content stayed holds the lease.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid

import fsspec

from lm.data.cache_arrays import join_url
from lm.fs import is_local_filesystem

logger = logging.getLogger(__name__)

LEASE_NAME = "build.lease"
HEARTBEAT_S = 10.0
"""How often the builder refreshes its lease."""
TIMEOUT_S = 120.0
"""A lease whose contents have not changed for this long (a missed heartbeat 12 times over)
is stale, and a waiting process takes the build over."""
SETTLE_S = 1.0
"""How long an object-store create waits before reading its lease back."""

_MEMORY_LOCK = threading.Lock()


class LeaseLost(Exception):
    """Another process took over the lease of a build still running here."""


def _process_start(pid: int) -> str | None:
    """When process `pid` started (Linux: /proc/<pid>/stat field 22), to tell a reused pid
    from the process that wrote a lease; None where that is unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_space() -> str | None:
    """This process's boot and pid namespace (Linux), telling apart containers that share
    a host name; None where unknown (then a lease's owner is never judged dead by its pid)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@dataclasses.dataclass(frozen=True)
class LeaseState:
    """What a lease file says (all None when it could not be parsed: still being written)."""

    raw: bytes
    host: str | None = None
    pid: int | None = None
    started: str | None = None
    token: str | None = None
    pid_space: str | None = None

    @staticmethod
    def parse(raw: bytes) -> LeaseState:
        try:
            d = json.loads(raw.decode("utf-8"))
            return LeaseState(
                raw, d["host"], int(d["pid"]), d.get("started"), d["token"], d.get("pid_space")
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return LeaseState(raw)

    @property
    def owner(self) -> str:
        if self.pid is None:
            return "another process (its lease cannot be read yet)"
        return f"process {self.pid} on {self.host}"

    def gone(self) -> bool:
        """Whether the owner is known to be dead: it ran on this host, in this process-id
        space, and its pid is gone or now names a process that started at another time.
        (Containers on one host share its name, with `--net=host`, but not their pids.)"""
        if self.pid is None or self.host != socket.gethostname():
            return False
        if self.pid_space is None or self.pid_space != _pid_space():
            return False
        if not _pid_alive(self.pid):
            return True
        return self.started is not None and _process_start(self.pid) not in (None, self.started)


def read(cache_dir: str) -> LeaseState | None:
    """The lease of the build at `cache_dir`, or None when nobody holds it."""
    fs, path = fsspec.core.url_to_fs(_url(cache_dir))
    try:
        return LeaseState.parse(fs.cat_file(path))
    except FileNotFoundError:
        return None


def _url(cache_dir: str) -> str:
    return join_url(cache_dir, LEASE_NAME)


class Lease:
    """A held lease: refreshes its heartbeat until `release()` (or the `with` block's end)."""

    def __init__(self, cache_dir: str):
        self.cache_dir = cache_dir
        self.url = _url(cache_dir)
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_to: LeaseState | None = None

    def _content(self) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": _process_start(os.getpid()),
                "pid_space": _pid_space(),
                "token": self.token,
                "heartbeat": time.time(),
            }
        ).encode()

    @staticmethod
    def acquire(cache_dir: str) -> Lease | None:
        """The lease, now held by this process, or None if another process holds it."""
        lease = Lease(cache_dir)
        if not lease._create():
            return None
        lease._thread = threading.Thread(
            target=lease._beat, name=f"cache-lease-{cache_dir}", daemon=True
        )
        lease._thread.start()
        return lease

    def _create(self) -> bool:
        data = self._content()
        if is_local_filesystem(self.fs):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.tmp-{self.token}"
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, self.path)  # appears whole, or not at all
                return True
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                return True
            finally:
                os.unlink(tmp)
        if "memory" in self.fs.protocol:
            with _MEMORY_LOCK:
                if self.fs.exists(self.path):
                    return False
                self.fs.pipe_file(self.path, data)
                return True
        self.fs.invalidate_cache(self.path)
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return False
        except TypeError:  # a filesystem whose pipe_file predates mode="create"
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, data)
        time.sleep(SETTLE_S)
        state = read(self.cache_dir)
        return state is not None and state.token == self.token

    def _write(self) -> None:
        data = self._content()
        if is_local_filesystem(self.fs):
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:
            self.fs.pipe_file(self.path, data)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                state = read(self.cache_dir)
                if state is None or state.token != self.token:
                    self.lost_to = state or LeaseState(b"")
                    logger.warning(
                        "The build lease %s was taken over by %s", self.url, self.lost_to.owner
                    )
                    return
                self._write()
            except Exception as e:  # a flaky store: the next beat tries again
                logger.warning("Could not refresh the build lease %s: %s", self.url, e)

    def check(self) -> None:
        """Raise `LeaseLost` if another process took this lease over."""
        if self.lost_to is not None:
            raise LeaseLost(
                f"another process ({self.lost_to.owner}) took over the build of the cache at "
                f"{self.cache_dir}"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it is still this process's."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            state = read(self.cache_dir)
            if state is not None and state.token == self.token:
                self.fs.rm_file(self.path)
        except OSError as e:  # a flaky store must not hide the build's own outcome
            logger.warning(
                "Could not release the build lease %s (%s); others take the build over once "
                "its heartbeat is %.0f s old",
                self.url,
                e,
                TIMEOUT_S,
            )

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def break_stale(cache_dir: str, seen: LeaseState) -> bool:
    """Remove the lease at `cache_dir` if it still holds what `seen` read; whether it did."""
    fs, path = fsspec.core.url_to_fs(_url(cache_dir))
    try:
        if fs.cat_file(path) != seen.raw:
            return False
        fs.rm_file(path)
    except FileNotFoundError:
        return False
    return True


class Watch:
    """Tells when another process's lease goes stale, by this process's clock."""

    def __init__(self):
        self.raw: bytes | None = None
        self.since = time.monotonic()

    def stale(self, state: LeaseState) -> str | None:
        """Why the lease `state` is stale, or None while its owner looks alive."""
        if state.raw != self.raw:
            self.raw, self.since = state.raw, time.monotonic()
        if state.gone():
            return f"{state.owner} is gone"
        idle = time.monotonic() - self.since
        if idle >= TIMEOUT_S:
            return f"its heartbeat has not changed for {idle:.0f} s"
        return None
