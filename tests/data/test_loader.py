"""DataLoader: sharded global batches, schedules, resume, prefetch, errors."""

from __future__ import annotations

import threading
import time

import haliax as hax
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from lm.data import DataLoader, ListDataset
from lm.data.dataset import AsyncDataset
from lm.models.lm_model import LmExample
from lm.schedule import BatchSchedule, ScheduleStep

Pos = hax.Axis("position", 6)
MAPPING = {"batch": ("replica", "data")}


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()).reshape(1, 4, 2), ("replica", "data", "model"))


def _example(i: int) -> LmExample:
    tokens = np.arange(i * 10, i * 10 + Pos.size, dtype=np.int32)
    seg = np.zeros(Pos.size, dtype=np.int32)
    return LmExample(
        tokens=hax.NamedArray(tokens, (Pos,)),
        loss_mask=hax.NamedArray(np.arange(Pos.size) < Pos.size - 1, (Pos,)),
        segment_ids=hax.NamedArray(seg, (Pos,)),
    )


class Recording(AsyncDataset):
    """Examples are their own index; records which indices were requested."""

    def __init__(self, n: int | None):
        self.n = n
        self.requested: list[int] = []
        self.lock = threading.Lock()

    def is_finite(self):
        return self.n is not None

    def __len__(self):
        if self.n is None:
            raise TypeError("infinite")
        return self.n

    def get_batch(self, indices):
        with self.lock:
            self.requested.extend(indices)
        return [_example(i) for i in indices]


def _first_tokens(batch) -> list[int]:
    return (np.asarray(batch.tokens.array)[:, 0] // 10).tolist()


def test_batches_are_sharded_global_arrays(mesh):
    loader = DataLoader(Recording(64), 8, mesh=mesh, axis_mapping=MAPPING)
    it = iter(loader)
    batch = next(it)
    assert batch.tokens.axes == (hax.Axis("batch", 8), Pos)
    arr = batch.tokens.array
    assert isinstance(arr, jax.Array) and arr.shape == (8, 6)
    assert arr.sharding.spec == PartitionSpec(("replica", "data"), None)
    assert np.asarray(arr).tolist() == [_example(i).tokens.array.tolist() for i in range(8)]
    # Each data shard holds 2 rows; model-axis replicas hold the same rows.
    shard_rows = {
        d.id: np.asarray(s.data)[:, 0].tolist()
        for d, s in zip(
            [s.device for s in arr.addressable_shards], arr.addressable_shards, strict=True
        )
    }
    assert sorted(map(tuple, shard_rows.values())) == sorted(
        [(0, 10), (0, 10), (20, 30), (20, 30), (40, 50), (40, 50), (60, 70), (60, 70)]
    )
    assert batch.loss_mask.array.dtype == np.bool_
    assert _first_tokens(next(it)) == list(range(8, 16))
    it.close()


def test_iter_from_step_resumes_with_a_batch_schedule(mesh):
    schedule = BatchSchedule([ScheduleStep(0, 4), ScheduleStep(3, 8)])
    loader = DataLoader(Recording(None), schedule, mesh=mesh, axis_mapping=MAPPING)
    full = [_first_tokens(b) for _, b in zip(range(6), loader, strict=False)]
    assert full[:3] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert full[3] == list(range(12, 20)) and full[5] == list(range(28, 36))
    resumed = loader.iter_from_step(4)
    assert [_first_tokens(next(resumed)) for _ in range(2)] == full[4:]
    resumed.close()
    assert loader.batch_axis_at_step(3) == hax.Axis("batch", 8)


def test_finite_dataset_ends_at_the_last_full_batch(mesh):
    loader = DataLoader(Recording(20), 8, mesh=mesh, axis_mapping=MAPPING)
    assert [_first_tokens(b)[0] for b in loader] == [0, 8]


def test_arbitrary_pytrees_and_a_batch_axis(mesh):
    Feat = hax.Axis("feat", 4)
    items = [
        {
            "x": hax.NamedArray(np.full(4, i, np.float32), (Feat,)),
            "y": np.int32(i),
            "z": (np.ones(2) * i,),
        }
        for i in range(16)
    ]
    loader = DataLoader(
        ListDataset(items), hax.Axis("examples", 8), mesh=mesh, axis_mapping={"examples": "data"}
    )
    batch = next(iter(loader))
    assert batch["x"].axes == (hax.Axis("examples", 8), Feat)
    assert batch["x"].array.sharding.spec == PartitionSpec("data", None)
    assert np.asarray(batch["y"]).tolist() == list(range(8))
    assert batch["y"].sharding.spec == PartitionSpec("data")
    assert np.asarray(batch["z"][0]).shape == (8, 2)


def test_other_named_axes_follow_the_mapping(mesh):
    loader = DataLoader(
        Recording(16), 4, mesh=mesh, axis_mapping={"batch": "data", "position": "model"}
    )
    batch = next(iter(loader))
    assert batch.tokens.array.sharding.spec == PartitionSpec("data", "model")
    assert np.asarray(batch.tokens.array)[:, 0].tolist() == [0, 10, 20, 30]


def test_nondivisible_batch_sizes(mesh):
    with pytest.raises(
        ValueError,
        match=r"batch size 6 \(from step 0\) is not divisible by the batch-parallel size 4.*allow_nondivisible",
    ):
        DataLoader(Recording(64), 6, mesh=mesh, axis_mapping=MAPPING)
    schedule = BatchSchedule([ScheduleStep(0, 8), ScheduleStep(10, 10)])
    with pytest.raises(ValueError, match=r"batch size 10 \(from step 10\)"):
        DataLoader(Recording(None), schedule, mesh=mesh, axis_mapping=MAPPING)
    loader = DataLoader(Recording(64), 6, mesh=mesh, axis_mapping=MAPPING, allow_nondivisible=True)
    batch = next(iter(loader))
    assert batch.tokens.array.shape == (6, 6)
    assert batch.tokens.array.sharding.spec == PartitionSpec(None, None)
    with pytest.raises(ValueError, match="mesh axis 'fsdp'"):
        DataLoader(Recording(64), 8, mesh=mesh, axis_mapping={"batch": "fsdp"})


def test_each_process_reads_only_its_rows(mesh):
    ds = Recording(64)
    loader = DataLoader(ds, 8, mesh=mesh, axis_mapping=MAPPING)
    assert loader.local_rows(8) == list(range(8))  # one process holds every device here
    loader.make_batch(2)
    assert sorted(ds.requested) == list(range(16, 24))


def test_prefetch_overlaps_and_wait_time_is_recorded(mesh):
    class Slow(Recording):
        def get_batch(self, indices):
            time.sleep(0.05)
            return super().get_batch(indices)

    loader = DataLoader(Slow(None), 4, mesh=mesh, axis_mapping=MAPPING, prefetch_size=3)
    it = iter(loader)
    next(it)
    assert loader.last_wait_time > 0.02  # the first batch had to be built
    time.sleep(0.3)  # the producer fills the queue meanwhile
    next(it)
    assert loader.last_wait_time < 0.02
    it.close()
    assert not it._producer.thread.is_alive()


def test_errors_in_the_producer_reach_the_consumer(mesh):
    class Broken(Recording):
        def get_batch(self, indices):
            if min(indices) >= 8:
                raise OSError("disk on fire")
            return super().get_batch(indices)

    it = iter(DataLoader(Broken(None), 4, mesh=mesh, axis_mapping=MAPPING))
    next(it), next(it)
    with pytest.raises(OSError, match="disk on fire"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_abandoned_iterators_stop_their_thread(mesh):
    import gc

    loader = DataLoader(Recording(None), 4, mesh=mesh, axis_mapping=MAPPING, prefetch_size=1)
    it = iter(loader)
    next(it)
    thread = it._producer.thread
    del it
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_list_or_an_iterator_instead_of_a_dataset_is_a_clear_type_error(mesh):
    with pytest.raises(TypeError, match="got list: wrap a list of examples in lm.data.ListDataset"):
        DataLoader([_example(0)] * 16, 8, mesh=mesh, axis_mapping=MAPPING)
    with pytest.raises(TypeError, match="got generator: wrap the examples in an lm.data dataset"):
        DataLoader((_example(i) for i in range(16)), 8, mesh=mesh, axis_mapping=MAPPING)
