"""`lm.memory_limits`: a container's cgroup memory limit caps what a CPU run plans for.

The cgroup trees are fakes written under tmp_path, in the layouts the kernel mounts."""

from __future__ import annotations

import pathlib
import sys

import jax
import pytest

import lm.prefault as prefault
from lm import memory_limits
from lm.models.layers.scan import device_memory_bytes

GiB = 1 << 30
MiB = 1 << 20
V1_NO_LIMIT = "9223372036854771712"  # what cgroup v1 writes for "no limit"


def _write(directory: pathlib.Path, **files: str | int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (directory / name.replace("_", ".", 1)).write_text(f"{value}\n")


def _proc(tmp_path: pathlib.Path, *lines: str) -> str:
    path = tmp_path / "proc_self_cgroup"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _v2_root(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "cgroup"
    _write(root, cgroup_controllers="cpu memory pids")
    return root


def test_v2_the_tightest_level_sets_the_limit_and_the_headroom(tmp_path):
    root = _v2_root(tmp_path)
    _write(root / "job", memory_max=8 * GiB, memory_current=3 * GiB)
    _write(root / "job" / "task", memory_max="max", memory_current=1 * GiB)
    proc = _proc(tmp_path, "0::/job/task")
    assert memory_limits.cgroup_memory(proc, str(root)) == (8 * GiB, 5 * GiB)

    _write(root / "job" / "task", memory_max=2 * GiB, memory_current=int(1.5 * GiB))
    assert memory_limits.cgroup_memory(proc, str(root)) == (2 * GiB, GiB // 2)


def test_v1_memory_controller_and_its_no_limit_value(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "memory", memory_limit_in_bytes=V1_NO_LIMIT, memory_usage_in_bytes=9 * GiB)
    _write(
        root / "memory" / "docker" / "abc",
        memory_limit_in_bytes=4 * GiB,
        memory_usage_in_bytes=1 * GiB,
    )
    proc = _proc(tmp_path, "5:cpu,cpuacct:/docker/abc", "4:memory:/docker/abc", "0::/")
    assert memory_limits.cgroup_memory(proc, str(root)) == (4 * GiB, 3 * GiB)

    _write(root / "memory" / "docker" / "abc", memory_limit_in_bytes=V1_NO_LIMIT)
    assert memory_limits.cgroup_memory(proc, str(root)) == (None, None)


def test_a_cgroup_path_outside_the_containers_view_reads_the_mounted_cgroup(tmp_path):
    """Without a cgroup namespace /proc/self/cgroup names the host's path, while the
    container's own cgroup is what is mounted; with one, paths outside it start with `..`."""
    root = _v2_root(tmp_path)
    _write(root, memory_max=6 * GiB, memory_current=2 * GiB)
    _write(tmp_path / "elsewhere", memory_max=1 * GiB, memory_current=0)
    for path in ("/kubepods/pod1/ctr", "/../elsewhere"):
        proc = _proc(tmp_path, f"0::{path}")
        assert memory_limits.cgroup_memory(proc, str(root)) == (6 * GiB, 4 * GiB), path


def test_v2_beside_v1_is_found_under_unified(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "unified", cgroup_controllers="memory")
    _write(root / "unified" / "run", memory_max=3 * GiB, memory_current=1 * GiB)
    proc = _proc(tmp_path, "1:name=systemd:/run", "0::/run")
    assert memory_limits.cgroup_memory(proc, str(root)) == (3 * GiB, 2 * GiB)


def test_no_cgroup_information_means_no_limit(tmp_path):
    missing = str(tmp_path / "missing")
    assert memory_limits.cgroup_memory(missing, str(tmp_path)) == (None, None)
    proc = _proc(tmp_path, "0::/x")  # v2 line, but no cgroup2 mount there
    assert memory_limits.cgroup_memory(proc, str(tmp_path / "nothing")) == (None, None)


def test_mem_available_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemFree: 50 kB\nMemAvailable: 70 kB\n")
    assert memory_limits.mem_available_bytes(str(meminfo)) == 70 * 1024
    assert memory_limits.mem_available_bytes(str(tmp_path / "missing")) is None


def test_the_container_limit_caps_the_host_memory_and_what_is_available(monkeypatch):
    physical = memory_limits.physical_memory_bytes()
    monkeypatch.setattr(memory_limits, "cgroup_memory", lambda: (None, None))
    assert memory_limits.host_memory_bytes() == physical
    monkeypatch.setattr(memory_limits, "cgroup_memory", lambda: (2 * GiB, 512 * MiB))
    assert memory_limits.host_memory_bytes() == min(physical, 2 * GiB)
    available = memory_limits.available_memory_bytes()
    assert available is not None and available <= 512 * MiB


def test_auto_remat_on_cpu_sizes_itself_from_the_container_limit(monkeypatch):
    """Less what the process holds already: jax and Python are in the same memory."""
    from lm.models.layers import scan

    monkeypatch.setattr(memory_limits, "cgroup_memory", lambda: (2 * GiB, GiB))
    monkeypatch.setattr(scan, "process_rss_bytes", lambda: 512 * MiB)
    assert device_memory_bytes() == (2 * GiB - 512 * MiB) // jax.local_device_count()
    # the prefault pool's pages count as the step's, not as memory the process holds
    monkeypatch.setattr(prefault, "held_bytes", lambda: 256 * MiB)
    assert device_memory_bytes() == (2 * GiB - 256 * MiB) // jax.local_device_count()
    monkeypatch.setattr(scan, "process_rss_bytes", lambda: 3 * GiB)
    assert device_memory_bytes() == 0


def test_process_rss_reads_statm(tmp_path):
    import os

    statm = tmp_path / "statm"
    statm.write_text("1000 250 30 1 0 200 0\n")
    assert memory_limits.process_rss_bytes(str(statm)) == 250 * os.sysconf("SC_PAGE_SIZE")
    assert memory_limits.process_rss_bytes(str(tmp_path / "missing")) == 0
    assert memory_limits.process_rss_bytes() > 0  # this process


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pool is Linux-only")
def test_the_prefault_pool_stays_under_the_containers_headroom(monkeypatch):
    monkeypatch.setattr(prefault, "_pool", None)
    monkeypatch.setattr(prefault, "INITIAL_BYTES", 8 * MiB)
    monkeypatch.setattr(memory_limits, "cgroup_memory", lambda: (GiB, 256 * MiB))
    try:
        assert prefault.start({})
        assert prefault._pool.limit == int(256 * MiB * prefault.MAX_FRACTION)
    finally:
        prefault.release()
    # no room left under the limit: no pool
    monkeypatch.setattr(prefault, "_pool", None)
    monkeypatch.setattr(memory_limits, "cgroup_memory", lambda: (GiB, 0))
    assert not prefault.start({})
