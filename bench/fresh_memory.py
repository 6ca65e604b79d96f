"""What a first write to memory costs on this machine, by page size (Linux).

Usage:
    python bench/fresh_memory.py [--mib 512] [--rounds 4] [--pages huge,4k] [--pause 10]

For each page size (transparent huge pages asked for with `madvise(MADV_HUGEPAGE)`, and 4 KiB
pages with `MADV_NOHUGEPAGE`) it maps `--rounds` fresh anonymous regions of `--mib` MiB, one
after another, and times a `memset` of each (every page's first write: the kernel's fault and
zeroing, and on a VM whose host backs guest memory lazily, the host's fault as well). Then it
unmaps them and times one more region of the same size, which the kernel can serve from the
pages just freed. Prints seconds per GiB for each, and the machine's transparent huge page
mode. No jax; nothing is asserted. Between page sizes it sleeps `--pause` seconds, so that a
VM's free page reporting can hand the memory the previous size freed back to its host
(otherwise the second size would reuse it and look cheap).

Why it matters: a CPU training run writes its state and its first step's temporaries (~1.4
GiB on `bench/configs/gpt2_512.yaml`) to memory the process never had, so this cost sits on
the time to the first step (see docs/benchmarks.md, `lm.host_memory`, `lm.prefault`).
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import time

from bench_args import positive_int

_MADV_HUGEPAGE = 14
_MADV_NOHUGEPAGE = 15
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _first_write(nbytes: int, advice: int) -> tuple[mmap.mmap, float]:
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(advice)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    start = time.perf_counter()
    ctypes.memset(address, 1, nbytes)
    return region, time.perf_counter() - start


def measure(nbytes: int, rounds: int, advice: int) -> tuple[list[float], float]:
    """Seconds per GiB of `rounds` fresh regions, then of one region after freeing them."""
    per_gib = (1 << 30) / nbytes
    held, fresh = [], []
    for _ in range(rounds):
        region, seconds = _first_write(nbytes, advice)
        held.append(region)
        fresh.append(seconds * per_gib)
    for region in held:
        region.close()
    region, seconds = _first_write(nbytes, advice)
    region.close()
    return fresh, seconds * per_gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=positive_int, default=512, help="region size (MiB)")
    parser.add_argument("--rounds", type=positive_int, default=4, help="fresh regions per size")
    parser.add_argument(
        "--pages", default="huge,4k", help="page sizes in order, comma-separated: huge, 4k"
    )
    parser.add_argument("--pause", type=float, default=10.0, help="seconds between sizes")
    args = parser.parse_args()
    sizes = {"huge": ("huge pages", _MADV_HUGEPAGE), "4k": ("4 KiB pages", _MADV_NOHUGEPAGE)}
    wanted = [p.strip().lower() for p in args.pages.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in sizes]
    if unknown or not wanted:
        parser.error(f"--pages {args.pages!r}: use huge and/or 4k, comma-separated")
    if args.pause < 0:
        parser.error(f"--pause {args.pause}: must be 0 or more seconds")
    try:
        with open(_THP) as f:
            print(f"transparent huge pages: {f.read().strip()}")
    except OSError:
        print("transparent huge pages: not offered by this kernel")
    nbytes = args.mib << 20
    for i, key in enumerate(wanted):
        if i:
            time.sleep(args.pause)
        name, advice = sizes[key]
        fresh, reused = measure(nbytes, args.rounds, advice)
        rounds = " / ".join(f"{s:.2f}" for s in fresh)
        print(
            f"{name:>11}: first write {rounds} s per GiB; "
            f"after freeing them {reused:.2f} s per GiB ({args.mib} MiB regions)"
        )


if __name__ == "__main__":
    main()
