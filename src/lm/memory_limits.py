"""How much host memory a CPU run may use: the machine's, and its container's cgroup limit.

Inside a container (Docker, Kubernetes, most batch schedulers) the process's memory is capped
by its cgroup, while `sysconf` and `/proc/meminfo` describe the whole machine: a run that sizes
itself from them (`gradient_checkpointing: auto` on CPU, `lm.prefault`'s pool) can plan for
memory it will never get, and the container's OOM killer ends it without a Python error.
Both read their numbers here instead.

The limit is the smallest of the process's cgroup and its ancestors that the process can see:
cgroup v2 (`memory.max`, `memory.current`) or v1's memory controller
(`memory.limit_in_bytes`, `memory.usage_in_bytes`). v1 writes "no limit" as a huge number,
v2 as `max`. A cgroup's usage counts its page cache, which the kernel can reclaim, so the
headroom under a limit is a lower bound.
"""

from __future__ import annotations

import os

PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"
UNLIMITED = 1 << 60
"""Limits at or above this are "no limit" (cgroup v1 writes ~2^63 for it)."""

_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes")
_V2 = ("memory.max", "memory.current")


def _read_bytes(path: str) -> int | None:
    """A cgroup file's number; None for `max`, a missing or unreadable file, or no limit."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max" (v2's no limit) or something unexpected
    value = int(text)
    return None if value >= UNLIMITED else value


def _memory_hierarchy(proc_cgroup: str, root: str) -> tuple[str, str, tuple[str, str]] | None:
    """(the mount of the memory controller, this process's cgroup path below it, the names of
    its limit and usage files), or None where no memory controller can be found."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    v2_path = None
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if "memory" in controllers.split(","):
            return os.path.join(root, "memory"), path, _V1
        if line.startswith("0::"):
            v2_path = path
    if v2_path is None:
        return None
    for mount in (root, os.path.join(root, "unified")):  # pure v2, or v2 beside v1 (hybrid)
        if os.path.exists(os.path.join(mount, "cgroup.controllers")):
            return mount, v2_path, _V2
    return None


def cgroup_memory(
    proc_cgroup: str = PROC_CGROUP, root: str = CGROUP_ROOT
) -> tuple[int | None, int | None]:
    """(limit, headroom) in bytes: the smallest memory limit over this process's cgroup and
    its ancestors, and the least room left under any of them (limit - usage); None for each
    where no limit applies or the cgroup files cannot be read."""
    found = _memory_hierarchy(proc_cgroup, root)
    if found is None:
        return None, None
    mount, path, (limit_file, usage_file) = found
    mount = os.path.normpath(mount)
    directory = os.path.normpath(os.path.join(mount, path.lstrip("/")))
    inside = directory == mount or directory.startswith(mount + os.sep)
    if not inside or not os.path.isdir(directory):
        # a cgroup path from outside this container's view of the hierarchy (no cgroup
        # namespace): the container's own cgroup is what is mounted
        directory = mount
    limit = headroom = None
    while True:
        level_limit = _read_bytes(os.path.join(directory, limit_file))
        if level_limit is not None:
            limit = level_limit if limit is None else min(limit, level_limit)
            usage = _read_bytes(os.path.join(directory, usage_file))
            if usage is not None:
                room = max(0, level_limit - usage)
                headroom = room if headroom is None else min(headroom, room)
        if len(directory) <= len(mount):  # the mount itself: the top this process sees
            break
        directory = os.path.dirname(directory)
    return limit, headroom


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_memory_bytes() -> int:
    """The memory this process may use at most: the machine's, or its cgroup's limit if
    smaller."""
    limit, _ = cgroup_memory()
    physical = physical_memory_bytes()
    return physical if limit is None else min(physical, limit)


def process_rss_bytes(statm: str = "/proc/self/statm") -> int:
    """This process's resident memory now (0 where /proc cannot tell)."""
    try:
        with open(statm) as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def mem_available_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """The machine's `MemAvailable` (what can be allocated without swapping), or None."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory_bytes() -> int | None:
    """What this process can still allocate: the machine's `MemAvailable`, or the room left
    under its cgroup's limit if smaller; None where neither is known."""
    available = mem_available_bytes()
    _, headroom = cgroup_memory()
    known = [v for v in (available, headroom) if v is not None]
    return min(known) if known else None
