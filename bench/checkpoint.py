"""Checkpoint save/restore throughput against the disk's own speed and a numpy baseline.

    PYTHONPATH=src python bench/checkpoint.py [--size-mb 300] [--repeats 3] [--dir /tmp]

The state is float32 parameters plus Adam's two moments (a third each of --size-mb),
shaped like a small transformer. Measured in the same run, on the same filesystem:

- `lm` save: `save_checkpoint` until `wait_until_finished` (commit, fsync'd), and the
  part that blocks the training loop (until the host copy is staged);
- `lm` restore: `load_checkpoint` into `ShapeDtypeStruct`s, arrays on device;
- dd-style sequential write (16 MiB blocks, fsync) and read of one file of equal size;
- `numpy.save` per leaf (fsync'd) and `numpy.load` + `device_put` per leaf.

Reads are cold: every file read is first evicted from the page cache with
`posix_fadvise(DONTNEED)` (no global cache drop). Prints one JSON object, then a
one-line summary. GB/s uses 1e9 bytes.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from bench_args import positive_int

from lm.checkpoint import AsyncCheckpointManager, load_checkpoint, save_checkpoint

BLOCK = 16 << 20


MIN_VOCAB = 1024
EMBED_SIZES = (768, 512, 384, 256, 128, 64)


def _per_layer(embed: int) -> int:
    return 12 * embed * embed + 4 * embed  # attn 4*e^2 + mlp 8*e^2 + norms/biases


def make_params(total_bytes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Transformer-like float32 leaves (embeddings, per-layer matrices, norms) summing to
    about `total_bytes`: width 768, or the widest of `EMBED_SIZES` whose smallest model (a
    `MIN_VOCAB`-row embedding and one layer) fits; never smaller than that at width 64."""
    rng = np.random.default_rng(seed)
    floats = total_bytes // 4
    embed = next(
        (e for e in EMBED_SIZES if MIN_VOCAB * e + _per_layer(e) <= floats), EMBED_SIZES[-1]
    )
    per_layer = _per_layer(embed)
    vocab = max(MIN_VOCAB, floats // 10 // embed)
    n_layers = max(1, (floats - vocab * embed) // per_layer)
    params = {"embed/token": rng.standard_normal((vocab, embed), dtype=np.float32)}
    for i in range(n_layers):
        p = f"layers/{i}"
        params[f"{p}/attn/qkv"] = rng.standard_normal((embed, 3 * embed), dtype=np.float32)
        params[f"{p}/attn/out"] = rng.standard_normal((embed, embed), dtype=np.float32)
        params[f"{p}/mlp/up"] = rng.standard_normal((embed, 4 * embed), dtype=np.float32)
        params[f"{p}/mlp/down"] = rng.standard_normal((4 * embed, embed), dtype=np.float32)
        for name in ("ln1", "ln2", "b_up", "b_out"):
            params[f"{p}/{name}"] = rng.standard_normal((embed,), dtype=np.float32)
    return params


def nested(flat: dict[str, object]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def evict(path: str) -> None:
    """Drop `path` (a file, or every file under a directory) from the page cache."""
    files = [path]
    if os.path.isdir(path):
        files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def bench_dd(path: str, nbytes: int) -> tuple[float, float]:
    block = np.random.default_rng(1).bytes(BLOCK)
    t = time.perf_counter()
    with open(path, "wb") as f:
        written = 0
        while written < nbytes:
            f.write(block)
            written += BLOCK
        f.flush()
        os.fsync(f.fileno())
    write_s = time.perf_counter() - t
    evict(path)
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(BLOCK):
            pass
    read_s = time.perf_counter() - t
    os.remove(path)
    return written / write_s / 1e9, written / read_s / 1e9


def bench_numpy(root: str, state: dict[str, np.ndarray], nbytes: int) -> tuple[float, float]:
    os.makedirs(root)
    t = time.perf_counter()
    for i, arr in enumerate(state.values()):
        with open(os.path.join(root, f"{i}.npy"), "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
    write_s = time.perf_counter() - t
    evict(root)
    t = time.perf_counter()
    loaded = [jax.device_put(np.load(os.path.join(root, f"{i}.npy"))) for i in range(len(state))]
    jax.block_until_ready(loaded)
    read_s = time.perf_counter() - t
    return nbytes / write_s / 1e9, nbytes / read_s / 1e9


def bench_lm(root: str, tree: dict, nbytes: int) -> dict[str, float]:
    manager = AsyncCheckpointManager()
    t = time.perf_counter()
    save_checkpoint(tree, 1, root, manager=manager)
    blocking_s = time.perf_counter() - t
    manager.wait_until_finished()
    save_s = time.perf_counter() - t
    evict(root)
    exemplar = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    t = time.perf_counter()
    restored = load_checkpoint(exemplar, root, discover_latest=False)
    jax.block_until_ready(restored)
    restore_s = time.perf_counter() - t
    return {
        "save_gbps": nbytes / save_s / 1e9,
        "save_blocking_s": blocking_s,
        "save_s": save_s,
        "restore_gbps": nbytes / restore_s / 1e9,
        "restore_s": restore_s,
        "bytes_on_disk": dir_bytes(root),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=300.0, help="params + Adam state, MB")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: system temp)")
    args = parser.parse_args()
    if not args.size_mb > 0:
        parser.error(f"--size-mb {args.size_mb:g}: must be > 0")
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir}: no such directory")

    params = make_params(int(args.size_mb * 1e6 / 3))
    flat = dict(params)
    flat.update({f"opt/mu/{k}": v * 0.1 for k, v in params.items()})
    flat.update({f"opt/nu/{k}": np.abs(v) * 0.01 for k, v in params.items()})
    nbytes = sum(v.nbytes for v in flat.values())
    if abs(nbytes / 1e6 - args.size_mb) > 0.1 * args.size_mb:
        embed = params["embed/token"].shape[1]
        print(
            f"note: --size-mb {args.size_mb:g} is not reachable with whole layers: the state is "
            f"{nbytes / 1e6:.1f} MB (width {embed}, {len(params) // 8} layer(s)); it is never "
            f"below {3 * 4 * (MIN_VOCAB * 64 + _per_layer(64)) / 1e6:.1f} MB",
            file=sys.stderr,
            flush=True,
        )
    tree = nested({k: jax.device_put(v) for k, v in flat.items()})
    tree["step"] = jax.device_put(np.int32(1000))
    jax.block_until_ready(tree)

    runs: dict[str, list] = {"dd": [], "numpy": [], "lm": []}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="lm-bench-ckpt-") as tmp:
        for r in range(args.repeats):
            runs["dd"].append(bench_dd(os.path.join(tmp, f"dd-{r}"), nbytes))
            runs["numpy"].append(bench_numpy(os.path.join(tmp, f"np-{r}"), flat, nbytes))
            runs["lm"].append(bench_lm(os.path.join(tmp, f"lm-{r}", "step-1"), tree, nbytes))

    def med(values):
        return round(statistics.median(values), 3)

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "load_average": os.getloadavg()[0],
        "versions": {
            "jax": jax.__version__,
            "tensorstore": importlib.metadata.version("tensorstore"),
            "numpy": np.__version__,
        },
        "bytes": nbytes,
        "num_leaves": len(flat) + 1,
        "repeats": args.repeats,
        "lm_save_gbps": med([x["save_gbps"] for x in runs["lm"]]),
        "lm_save_blocking_s": med([x["save_blocking_s"] for x in runs["lm"]]),
        "lm_restore_gbps": med([x["restore_gbps"] for x in runs["lm"]]),
        "lm_bytes_on_disk": runs["lm"][0]["bytes_on_disk"],
        "disk_write_gbps": med([x[0] for x in runs["dd"]]),
        "disk_read_gbps": med([x[1] for x in runs["dd"]]),
        "numpy_save_gbps": med([x[0] for x in runs["numpy"]]),
        "numpy_load_gbps": med([x[1] for x in runs["numpy"]]),
    }
    print(json.dumps(result, indent=2))
    print(
        f"checkpoint {nbytes / 1e6:.0f} MB: save {result['lm_save_gbps']} GB/s "
        f"(blocks {result['lm_save_blocking_s']} s), restore {result['lm_restore_gbps']} GB/s | "
        f"disk write {result['disk_write_gbps']} / read {result['disk_read_gbps']} GB/s | "
        f"numpy.save {result['numpy_save_gbps']} / np.load {result['numpy_load_gbps']} GB/s"
    )


if __name__ == "__main__":
    main()
