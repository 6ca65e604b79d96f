"""Data pipeline benchmarks: tokenization + cache throughput, and loader throughput.

    python bench/data.py                       # embedded corpus + 1 GB synthetic jsonl.gz
    python bench/data.py --synthetic-gb 0      # embedded corpus only

Tokenization rows, on the embedded corpus (stdlib sources) and on a synthetic jsonl.gz
corpus (lines sampled from the stdlib, gzip level 1, 16 shards):
- `HF tokenizer, 1 process` -- the ceiling: the HF fast tokenizer called directly on
  batches of 512 documents (its Rust thread pool uses every core), nothing written;
- `cache, backend local` -- `build_or_load_cache` in this process (reads, tokenizes,
  writes TensorStore);
- `cache, Ray N workers` -- the same with N Ray tasks at a time, each one CPU and one
  tokenizer thread. Ray start-up is excluded; worker start-up is included.
"Per core" divides by the cores the row can use (all cores for the first two).

Loader rows: a `DataLoader` over the shuffled stdlib train set (seq_len 1024, batch 32,
batch sharded over 8 fake CPU devices): batches/s with an idle consumer, and the fraction
of a simulated ~100 ms training step (a jitted matmul loop) spent waiting for data.

Everything (caches, synthetic corpus) is written to a new folder `lm-bench-data-*` made
inside --workdir, and only that folder is deleted at the end (kept, and its path printed,
with --keep); nothing else in --workdir is touched.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def _tokens_per_s(rows, name, seconds, tokens, cores, docs=None):
    rows.append(
        {
            "row": name,
            "seconds": seconds,
            "tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "per_core": tokens / seconds / cores,
            "docs_per_s": (docs / seconds) if docs else None,
        }
    )
    print(
        f"  {name:34s} {seconds:8.1f} s  {tokens / seconds:12,.0f} tok/s  "
        f"{tokens / seconds / cores:10,.0f} tok/s/core",
        flush=True,
    )


def bench_direct(source, encoder, batch_size=512):
    """The ceiling: the HF tokenizer called directly, nothing written."""
    tok = encoder.hf_tokenizer
    start = time.perf_counter()
    tokens = docs = 0
    for shard in range(len(source.shard_names())):
        batch = []
        for doc in source.open_shard(shard):
            batch.append(doc)
            if len(batch) == batch_size:
                tokens += sum(map(len, tok(batch)["input_ids"]))
                docs += len(batch)
                batch = []
        if batch:
            tokens += sum(map(len, tok(batch)["input_ids"]))
            docs += len(batch)
    return time.perf_counter() - start, tokens, docs


def bench_cache(source, encoder, path, options):
    from lm.data import build_or_load_cache

    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    cache = build_or_load_cache(str(path), source, encoder, options)
    return time.perf_counter() - start, cache.num_tokens, cache.num_docs


def tokenization_rows(label, source, workdir, worker_counts):
    from lm.data import CacheOptions
    from lm.data.tokenizer import DocumentEncoder
    from lm.distributed import RayConfig

    encoder = DocumentEncoder("builtin")
    encoder.fingerprint()  # load the tokenizer outside the timings
    cores = os.cpu_count() or 1
    rows = []
    print(f"{label}:", flush=True)
    secs, toks, docs = bench_direct(source, encoder)
    _tokens_per_s(rows, "HF tokenizer, 1 process", secs, toks, cores, docs)
    secs, toks, docs = bench_cache(
        source, encoder, workdir / "local", CacheOptions(backend="local")
    )
    _tokens_per_s(rows, "cache, backend local", secs, toks, cores, docs)
    RayConfig().initialize()
    for n in worker_counts:
        secs, toks, docs = bench_cache(
            source, encoder, workdir / f"ray{n}", CacheOptions(backend="ray", num_workers=n)
        )
        _tokens_per_s(rows, f"cache, Ray {n} worker{'s' if n > 1 else ''}", secs, toks, n, docs)
    return rows


def make_synthetic(path: pathlib.Path, gigabytes: float, num_shards: int = 16, seed: int = 0):
    """Documents of 20-400 lines sampled from the stdlib corpus; `gigabytes` of text."""
    from lm.data import corpus

    lines = []
    for f in corpus.corpus_files("train"):
        lines.extend(corpus.read_document(f.relpath).splitlines())
    lines = np.array(lines, dtype=object)
    rng = np.random.default_rng(seed)
    target = int(gigabytes * 1e9)
    per_shard = target // num_shards
    path.mkdir(parents=True, exist_ok=True)
    written = 0
    for s in range(num_shards):
        size = 0
        with gzip.open(path / f"synthetic-{s:03d}.jsonl.gz", "wt", compresslevel=1) as f:
            while size < per_shard:
                n = int(rng.integers(20, 400))
                text = "\n".join(lines[rng.integers(0, len(lines), n)])
                f.write(json.dumps({"text": text}) + "\n")
                size += len(text)
        written += size
    return written


def loader_rows(workdir, seq_len=1024, batch_size=32, num_batches=200, step_ms=100.0):
    import haliax as hax
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh

    from lm.data import CacheOptions, DataLoader, LMDatasetConfig

    cfg = LMDatasetConfig(
        cache_dir=str(workdir / "stdlib-cache"),
        cache_options=CacheOptions(backend="local"),
        shuffle=True,
    )
    ds = cfg.train_set(hax.Axis("position", seq_len), key=jax.random.PRNGKey(0))
    devices = np.array(jax.devices())
    mesh = Mesh(devices.reshape(1, len(devices), 1), ("replica", "data", "model"))
    mapping = {"batch": ("replica", "data")}
    rows = []
    print(f"loader (seq_len {seq_len}, batch {batch_size}, {len(devices)} devices):", flush=True)

    loader = DataLoader(ds, batch_size, mesh=mesh, axis_mapping=mapping, prefetch_size=4)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(num_batches):
        jax.block_until_ready(next(it).tokens.array)
    secs = time.perf_counter() - start
    it.close()
    rows.append({"row": "idle consumer", "batches_per_s": num_batches / secs})
    print(
        f"  idle consumer: {num_batches / secs:,.1f} batches/s "
        f"({num_batches * batch_size * seq_len / secs:,.0f} tokens/s)",
        flush=True,
    )

    # A simulated training step: a jitted matmul loop sized to about step_ms.
    x = jnp.ones((512, 512), jnp.float32)

    @jax.jit
    def step(x, n):
        return jax.lax.fori_loop(0, n, lambda i, y: jnp.tanh(y @ x) * 0.5, x)

    n = 1
    while True:
        jax.block_until_ready(step(x, n))
        t = time.perf_counter()
        jax.block_until_ready(step(x, n))
        took = (time.perf_counter() - t) * 1000
        if took >= step_ms or n > 1 << 16:
            break
        n = max(n + 1, int(n * step_ms / max(took, 1e-3)))
    it = loader.iter_from_step(0)
    next(it)
    waits, steps = [], []
    for _ in range(50):
        t = time.perf_counter()
        batch = next(it)
        waits.append(loader.last_wait_time)
        jax.block_until_ready(step(x, n) + batch.tokens.array.sum())
        steps.append(time.perf_counter() - t)
    it.close()
    frac = sum(waits) / sum(steps)
    rows.append({"row": "simulated step", "step_ms": 1000 * np.mean(steps), "wait_fraction": frac})
    print(
        f"  simulated {1000 * np.mean(steps):.0f} ms step: waiting for data {100 * frac:.2f}% "
        f"of step time (mean wait {1000 * np.mean(waits):.2f} ms)",
        flush=True,
    )
    return rows


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir",
        default=tempfile.gettempdir(),
        help="where the run's own folder (lm-bench-data-*) is made; nothing else in it is "
        "touched (default: %(default)s)",
    )
    parser.add_argument("--synthetic-gb", type=float, default=1.0)
    parser.add_argument("--workers", default="1,2", help="Ray worker counts, comma-separated")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's folder (synthetic corpus and caches)"
    )
    args = parser.parse_args()
    try:
        workers = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        workers = []
    if not workers or min(workers) < 1:
        parser.error(f"--workers {args.workers!r}: give worker counts >= 1, comma-separated")
    if args.synthetic_gb < 0:
        parser.error(f"--synthetic-gb {args.synthetic_gb:g}: must be >= 0 (0 skips it)")
    if not os.path.isdir(args.workdir):
        parser.error(f"--workdir {args.workdir}: no such directory")

    import jax
    import ray
    import tokenizers
    import transformers

    from lm.data.sources import StdlibSource, UrlSource
    from lm.distributed import shutdown_ray

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}, jax "
        f"{jax.__version__}, tokenizers {tokenizers.__version__}, transformers "
        f"{transformers.__version__}, ray {ray.__version__}",
        flush=True,
    )
    # Our own folder: at the end only it is deleted, never what else --workdir holds.
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="lm-bench-data-", dir=args.workdir))
    print(f"writing to {workdir}", flush=True)
    try:
        tokenization_rows(
            "embedded corpus (stdlib train split)",
            StdlibSource("train"),
            workdir / "stdlib",
            workers,
        )
        if args.synthetic_gb > 0:
            syn = workdir / "synthetic"
            t = time.perf_counter()
            size = make_synthetic(syn, args.synthetic_gb)
            gz = sum(p.stat().st_size for p in syn.iterdir())
            print(
                f"synthetic corpus: {size / 1e9:.2f} GB of text, {gz / 1e9:.2f} GB gzipped, "
                f"made in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
            source = UrlSource.from_patterns([str(syn / "synthetic-*.jsonl.gz")])
            tokenization_rows(
                f"synthetic {args.synthetic_gb:g} GB jsonl.gz", source, workdir / "syn", workers
            )
        shutdown_ray()
        loader_rows(workdir)
    finally:
        shutdown_ray()
        if args.keep:
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
