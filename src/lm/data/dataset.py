"""`AsyncDataset`: random access to examples by index, with lazy transformations.

The name follows Levanter; the API here is synchronous because the trainer is: the
loader calls `get_batch` from a background thread, so I/O still overlaps compute, and
each batch's reads are issued concurrently inside `get_batch` (TensorStore futures).

A dataset is finite (`len(ds)` works) or infinite (`is_finite()` is False, e.g. a
mixture; `len` raises). Transformations return new datasets and never copy data:

- `map(fn)`: apply `fn` to each example;
- `slice(start, stop)`: a contiguous range;
- `shuffle(key, perm_type=...)`: a full deterministic permutation (finite only);
- `era_shuffle(era_length, key, perm_type=...)`: permute within consecutive eras of
  `era_length` examples (works for infinite datasets, and needs no length up front).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np

from lm.data.permutation import Permutation, PermutationType, mix_seed, seed_from_key

T = TypeVar("T")
U = TypeVar("U")


class AsyncDataset(abc.ABC, Generic[T]):
    """Examples addressed by index (see the module docstring)."""

    @abc.abstractmethod
    def is_finite(self) -> bool: ...

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of examples (finite datasets only)."""

    @abc.abstractmethod
    def get_batch(self, indices: Sequence[int]) -> list[T]:
        """The examples at `indices` (any order, repeats allowed)."""

    def __getitem__(self, index: int) -> T:
        return self.get_batch([index])[0]

    def map(self, fn: Callable[[T], U]) -> AsyncDataset[U]:
        return MappedDataset(self, fn)

    def slice(self, start: int, stop: int | None = None) -> AsyncDataset[T]:
        return SlicedDataset(self, start, stop)

    def shuffle(self, key, *, perm_type: PermutationType = "feistel") -> AsyncDataset[T]:
        return PermutedDataset(self, seed_from_key(key), perm_type)

    def era_shuffle(
        self, era_length: int, key, *, perm_type: PermutationType = "feistel"
    ) -> AsyncDataset[T]:
        return EraShuffledDataset(self, era_length, seed_from_key(key), perm_type)


def _check_finite(ds: AsyncDataset, what: str) -> int:
    if not ds.is_finite():
        raise TypeError(f"{what} needs a finite dataset; {type(ds).__name__} is infinite")
    return len(ds)


def _check_indices(indices: Sequence[int], n: int | None) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise IndexError(f"negative dataset index {int(idx.min())}")
    if n is not None and idx.size and idx.max() >= n:
        raise IndexError(f"dataset index {int(idx.max())} out of range for length {n}")
    return idx


class ListDataset(AsyncDataset[T]):
    """A dataset over an in-memory sequence (tests, research scripts)."""

    def __init__(self, items: Sequence[T]):
        self.items = list(items)

    def is_finite(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.items)

    def get_batch(self, indices: Sequence[int]) -> list[T]:
        return [self.items[i] for i in _check_indices(indices, len(self.items))]


class MappedDataset(AsyncDataset[U]):
    def __init__(self, base: AsyncDataset[T], fn: Callable[[T], U]):
        self.base = base
        self.fn = fn

    def is_finite(self) -> bool:
        return self.base.is_finite()

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, indices: Sequence[int]) -> list[U]:
        return [self.fn(x) for x in self.base.get_batch(indices)]


class SlicedDataset(AsyncDataset[T]):
    def __init__(self, base: AsyncDataset[T], start: int, stop: int | None):
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"slice({start}, {stop}): need 0 <= start <= stop")
        if base.is_finite():
            n = len(base)
            stop = n if stop is None else min(stop, n)
            start = min(start, stop)
        self.base = base
        self.start = start
        self.stop = stop

    def is_finite(self) -> bool:
        return self.stop is not None

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an open-ended slice of an infinite dataset has no length")
        return self.stop - self.start

    def get_batch(self, indices: Sequence[int]) -> list[T]:
        idx = _check_indices(indices, len(self) if self.is_finite() else None)
        return self.base.get_batch((idx + self.start).tolist())


class PermutedDataset(AsyncDataset[T]):
    """A full shuffle: example i is base[perm(i)]."""

    def __init__(self, base: AsyncDataset[T], seed: int, perm_type: PermutationType = "feistel"):
        n = _check_finite(base, "shuffle")
        self.base = base
        self.perm = Permutation(n, seed, perm_type)

    def is_finite(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, indices: Sequence[int]) -> list[T]:
        idx = _check_indices(indices, len(self))
        return self.base.get_batch(self.perm(idx).tolist())


class EraShuffledDataset(AsyncDataset[T]):
    """Example i lies in era e = i // era_length and maps to a permuted index of that era.

    Each era has its own permutation (the seed mixed with e); a final partial era of a
    finite dataset is permuted over its actual size.
    """

    def __init__(
        self, base: AsyncDataset[T], era_length: int, seed: int, perm_type: PermutationType
    ):
        if era_length <= 0:
            raise ValueError(f"era_length must be positive, got {era_length}")
        self.base = base
        self.era_length = era_length
        self.seed = seed
        self.perm_type = perm_type
        self._perms: dict[tuple[int, int], Permutation] = {}

    def is_finite(self) -> bool:
        return self.base.is_finite()

    def __len__(self) -> int:
        return len(self.base)

    def _perm(self, era: int, size: int) -> Permutation:
        key = (era, size)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            self._perms[key] = Permutation(size, mix_seed(self.seed, era), self.perm_type)
        return self._perms[key]

    def get_batch(self, indices: Sequence[int]) -> list[T]:
        n = len(self) if self.is_finite() else None
        idx = _check_indices(indices, n)
        eras = idx // self.era_length
        out = np.empty_like(idx)
        for era in np.unique(eras):
            sel = eras == era
            start = int(era) * self.era_length
            size = self.era_length if n is None else min(self.era_length, n - start)
            out[sel] = start + self._perm(int(era), size)(idx[sel] - start)
        return self.base.get_batch(out.tolist())
