"""`DataLoader`: global batches as sharded `jax.Array`s, prefetched in the background.

Step `s` of a loader reads examples `[offset(s), offset(s) + size(s))` of the dataset,
where size and offset come from the batch schedule (`lm.schedule.BatchSchedule`), so
`iter_from_step(s)` resumes at the exact example an uninterrupted run would read, also
across batch-size changes and for mixtures.

A batch is the dataset's example pytree with a leading batch dimension on every leaf:
a NamedArray leaf gets `Axis(batch_axis_name, size)` in front of its axes, a plain array
leaf a leading dim. Each leaf is one global `jax.Array` on `mesh`, sharded per
`axis_mapping` (e.g. `{"batch": ("replica", "data")}`; other named axes follow the
mapping too). Each process reads only the rows its own devices hold.

A background thread builds up to `prefetch_size` batches ahead. `last_wait_time` is the
time the consumer last spent waiting for a batch (log it as `throughput/loading_time`).
A finite dataset ends at the last full batch.
"""

from __future__ import annotations

import atexit
import logging
import math
import queue
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import jax
import numpy as np
from haliax import Axis, NamedArray
from haliax.partitioning import pspec_for_axis
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm.config.errors import is_int
from lm.data.dataset import AsyncDataset
from lm.schedule import BatchSchedule

logger = logging.getLogger(__name__)

Ex = TypeVar("Ex")
ResourceMapping = Mapping[str, str | Sequence[str]]

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _is_named(x: Any) -> bool:
    return isinstance(x, NamedArray)


class DataLoader(Generic[Ex]):
    """Batches of `dataset` along a named batch axis (see the module docstring).

    Args:
        dataset: the examples.
        batch: the batch axis (its size is the batch size), a constant batch size, or a
            `BatchSchedule` (size per step).
        mesh: the device mesh the batches live on.
        axis_mapping: logical axis name -> mesh axes, e.g. the trainer's compute mapping.
        batch_axis_name: the name of the batch axis (taken from `batch` if it is an Axis).
        prefetch_size: batches built ahead of the consumer.
        allow_nondivisible: let a batch size that the batch-parallel mesh size does not
            divide through, replicated instead of sharded along the batch (with a warning).
    """

    def __init__(
        self,
        dataset: AsyncDataset[Ex],
        batch: Axis | BatchSchedule | int,
        *,
        mesh: Mesh,
        axis_mapping: ResourceMapping,
        batch_axis_name: str = "batch",
        prefetch_size: int = 4,
        allow_nondivisible: bool = False,
    ):
        if isinstance(batch, Axis):
            batch_axis_name = batch.name
            schedule = BatchSchedule(batch.size)
        elif isinstance(batch, BatchSchedule):
            schedule = batch
        elif is_int(batch):
            if batch <= 0:
                raise ValueError(f"batch size must be positive, got {batch}")
            schedule = BatchSchedule(batch)
        else:
            raise TypeError(f"batch must be an Axis, an int or a BatchSchedule, got {batch!r}")
        if prefetch_size < 1:
            raise ValueError(f"prefetch_size must be >= 1, got {prefetch_size}")
        if not isinstance(dataset, AsyncDataset):
            hint = (
                "wrap a list of examples in lm.data.ListDataset"
                if isinstance(dataset, Sequence)
                else "wrap the examples in an lm.data dataset (ListDataset for a list), or "
                "pass batches you make yourself straight to Trainer.train"
            )
            raise TypeError(
                f"DataLoader expects an lm.data.AsyncDataset of single examples, got "
                f"{type(dataset).__name__}: {hint}"
            )
        self.dataset = dataset
        self.schedule = schedule
        self.mesh = mesh
        self.axis_mapping = dict(axis_mapping)
        self.batch_axis_name = batch_axis_name
        self.prefetch_size = prefetch_size
        self.allow_nondivisible = allow_nondivisible
        self.last_wait_time = 0.0
        """Seconds the consumer waited for the most recent batch."""

        self._batch_mesh_axes = self._mesh_axes_for_batch()
        self.num_batch_shards = math.prod(mesh.shape[a] for a in self._batch_mesh_axes)
        self._replicate_batch: set[int] = set()
        for phase in schedule.phases():
            if phase.value % self.num_batch_shards:
                msg = (
                    f"batch size {phase.value} (from step {phase.start}) is not divisible by the "
                    f"batch-parallel size {self.num_batch_shards} (mesh axes "
                    f"{self._batch_mesh_axes} for axis {batch_axis_name!r})"
                )
                if not allow_nondivisible:
                    raise ValueError(
                        msg + "; change the batch size or set allow_nondivisible_batch_size: true"
                    )
                logger.warning("%s: batches of that size are replicated, not sharded", msg)
                self._replicate_batch.add(phase.value)

    def _mesh_axes_for_batch(self) -> tuple[str, ...]:
        mapped = self.axis_mapping.get(self.batch_axis_name)
        if mapped is None:
            return ()
        axes = (mapped,) if isinstance(mapped, str) else tuple(mapped)
        for a in axes:
            if a not in self.mesh.shape:
                raise ValueError(
                    f"axis_mapping maps {self.batch_axis_name!r} to mesh axis {a!r}, but the mesh "
                    f"has axes {tuple(self.mesh.shape)}"
                )
        return axes

    def batch_axis_at_step(self, step: int) -> Axis:
        return Axis(self.batch_axis_name, self.schedule.batch_size_at_step(step))

    def __iter__(self) -> Iterator[Ex]:
        return self.iter_from_step(0)

    def iter_from_step(self, step: int) -> Iterator[Ex]:
        """Batches of steps `step, step + 1, ...` (a new background producer)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return _LoaderIterator(self, step)

    # -------------------------------------------------------------- batch assembly

    def _batch_pspec(self, size: int) -> tuple[str, ...] | None:
        if size in self._replicate_batch or not self._batch_mesh_axes:
            return None
        return self._batch_mesh_axes

    def local_rows(self, size: int) -> list[int]:
        """The rows (within a batch of `size`) held by this process's devices."""
        spec = self._batch_pspec(size)
        sharding = NamedSharding(self.mesh, PartitionSpec(spec))
        rows: set[int] = set()
        for index in sharding.addressable_devices_indices_map((size,)).values():
            rows.update(range(*index[0].indices(size)))
        return sorted(rows)

    def make_batch(self, step: int) -> Ex | None:
        """Batch `step`, or None when a finite dataset cannot fill it."""
        size = self.schedule.batch_size_at_step(step)
        offset = self.schedule.global_data_offset_by_step(step)
        if self.dataset.is_finite() and offset + size > len(self.dataset):
            return None
        rows = self.local_rows(size)
        indices = [offset + r for r in rows]
        examples = self.dataset.get_batch(indices)
        if not isinstance(examples, Sequence) or len(examples) != len(indices):
            got = (
                f"{len(examples)} examples"
                if isinstance(examples, Sequence)
                else type(examples).__name__
            )
            raise ValueError(
                f"{type(self.dataset).__name__}.get_batch({len(indices)} indices, from "
                f"{indices[0]}) returned {got}: it must return a list with one example per "
                "index, in order"
            )
        return self._stack(examples, rows, size, indices)

    def _stack(self, examples: list, rows: list[int], size: int, indices: list[int]):
        leaves0, treedef = jax.tree_util.tree_flatten(examples[0], is_leaf=_is_named)
        columns = [[leaf] for leaf in leaves0]
        for ex, index in zip(examples[1:], indices[1:], strict=True):
            leaves, td = jax.tree_util.tree_flatten(ex, is_leaf=_is_named)
            if td != treedef:
                raise ValueError(
                    f"{type(self.dataset).__name__} example {index} differs in structure from "
                    f"example {indices[0]}: {td} vs {treedef}"
                )
            for col, leaf in zip(columns, leaves, strict=True):
                col.append(leaf)
        position = {row: i for i, row in enumerate(rows)}
        batch_spec = self._batch_pspec(size)
        out = []
        for column, col in enumerate(columns):
            first = col[0]
            values = [x.array for x in col] if _is_named(first) else col
            local = self._stacked(values, column, examples[0], indices)
            if _is_named(first):
                axes = (Axis(self.batch_axis_name, size), *first.axes)
                spec = pspec_for_axis(axes, self.axis_mapping)
                spec = PartitionSpec(batch_spec, *spec[1:])
                out.append(NamedArray(self._global(local, size, spec, position), axes))
            else:
                spec = PartitionSpec(batch_spec, *([None] * (local.ndim - 1)))
                out.append(self._global(local, size, spec, position))
        return jax.tree_util.tree_unflatten(treedef, out)

    def _stacked(self, values: list, column: int, first: Any, indices: list[int]) -> np.ndarray:
        """`values` (one field of each example) stacked; examples whose field differs in shape
        are an error naming the dataset, the example and the field (found only when numpy's
        stack fails, off the path of every batch)."""
        try:
            return np.stack([np.asarray(v) for v in values])
        except ValueError:
            shapes = [np.shape(v) for v in values]
            odd = [(i, s) for i, s in zip(indices, shapes, strict=True) if s != shapes[0]]
            if not odd:
                raise
            path, _ = jax.tree_util.tree_flatten_with_path(first, is_leaf=_is_named)[0][column]
            name = jax.tree_util.keystr(path) or "a value"
            index, shape = odd[0]
            raise ValueError(
                f"{type(self.dataset).__name__} example {index} has {name} of shape {shape}, "
                f"example {indices[0]} of shape {shapes[0]}: the examples of a batch are "
                "stacked, so each field needs one shape (pad or truncate them)"
            ) from None

    def _global(self, local: np.ndarray, size: int, spec, position: dict[int, int]) -> jax.Array:
        sharding = NamedSharding(self.mesh, spec)

        def shard(index: tuple[slice, ...]) -> np.ndarray:
            picked = [position[r] for r in range(*index[0].indices(size))]
            return local[picked][(slice(None), *index[1:])]

        return jax.make_array_from_callback((size, *local.shape[1:]), sharding, shard)


# Every producer whose thread may still be running: the thread holds its producer (through its
# target) until the thread's very end, so a weak set drops a producer only once that is over.
_LIVE: weakref.WeakSet[_Producer] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False


def _stop_all_producers() -> None:
    # A daemon thread killed inside XLA or TensorStore at interpreter exit aborts the
    # process ("terminate called without an active exception"), and so does one that frees
    # its last queued batch (jax arrays) while the runtime is being torn down: stop and join
    # every producer thread still alive, including ones that have just returned.
    with _LIVE_LOCK:
        producers = list(_LIVE)
    for p in producers:
        p.stop()


class _Producer:
    """The background thread filling the queue. It holds no reference to the iterator,
    so an abandoned iterator is collected and its `__del__` stops the thread."""

    def __init__(self, loader: DataLoader, step: int):
        global _ATEXIT_REGISTERED
        self.loader = loader
        self.queue: queue.Queue = queue.Queue(maxsize=loader.prefetch_size)
        self.stop_event = threading.Event()
        with _LIVE_LOCK:
            if not _ATEXIT_REGISTERED:
                atexit.register(_stop_all_producers)
                _ATEXIT_REGISTERED = True
            _LIVE.add(self)
        self.thread = threading.Thread(
            target=self._run, args=(step,), name="lm-data-loader", daemon=True
        )
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop_event.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, step: int) -> None:
        try:
            while not self.stop_event.is_set():
                batch = self.loader.make_batch(step)
                if batch is None:
                    logger.info("DataLoader: the dataset ends before step %d", step)
                    self._put(_END)
                    return
                if not self._put(batch):
                    return
                step += 1
        except BaseException as e:  # handed to the consumer, raised there
            self._put(_Failure(e))

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)


class _LoaderIterator(Iterator):
    def __init__(self, loader: DataLoader, step: int):
        self.loader = loader
        self.step = step
        self._producer = _Producer(loader, step)
        self._done = False

    def __next__(self):
        if self._done:
            raise StopIteration
        start = time.perf_counter()
        item = self._producer.queue.get()
        self.loader.last_wait_time = time.perf_counter() - start
        if item is _END or isinstance(item, _Failure):
            self._done = True
            self.close()
            if item is _END:
                raise StopIteration
            raise item.error
        self.step += 1
        return item

    def close(self) -> None:
        """Stop the background producer and wait for its thread to end (collecting the
        iterator only signals it to stop). Also `with loader.iter_from_step(s) as it:`."""
        self._producer.stop()

    def __enter__(self) -> _LoaderIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self._producer.stop_event.set()
