"""The tokenized cache: token ids of every document, in TensorStore, with a ledger.

Layout under a cache directory (local path or any fsspec/TensorStore URL):

    <cache>/ledger.json                 what was built from what, and how far it got
    <cache>/shards/00000/tokens         zarr3 int32[num_tokens]: the shard's documents, concatenated
    <cache>/shards/00000/offsets        zarr3 int64[num_docs]: end offset of each document
    ...

One source shard becomes one cache shard, in source order, so the token stream does not
depend on how many workers built it. Shards are built in parallel by Ray tasks
(`backend: ray`, the default) or one after another in this process (`backend: local`,
for tiny builds and `memory://` caches). The ledger lists the shards that are finished;
after a crash, rebuilding skips them and redoes only the rest. The ledger also records
fingerprints of the tokenizer (with the BOS/EOS policy) and of the sources: opening a
cache with a different tokenizer or different sources is an error, never a silent reuse
or a silent rebuild. The one exception is a build that failed before finishing any shard
(a bad line, a wrong `text_key`): nothing is lost by starting it over, so a rerun with
other settings does (and logs that it did).

The ledger's records and checks live in `lm.data.ledger`, the TensorStore arrays in
`lm.data.cache_arrays`, reading a finished cache (`TokenCache`) in `lm.data.token_cache`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from lm.config.errors import FieldError, invalid, is_count, raise_problems
from lm.data import lease
from lm.data.build_progress import BuildProgress, ShardCounts
from lm.data.cache_arrays import Appender, create_array, join_url, kvstore_url
from lm.data.ledger import CACHE_FORMAT_VERSION as CACHE_FORMAT_VERSION
from lm.data.ledger import LEDGER_NAME as LEDGER_NAME
from lm.data.ledger import (
    CacheLedger,
    ShardStats,
    check_compatible,
    expected_ledger,
    is_replaceable,
    mismatches,
    read_ledger,
    usable_ledger,
    verify_source_files,
    write_ledger,
)
from lm.data.sources import ShardedSource
from lm.data.token_cache import TokenCache, shard_dir
from lm.data.tokenizer import DocumentEncoder

logger = logging.getLogger(__name__)

TOKENS_CHUNK = 1 << 16
OFFSETS_CHUNK = 1 << 14
FLUSH_TOKENS = 1 << 20


@dataclasses.dataclass(frozen=True)
class CacheOptions:
    """How a tokenized cache is built (`cache_options:`)."""

    backend: Literal["ray", "local"] = "ray"
    """`ray`: shards are Ray tasks (a local Ray cluster is started if none is running);
    `local`: shards are built one after another in this process (tiny builds, `memory://`)."""
    num_workers: int | None = None
    """Shards built at once with `backend: ray`; None = the Ray cluster's CPU count."""
    batch_size: int = 512
    """Documents per tokenizer call."""

    def __post_init__(self):
        problems: list[FieldError] = []
        if self.backend not in ("ray", "local"):
            problems.append(invalid("backend", self.backend, "'ray' or 'local'"))
        if self.num_workers is not None and not is_count(self.num_workers):
            problems.append(invalid("num_workers", self.num_workers, "a positive int or null"))
        if not is_count(self.batch_size):
            problems.append(invalid("batch_size", self.batch_size, "a positive int"))
        raise_problems(problems)


# ---------------------------------------------------------------------------- building


def build_shard(
    cache_dir: str,
    index: int,
    source: ShardedSource,
    encoder: DocumentEncoder,
    batch_size: int = 512,
    on_progress: Callable[[int, int], None] | None = None,
) -> ShardStats:
    """Tokenize source shard `index` into `<cache>/shards/<index>` (overwriting a partial one).

    `on_progress(num_docs, num_tokens)` is called after each tokenizer batch. A document the
    encoder cannot take (`DocumentEncoder.document_problem`) is a bad line of its file.
    """
    base = shard_dir(cache_dir, index)
    tokens = Appender(create_array(join_url(base, "tokens"), "int32", TOKENS_CHUNK))
    offsets = Appender(create_array(join_url(base, "offsets"), "int64", OFFSETS_CHUNK))
    skipped = 0

    def on_bad_line(message: str) -> None:
        nonlocal skipped
        skipped += 1
        if skipped <= 5:
            logger.warning("skipped: %s", message)

    pending_tokens: list[np.ndarray] = []
    pending_count = 0
    num_docs = 0

    def flush() -> None:
        nonlocal pending_tokens, pending_count
        if not pending_tokens:
            return
        flat = np.concatenate(pending_tokens)
        ends = tokens.size + np.cumsum([len(t) for t in pending_tokens], dtype=np.int64)
        tokens.append(flat)
        offsets.append(ends)
        pending_tokens, pending_count = [], 0

    batch: list[Any] = []
    source_file = None

    def on_file(stamp: dict) -> None:
        nonlocal source_file
        source_file = stamp

    def encode(batch: list[Any]) -> None:
        nonlocal pending_count, num_docs
        batch_tokens = 0
        for ids in encoder.encode_batch(batch):
            if ids.size == 0:
                continue
            pending_tokens.append(ids)
            batch_tokens += ids.size
            num_docs += 1
        pending_count += batch_tokens
        if pending_count >= FLUSH_TOKENS:
            flush()
        if on_progress is not None:
            on_progress(len(batch), batch_tokens)

    docs = source.open_shard(index, on_bad_line, check=encoder.document_problem, on_file=on_file)
    for doc in docs:
        batch.append(doc)
        if len(batch) >= batch_size:
            encode(batch)
            batch = []
    if batch:
        encode(batch)
    flush()
    if skipped:
        logger.warning(
            "shard %d (%s): skipped %d bad lines", index, source.shard_names()[index], skipped
        )
    if num_docs == 0:
        why = f"besides its {skipped} bad lines" if skipped else "(the file or its texts are empty)"
        logger.warning(
            "shard %d (%s) holds no documents %s: it adds nothing to the cache",
            index,
            source.shard_names()[index],
            why,
        )
    return ShardStats(
        num_docs=num_docs, num_tokens=tokens.size, skipped_lines=skipped, source_file=source_file
    )


def build_or_load_cache(
    cache_dir: str,
    source: ShardedSource,
    encoder: DocumentEncoder,
    options: CacheOptions = CacheOptions(),
    *,
    ray_config=None,
    progress: bool = False,
) -> TokenCache:
    """Open the cache at `cache_dir`, building (or finishing) it first if needed.

    One process builds a cache at a time: the builder holds the cache's build lease
    (`lm.data.lease`); another process that finds the lease held waits for the build to
    finish, and takes it over if the lease is released unfinished or goes stale. In a
    multi-host run only process 0 builds; the others wait for the ledger to say complete.

    Args:
        cache_dir: local path or URL of this split's cache.
        source: the documents.
        encoder: tokenizer + BOS/EOS policy.
        options: backend and sizes.
        ray_config: an `lm.distributed.RayConfig` for `backend: ray` (default: `RayConfig()`,
            which connects to a running Ray or starts a local cluster).
        progress: show a progress bar (docs/s, tokens/s) on stderr; without it, a build
            logs its progress every `PROGRESS_LOG_S`.

    Raises:
        ValueError: the cache exists but was built from another tokenizer or sources (or a
            source file's contents changed since).
    """
    expected = expected_ledger(source, encoder)
    if not _is_builder_process():
        ledger = usable_ledger(cache_dir, expected)
        if ledger is not None and ledger.complete:
            return TokenCache(cache_dir, ledger)
        return _wait_for_cache(cache_dir, expected)
    try:
        return _open_or_build(cache_dir, source, encoder, options, expected, ray_config, progress)
    except BaseException as e:
        _publish_build_failure(cache_dir, e)  # the other processes wait for this cache
        raise


def _open_or_build(cache_dir, source, encoder, options, expected, ray_config, progress):
    """The builder process's part of `build_or_load_cache`."""
    while True:
        ledger = usable_ledger(cache_dir, expected)
        if ledger is not None and ledger.complete:
            # the builder process checks the sources (re-hashing files whose mtime moved);
            # the others would only read the whole corpus again, one after another
            verify_source_files(cache_dir, ledger, source, write=True)
            return TokenCache(cache_dir, ledger)
        held = lease.Lease.acquire(cache_dir)
        if held is None:
            cache = _wait_for_builder(cache_dir, expected)
            if cache is not None:
                return cache
            continue  # the lease was released or went stale: try to take the build over
        try:
            with held:
                return _build(
                    cache_dir, source, encoder, options, expected, held, ray_config, progress
                )
        except lease.LeaseLost as e:
            logger.warning("%s; waiting for it to finish the build", e)


def _build(cache_dir, source, encoder, options, expected, held, ray_config, progress):
    """Build (or finish) the cache while holding its lease `held`."""
    ledger = read_ledger(cache_dir)  # again: another builder may have finished meanwhile
    if is_replaceable(ledger, expected):
        logger.info(
            "The tokenized cache at %s is an unfinished build, with no finished shards, for "
            "other settings (%s); starting it over for this config",
            cache_dir,
            "; ".join(mismatches(ledger, expected)) or f"format version {ledger.version}",
        )
        ledger = None
    if ledger is not None:
        check_compatible(cache_dir, ledger, expected)
        verify_source_files(cache_dir, ledger, source, write=True)
        if ledger.complete:
            return TokenCache(cache_dir, ledger)
        logger.info(
            "Resuming the cache build at %s: %d of %d shards are already finished",
            cache_dir,
            len(ledger.finished),
            len(ledger.shards),
        )
    else:
        ledger = dataclasses.replace(expected, finished={})
        write_ledger(cache_dir, ledger)

    pending = [i for i, name in enumerate(ledger.shards) if name not in ledger.finished]
    logger.info(
        "Building the tokenized cache at %s: %s, tokenizer %s, %d shards to build (%s backend)",
        cache_dir,
        expected.source,
        expected.tokenizer,
        len(pending),
        options.backend,
    )
    bar = BuildProgress(cache_dir, ledger, enabled=progress)
    record = functools.partial(_record, cache_dir, ledger, bar, held, source)
    try:
        if options.backend == "local":
            _build_local(cache_dir, source, encoder, options, pending, bar, record)
        else:
            _build_ray(cache_dir, source, encoder, options, pending, bar, record, ray_config)
    finally:
        bar.close()
    held.check()
    ledger.complete = True
    write_ledger(cache_dir, ledger)
    skipped = sum(s.skipped_lines for s in ledger.finished.values())
    logger.info(
        "Cache at %s is complete: %d documents, %d tokens%s",
        cache_dir,
        ledger.num_docs,
        ledger.num_tokens,
        f", {skipped} bad lines skipped" if skipped else "",
    )
    return TokenCache(cache_dir, ledger)


def _is_builder_process() -> bool:
    import jax

    return jax.process_index() == 0


WAIT_POLL_S = 5.0
"""How often (at most) a waiting process checks whether the cache it waits for is finished."""


def _poll_intervals():
    """Seconds to sleep between checks: short at first (a small build is done in a second),
    growing to `WAIT_POLL_S`."""
    wait = 0.1
    while True:
        yield min(wait, WAIT_POLL_S)
        wait *= 1.5


def _finished_cache(cache_dir: str, expected: CacheLedger) -> TokenCache | None:
    # (an empty failed build for other settings is what the builder is about to replace)
    ledger = usable_ledger(cache_dir, expected)
    return TokenCache(cache_dir, ledger) if ledger is not None and ledger.complete else None


def _wait_for_cache(cache_dir: str, expected: CacheLedger) -> TokenCache:
    """A multi-host run's process other than 0: wait for process 0 to build the cache, or
    raise `CacheBuildFailed` with process 0's error if its build fails."""
    logger.info("Waiting for process 0 to build the cache at %s", cache_dir)
    pauses = _poll_intervals()
    while (cache := _finished_cache(cache_dir, expected)) is None:
        failure = _build_failure(cache_dir)
        if failure is not None:
            raise CacheBuildFailed(
                f"process 0 could not build the cache at {cache_dir} that this process waited "
                f"for: {failure}"
            )
        time.sleep(next(pauses))
    return cache


class CacheBuildFailed(RuntimeError):
    """Process 0's build of a cache the other processes of a multi-host run wait for failed."""


# Keys in jax's coordination service (it runs in process 0, for the run's lifetime): process 0
# sets `_FAILED + cache_dir` to its error when the build fails; each waiting process answers
# under `_SEEN + cache_dir/<process>` before it stops waiting.
_FAILED = "lm/cache-build-failed/"
_SEEN = "lm/cache-build-failure-seen/"
FAILURE_READ_TIMEOUT_S = 30
"""How long process 0 waits, after a failed build, for the other processes to read why (they
read it from the coordination service in process 0, which goes away with it)."""


def _publish_build_failure(cache_dir: str, error: BaseException) -> None:
    """Tell the processes waiting for `cache_dir` that process 0's build failed, and why; then
    wait (at most `FAILURE_READ_TIMEOUT_S`) until each has read it. Without this they waited
    forever, and process 0 sat in jax's shutdown barrier until it aborted."""
    from lm.distributed.init import coordination_client

    client = coordination_client("a multi-host cache build")
    if client is None:
        return
    import jax

    why = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, KeyboardInterrupt):
        why = "process 0 was interrupted (Ctrl-C)"
    try:
        client.key_value_set(_FAILED + cache_dir, why[:2000])
        for process in range(1, jax.process_count()):
            client.blocking_key_value_get(
                f"{_SEEN}{cache_dir}/{process}", FAILURE_READ_TIMEOUT_S * 1000
            )
    except Exception as e:  # noqa: BLE001 - the build's own error is the one to report
        logger.warning("Could not tell the other processes that the cache build failed: %s", e)


def _build_failure(cache_dir: str) -> str | None:
    """Process 0's error, if its build of `cache_dir` failed (and say it was seen); None while
    it builds."""
    from lm.distributed.init import coordination_client

    client = coordination_client("a multi-host cache build")
    if client is None:
        return None
    import jax

    try:
        why = client.key_value_try_get(_FAILED + cache_dir)
    except Exception as e:  # noqa: BLE001 - jax's runtime error for "no such key"
        if "NOT_FOUND" in str(e):
            return None
        raise CacheBuildFailed(
            f"lost contact with process 0 while it built the cache at {cache_dir}: "
            f"{' '.join(str(e).split())[:300]}"
        ) from None
    client.key_value_set(f"{_SEEN}{cache_dir}/{jax.process_index()}", "1")
    return why


def _wait_for_builder(cache_dir: str, expected: CacheLedger) -> TokenCache | None:
    """Wait while another process holds the build lease: the finished cache, or None once the
    lease is released unfinished or goes stale (then the caller takes the build over)."""
    watch = lease.Watch()
    owner = None
    pauses = _poll_intervals()
    while True:
        cache = _finished_cache(cache_dir, expected)
        if cache is not None:
            return cache
        state = lease.read(cache_dir)
        if state is None:
            cache = _finished_cache(cache_dir, expected)  # finished just before it let go?
            if cache is None and owner is not None:
                logger.info("%s stopped building %s without finishing it", owner, cache_dir)
            return cache
        if state.owner != owner:
            owner = state.owner
            logger.info("Waiting for %s to finish building %s", owner, cache_dir)
        why = watch.stale(state)
        if why is not None:
            if lease.break_stale(cache_dir, state):
                logger.warning(
                    "The build lease of %s is stale (%s); taking the build over", cache_dir, why
                )
            return None
        time.sleep(next(pauses))


PROGRESS_POLL_S = 2.0
"""How often a Ray build asks its workers how far they got in the shards they are building."""


def _record(
    cache_dir, ledger: CacheLedger, bar: BuildProgress, held, source: ShardedSource, index, stats
) -> None:
    held.check()  # never write the ledger of a build another process took over
    # a shard built from another file than the one listed here (a Ray worker that resolved a
    # path elsewhere, or a file replaced meanwhile) must never enter the ledger
    source.check_read(index, stats.source_file)
    ledger.finished[ledger.shards[index]] = stats
    write_ledger(cache_dir, ledger)
    bar.shard_done(index, stats)


@contextlib.contextmanager
def _ctrl_c_between_batches():
    """Yield `check()`, which raises `KeyboardInterrupt` once Ctrl-C has been pressed.

    Python raises `KeyboardInterrupt` wherever the main thread is when SIGINT arrives, and
    during a build that is often inside JAX's gc callback (`_xla_gc_callback`), where Python
    prints the exception and drops it: the build ran on to the end and exited 0. Here SIGINT
    only sets a flag, which the build checks between tokenizer batches and between shards;
    a second Ctrl-C raises at once (for a build stuck reading a file). Installed only in the
    main thread, and only over Python's own handler (one a caller set stays in charge); the
    previous handler is restored on exit.
    """
    pressed = threading.Event()

    def check() -> None:
        if pressed.is_set():
            raise KeyboardInterrupt

    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield check
        return

    def on_sigint(signum, frame) -> None:
        if pressed.is_set():
            raise KeyboardInterrupt
        pressed.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


def _build_local(cache_dir, source, encoder, options, pending, bar, record) -> None:
    with _ctrl_c_between_batches() as check_interrupt:
        for index in pending:
            check_interrupt()

            def on_progress(num_docs: int, num_tokens: int, index=index) -> None:
                bar.batch_done(index, num_docs, num_tokens)
                check_interrupt()

            stats = build_shard(cache_dir, index, source, encoder, options.batch_size, on_progress)
            record(index, stats)


def _build_shard_reporting(cache_dir, index, source, encoder, batch_size, counts) -> ShardStats:
    """`build_shard` in a Ray task, telling the `counts` actor about each tokenizer batch."""

    def on_progress(num_docs: int, num_tokens: int) -> None:
        counts.add.remote(index, num_docs, num_tokens)  # not waited for

    return build_shard(cache_dir, index, source, encoder, batch_size, on_progress)


def _build_ray(cache_dir, source, encoder, options, pending, bar, record, ray_config) -> None:
    try:
        import ray
    except ImportError:
        # lm depends on Ray, but an image with its own Python packages (the GPU machines') may
        # run lm without it
        raise ValueError(
            "cache_options.backend is 'ray' but Ray is not installed in this Python "
            f"({sys.executable}); install it (pip install 'ray[default]') or build the cache "
            "in-process with cache_options.backend: local"
        ) from None

    from lm.distributed.ray import RayConfig, no_cluster_message

    if cache_dir.startswith("memory://"):
        raise ValueError(
            f"cache_dir {cache_dir!r} is in this process's memory, which Ray workers cannot "
            "write; use cache_options.backend: local"
        )
    in_memory = [name for name in source.shard_names() if name.startswith("memory://")]
    if in_memory:
        more = f" (and {len(in_memory) - 1} more)" if len(in_memory) > 1 else ""
        raise ValueError(
            f"the source file {in_memory[0]!r}{more} is in this process's memory, which Ray "
            "workers cannot read; use cache_options.backend: local"
        )
    if not pending:
        return
    ray_config = ray_config if ray_config is not None else RayConfig()
    if not ray_config.initialize():
        raise ValueError(no_cluster_message())
    cache_dir = kvstore_url(cache_dir) if "://" not in cache_dir else cache_dir
    # A worker resolves a relative path in its own working directory (on a cluster joined
    # through ray.address, not this one): it would read other files, or none, silently.
    names = source.shard_names()
    source, encoder = source.for_workers(), encoder.for_workers()
    num_workers = options.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    # Each task holds one Ray CPU, so its tokenizer gets one thread (tokenizers' rayon pool
    # would otherwise start one thread per core in every worker).
    task = ray.remote(
        num_cpus=1, max_retries=0, runtime_env={"env_vars": {"RAYON_NUM_THREADS": "1"}}
    )(_build_shard_reporting)
    counts = ray.remote(num_cpus=0)(ShardCounts).remote()
    in_flight: dict[Any, int] = {}
    queue = list(pending)
    last_poll = time.monotonic()
    try:
        while queue or in_flight:
            while queue and len(in_flight) < num_workers:
                index = queue.pop(0)
                ref = task.remote(cache_dir, index, source, encoder, options.batch_size, counts)
                in_flight[ref] = index
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROGRESS_POLL_S)
            for ref in done:
                index = in_flight.pop(ref)
                try:
                    stats = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    if isinstance(e.cause, ValueError):
                        raise ValueError(str(e.cause)) from e
                    raise _worker_failure(index, names[index], e.cause or e) from e
                except ray.exceptions.RayError as e:  # the worker died (OOM-killed, crashed)
                    raise _worker_failure(index, names[index], e) from e
                record(index, stats)
            if in_flight and time.monotonic() - last_poll >= PROGRESS_POLL_S:
                last_poll = time.monotonic()
                try:
                    reported = ray.get(counts.get.remote(), timeout=PROGRESS_POLL_S)
                except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                    continue  # progress is for show: the shards' own results decide
                bar.in_shard({i: reported[i] for i in in_flight.values() if i in reported})
    finally:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        ray.kill(counts)


def _worker_failure(index: int, name: str, cause: BaseException) -> ValueError:
    """A Ray worker's failure other than a bad input (a `ValueError`, passed on as it is): one
    message naming the shard's file, without the worker's traceback (the cause chain has it)."""
    text = str(cause)
    if type(cause).__module__.startswith("ray"):  # Ray's own errors run to many lines
        text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    shown = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    return ValueError(
        f"building cache shard {index} from {name} failed on a Ray worker ({shown}); nothing "
        "of that shard was recorded, and a rerun resumes the build from the finished shards"
    )
