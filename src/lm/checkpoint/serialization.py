"""Pytrees to TensorStore and back: one zarr3 array per leaf.

A checkpoint directory holds

    step-N/
      manifest.json     leaf table: name -> kind, shape, dtype, named axes, scalar value
      metadata.json     {step, timestamp, is_temporary, format, ...}; written last
      <leaf name>/      one zarr3 array per array leaf, e.g. model/layers/0/weight/
        zarr.json
        c/0/0 ...       one chunk per saved shard (split further when above 8 MiB)

Why zarr3 rather than OCDBT: restore speed and multi-process writes. Each chunk is a
plain object at a computable key, so a restore issues one read per shard with no
index to consult first, and each process writes the shards it owns without any
coordination beyond the final barrier (OCDBT needs a coordinator or per-process
databases merged afterwards). Every chunk carries a crc32c checksum and reads refuse
missing chunks (`fill_missing_data_reads: false`), so a truncated, corrupted or missing
chunk is an error rather than silent zeros. The price is more objects for models with
many small leaves, which matters for GCS listing cost, not for restore throughput.

Commit protocol: arrays and the manifest are written, every process waits at a
barrier, then process 0 writes `metadata.json`. A directory without it is torn and is
never loaded. This needs no rename, which matters on GCS where there is no atomic
directory rename.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import haliax as hax
import jax
import numpy as np
import tensorstore as ts

from lm.checkpoint.storage import (
    MANIFEST_FILE,
    METADATA_FILE,
    delete_tree,
    exists,
    kvstore_url,
    move_aside,
    read_status,
    ts_context,
    write_json,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT = "lm-zarr3"
FORMAT_VERSION = 1
# Chunks above this are split (along divisors of the shard shape) so big leaves are
# written, checksummed and decoded by several threads at once: on the 2-core VM 4-8 MiB
# chunks restored 1.5-2x faster than 64 MiB ones (see docs/benchmarks.md).
_TARGET_CHUNK_BYTES = 8 << 20
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
_RESERVED_NAMES = (METADATA_FILE, MANIFEST_FILE)


class CheckpointCorruptError(RuntimeError):
    """A checkpoint exists but cannot be read (torn, truncated, corrupted)."""


class CheckpointLoadError(RuntimeError):
    """Checkpoints exist under a path but none of them could be loaded."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (a full disk, a store that refused a write): the
    checkpoints committed before it are unaffected."""


# ---------------------------------------------------------------------------
# Leaf names


def _key_str(key: Any) -> str:
    if isinstance(key, jax.tree_util.GetAttrKey):
        raw = key.name
    elif isinstance(key, jax.tree_util.DictKey):
        raw = str(key.key)
    elif isinstance(key, jax.tree_util.SequenceKey):
        raw = str(key.idx)
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
        raw = str(key.key)
    else:
        raw = str(key)
    # Percent-encode anything that is not safe in an object key, including "/" so a
    # dict key "a/b" can never collide with the nested path a -> b.
    text = urllib.parse.quote(raw, safe="")
    if text in ("", ".", ".."):
        text = text.replace(".", "%2E") or "%00"
    return text


def leaf_name(path: Sequence[Any]) -> str:
    """The stable, readable name of a leaf from its key path, e.g. `model/layers/0/weight`."""
    return "/".join(_key_str(k) for k in path) or "root"


def _is_leaf(x: Any) -> bool:
    return x is None or isinstance(x, hax.NamedArray)


def named_leaves(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Flatten `tree` into (name, leaf) pairs; NamedArrays and Nones are leaves."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_leaf)
    out = [(leaf_name(path), leaf) for path, leaf in flat]
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"checkpoint leaf names are not unique: {dupes}")
    for n in names:
        if n in _RESERVED_NAMES:
            raise ValueError(f"a top-level pytree key may not be named {n!r} in a checkpoint")
    return out, treedef


# ---------------------------------------------------------------------------
# Leaf kinds


def _is_key_array(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _array_of(leaf: Any) -> Any:
    return leaf.array if isinstance(leaf, hax.NamedArray) else leaf


def _is_array_like(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


def _is_scalar(x: Any) -> bool:
    return isinstance(x, bool | int | float)


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def _chunk_shape(shard_shape: Sequence[int], itemsize: int) -> list[int]:
    """The shard shape, divided (leading dims first, by prime factors) until a chunk is
    under the target size. Leading dims first keeps each chunk a contiguous row block."""
    chunk = [max(1, int(d)) for d in shard_shape]
    for i in range(len(chunk)):
        while int(np.prod(chunk)) * itemsize > _TARGET_CHUNK_BYTES:
            p = _smallest_factor(chunk[i])
            if p is None:
                break
            chunk[i] //= p
    return chunk


def _smallest_factor(n: int) -> int | None:
    for p in range(2, int(n**0.5) + 1):
        if n % p == 0:
            return p
    return n if n > 1 else None


def _array_spec(url: str, shape: Sequence[int], dtype: np.dtype, chunk: Sequence[int]) -> dict:
    fill: Any = False if dtype == np.bool_ else 0
    return {
        "driver": "zarr3",
        "kvstore": url,
        "metadata": {
            "shape": list(shape),
            "data_type": dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
            "codecs": [
                {"name": "bytes", "configuration": {"endian": "little"}},
                {"name": "crc32c"},
            ],
            "fill_value": fill,
        },
        # Chunks equal to the fill value are still written, so a missing chunk is
        # always an error on read, never "all zeros".
        "store_data_equal_to_fill_value": True,
    }


# ---------------------------------------------------------------------------
# Saving


def _barrier(name: str, timeout: datetime.timedelta) -> None:
    """Wait until every process reaches `name`; a no-op on one process.

    Uses the distributed client directly (not a device collective) so it can run on
    the background commit thread.
    """
    from lm.distributed.init import coordination_client

    client = coordination_client("multi-process checkpointing")
    if client is None:
        return
    client.wait_at_barrier(name, int(timeout.total_seconds() * 1000))


@dataclasses.dataclass
class _PendingCommit:
    path: str
    step: int
    futures: list[Any]
    manifest: dict[str, Any]
    metadata: dict[str, Any]
    commit_callback: Callable[[], None] | None
    barrier_prefix: str


class AsyncCheckpointManager:
    """Runs checkpoint saves: the host copy in the caller, the commit in the background.

    One save is in flight at a time: a new save first waits for the previous commit
    (bounding host memory to one copy of the state) and re-raises its error, if any.
    The commit thread is not a daemon, so an interpreter exit waits for it.
    """

    def __init__(self, timeout: datetime.timedelta = DEFAULT_TIMEOUT):
        self.timeout = timeout
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._error_path = ""
        self._count = 0

    def save(
        self,
        tree: Any,
        step: int,
        checkpoint_path: str,
        *,
        is_temporary: bool = False,
        commit_callback: Callable[[], None] | None = None,
        extra_metadata: dict[str, Any] | None = None,
    ) -> None:
        """Start saving `tree` to `checkpoint_path`; see `save_checkpoint`."""
        self.wait_until_finished()
        count = self._count
        self._count += 1
        prefix = f"lm_checkpoint_{count}"
        is_primary = jax.process_index() == 0
        leaves, _ = named_leaves(tree)

        # A directory left by an interrupted save (or an older checkpoint at the same
        # path) is cleared first, commit marker first, so stale chunks never mix in.
        if is_primary and exists(checkpoint_path):
            _clear_for_save(checkpoint_path, step)
        _barrier(prefix + "_clean", self.timeout)

        base_url = kvstore_url(checkpoint_path)
        records: dict[str, Any] = {}
        futures: list[Any] = []
        copies: list[Any] = []
        writes: list[tuple[str, Any, Any, bool]] = []  # (name, store, data, can_reference)
        for name, leaf in leaves:
            records[name] = self._plan_leaf(name, leaf, base_url, is_primary, futures, writes)

        # Start every device->host transfer before waiting on any of them.
        for _, _, data, _ in writes:
            if isinstance(data, jax.Array):
                data.copy_to_host_async()
        for name, store, data, can_reference in writes:
            host = np.asarray(data)
            try:
                write = store.write(host, can_reference_source_data_indefinitely=can_reference)
            except Exception as e:
                raise RuntimeError(f"writing checkpoint leaf {name!r}: {e}") from e
            copies.append(write.copy)
            futures.append(write.commit)
        for c in copies:
            c.result()

        metadata = {
            "step": int(step),
            "timestamp": datetime.datetime.now().isoformat(),
            "is_temporary": bool(is_temporary),
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "num_leaves": len(records),
            "process_count": jax.process_count(),
            **(extra_metadata or {}),
        }
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "leaves": records}
        pending = _PendingCommit(
            checkpoint_path, int(step), futures, manifest, metadata, commit_callback, prefix
        )
        self._error = None
        self._thread = threading.Thread(
            target=self._commit, args=(pending,), name=f"checkpoint-commit-{step}"
        )
        self._thread.start()

    def _plan_leaf(
        self,
        name: str,
        leaf: Any,
        base_url: str,
        is_primary: bool,
        futures: list[Any],
        writes: list[tuple[str, Any, Any, bool]],
    ) -> dict[str, Any]:
        if leaf is None or (isinstance(leaf, hax.NamedArray) and leaf.array is None):
            return {"kind": "none"}
        if _is_scalar(leaf):
            return {"kind": "scalar", "type": type(leaf).__name__, "value": leaf}
        axes = None
        if isinstance(leaf, hax.NamedArray):
            axes = [a.name for a in leaf.axes]
        arr = _array_of(leaf)
        if isinstance(arr, jax.core.Tracer):
            raise TypeError(f"checkpoint leaf {name!r} is a tracer: save outside of jit")
        if not isinstance(arr, jax.Array | np.ndarray | np.generic):
            logger.debug("Not saving leaf %s of type %s", name, type(leaf).__name__)
            return {"kind": "skipped", "type": type(leaf).__name__}
        record: dict[str, Any] = {"kind": "array", "axes": axes, "key_impl": None}
        if _is_key_array(arr):
            record["key_impl"] = str(jax.random.key_impl(arr))
            arr = jax.random.key_data(arr)
        dtype = np.dtype(arr.dtype)
        shape = list(arr.shape)
        record.update(shape=shape, dtype=_dtype_name(dtype))

        is_global = isinstance(arr, jax.Array) and not (
            jax.process_count() > 1 and arr.is_fully_addressable
        )
        if isinstance(arr, jax.Array):
            shard_shape = arr.sharding.shard_shape(arr.shape)
        else:
            shard_shape = arr.shape
        spec = _array_spec(
            base_url + name + "/", shape, dtype, _chunk_shape(shard_shape, dtype.itemsize)
        )
        try:
            if is_primary:
                futures.append(ts.open(spec, create=True, open=True, context=ts_context()))
            store = ts.open(spec, open=True, assume_metadata=True, context=ts_context()).result()
        except Exception as e:
            raise RuntimeError(f"opening checkpoint array for leaf {name!r}: {e}") from e
        if arr.size == 0:
            return record
        if is_global:
            for shard in arr.addressable_shards:
                if shard.replica_id == 0:
                    writes.append((name, store[shard.index], shard.data, True))
        elif is_primary:
            # Host arrays (and fully local arrays on many processes) are assumed equal
            # everywhere; process 0 writes them.
            writes.append((name, store, arr, isinstance(arr, jax.Array)))
        return record

    def _commit(self, pending: _PendingCommit) -> None:
        try:
            for f in pending.futures:
                f.result(timeout=self.timeout.total_seconds())
            if jax.process_index() == 0:
                write_json(pending.path, MANIFEST_FILE, pending.manifest)
            _barrier(pending.barrier_prefix + "_written", self.timeout)
            if jax.process_index() == 0:
                write_json(pending.path, METADATA_FILE, pending.metadata)
            _barrier(pending.barrier_prefix + "_committed", self.timeout)
            logger.info("Committed checkpoint %s (step %d)", pending.path, pending.step)
            if pending.commit_callback is not None:
                pending.commit_callback()
        except BaseException as e:  # re-raised in the main thread by check_for_errors
            # the full traceback goes to the log file; the console gets the error once, when
            # check_for_errors raises it in the main thread
            logger.debug("Checkpoint save to %s failed", pending.path, exc_info=True)
            self._error = e
            self._error_path = pending.path

    @property
    def is_saving(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check_for_errors(self) -> None:
        """Raise the error of a finished background commit, if it failed."""
        if self._error is not None:
            error, self._error = self._error, None
            path = self._error_path
            raise CheckpointSaveError(
                f"checkpoint save to {path} failed: {str(error).strip() or type(error).__name__}. "
                "The checkpoints committed before it are unaffected; a resumed run skips the "
                f"partial {path.rstrip('/').rsplit('/', 1)[-1]}"
            ) from error

    def wait_until_finished(self) -> None:
        """Block until the in-flight save (if any) has committed; raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.check_for_errors()


_default_manager: AsyncCheckpointManager | None = None


def default_manager() -> AsyncCheckpointManager:
    """The manager `save_checkpoint` uses when none is passed (created on first use)."""
    global _default_manager
    if _default_manager is None:
        _default_manager = AsyncCheckpointManager()
    return _default_manager


def wait_until_finished() -> None:
    """Wait for saves started through the default manager."""
    if _default_manager is not None:
        _default_manager.wait_until_finished()


def _clear_for_save(checkpoint_path: str, step: int) -> None:
    """Clear the directory a save goes to. A damaged checkpoint there (committed, its
    metadata.json unreadable) is never deleted: moved aside on a local disk, for the user to
    repair or delete; a remote store cannot rename it, so it is replaced, loudly."""
    status = read_status(checkpoint_path, nonempty=True)
    if status is not None and status.damaged:
        moved = move_aside(checkpoint_path)
        if moved is not None:
            logger.warning(
                "Checkpoint %s is damaged (%s): moved to %s, to repair or delete by hand; step "
                "%d is saved in its place",
                checkpoint_path,
                status.problem,
                moved,
                step,
            )
            return
        logger.warning(
            "Checkpoint %s is damaged (%s) and this store cannot move it aside: step %d "
            "replaces it",
            checkpoint_path,
            status.problem,
            step,
        )
    else:
        logger.warning("Overwriting existing checkpoint directory %s", checkpoint_path)
    delete_tree(checkpoint_path)


def save_checkpoint(
    tree: Any,
    step: int,
    checkpoint_path: str,
    *,
    is_temporary: bool = False,
    commit_callback: Callable[[], None] | None = None,
    manager: AsyncCheckpointManager | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> None:
    """Save a pytree as a checkpoint directory, asynchronously.

    Every process must call this (it is collective). It returns once each process's
    shards are copied to host memory; writing to storage and the commit continue in the
    background. `manager.wait_until_finished()` (or the module-level
    `wait_until_finished()` for the default manager) waits for the commit.

    Args:
        tree: any pytree of jax arrays, NamedArrays, numpy arrays and Python scalars,
            e.g. `saveable_state(trainer_state)`. None leaves are recorded and restored
            as None; other leaf types (functions, strings) are not saved.
        step: recorded in metadata.json.
        checkpoint_path: the checkpoint directory, e.g. `checkpoints/run/step-100`; a
            local path or a `file://`, `memory://`, `gs://` or `s3://` URL.
        is_temporary: recorded in metadata.json; the Checkpointer deletes temporary
            checkpoints once a newer one commits.
        commit_callback: called on every process after metadata.json is written.
        manager: the manager to run the save on; defaults to a process-wide one.
        extra_metadata: more JSON fields for metadata.json.
    """
    manager = manager if manager is not None else default_manager()
    manager.save(
        tree,
        step,
        checkpoint_path,
        is_temporary=is_temporary,
        commit_callback=commit_callback,
        extra_metadata=extra_metadata,
    )
