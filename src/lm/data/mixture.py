"""Weighted mixtures of datasets with deterministic block sampling.

The example stream is cut into blocks of `block_size`. Within a stage of constant
weights, every block holds the same number of examples of each component: the largest-
remainder rounding of `weight * block_size` (so proportions are exact to 1/block_size
per block). The order inside block b is a seeded permutation (seed mixed with b). Hence
the component and component-local index of any example index is a closed-form function:
each batch's composition is reproducible and resuming needs no saved state.

A weight schedule is a list of stages, each starting at an example index; a block uses
the stage in effect at its first example, so a change takes effect at the next block
boundary. A component that runs out starts over (`stop_strategy: restart`); the mixture
is infinite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from lm.data.dataset import AsyncDataset, _check_indices
from lm.data.permutation import Permutation, mix_seed


@dataclasses.dataclass(frozen=True)
class MixtureStage:
    start_index: int
    """The example index where this stage's weights start to apply."""
    weights: Mapping[str, float]


def block_counts(weights: Sequence[float], block_size: int) -> np.ndarray:
    """Per-component example counts in one block: largest remainder of normalized weights.

    Ties in the remainder go to the earlier component. Counts sum to `block_size`.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    exact = w / w.sum() * block_size
    counts = np.floor(exact).astype(np.int64)
    remainder = block_size - int(counts.sum())
    if remainder:
        order = sorted(range(len(w)), key=lambda i: (-(exact[i] - counts[i]), i))
        for i in order[:remainder]:
            counts[i] += 1
    return counts


class MixtureDataset(AsyncDataset):
    """Examples drawn from named component datasets per weight stages (module docstring)."""

    def __init__(
        self,
        components: Mapping[str, AsyncDataset],
        stages: Sequence[MixtureStage],
        block_size: int,
        seed: int,
    ):
        if not components:
            raise ValueError("a mixture needs at least one component")
        if block_size <= 0:
            raise ValueError(f"mixture block size must be positive, got {block_size}")
        if not stages or stages[0].start_index != 0:
            raise ValueError("the first mixture stage must start at example 0")
        self.names = list(components)
        self.components = [components[n] for n in self.names]
        self.block_size = block_size
        self.seed = seed
        self._lengths = []
        for name, ds in zip(self.names, self.components, strict=True):
            n = len(ds) if ds.is_finite() else None
            if n == 0:
                raise ValueError(f"mixture component {name!r} is empty")
            self._lengths.append(n)

        # Per stage: first block, per-component counts, and component offsets at its start.
        first_blocks: dict[int, tuple[int, MixtureStage]] = {}
        for i, stage in enumerate(stages):
            unknown = set(stage.weights) - set(self.names)
            if unknown:
                raise ValueError(f"mixture stage {i}: unknown components {sorted(unknown)}")
            if i and stage.start_index <= stages[i - 1].start_index:
                raise ValueError("mixture stages must start at increasing example indices")
            # The first block whose first example lies in this stage; when two stages begin
            # inside the same block, the later one wins from the next block boundary.
            first_blocks[-(-stage.start_index // block_size)] = (i, stage)
        self._stage_blocks: list[int] = []
        self._stage_counts: list[np.ndarray] = []
        self._stage_base: list[np.ndarray] = []
        base = np.zeros(len(self.names), dtype=np.int64)
        for first_block, (i, stage) in sorted(first_blocks.items()):
            if self._stage_blocks:
                span = first_block - self._stage_blocks[-1]
                base = self._stage_base[-1] + span * self._stage_counts[-1]
            weights = [float(stage.weights.get(n, 0.0)) for n in self.names]
            counts = block_counts(weights, block_size)
            starved = [
                n for n, w, c in zip(self.names, weights, counts, strict=True) if w > 0 and c == 0
            ]
            if starved:
                raise ValueError(
                    f"mixture stage {i}: weights {dict(zip(self.names, weights, strict=True))} "
                    f"give {starved} no example per block of {block_size}; raise "
                    "mixture_block_size or their weights"
                )
            self._stage_blocks.append(first_block)
            self._stage_counts.append(counts)
            self._stage_base.append(base)
        self._perms: dict[int, Permutation] = {}

    def is_finite(self) -> bool:
        return False

    def __len__(self) -> int:
        raise TypeError("a mixture is infinite (components restart); it has no length")

    def _block_perm(self, block: int) -> Permutation:
        perm = self._perms.get(block)
        if perm is None:
            if len(self._perms) > 64:
                self._perms.clear()
            perm = self._perms[block] = Permutation(self.block_size, mix_seed(self.seed, block))
        return perm

    def locate(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(component number, index within that component before wrapping) per example."""
        idx = _check_indices(indices, None)
        blocks = idx // self.block_size
        within = idx % self.block_size
        comp = np.empty_like(idx)
        local = np.empty_like(idx)
        stage_of_block = np.searchsorted(self._stage_blocks, blocks, side="right") - 1
        for block in np.unique(blocks):
            sel = blocks == block
            s = int(stage_of_block[sel][0])
            counts = self._stage_counts[s]
            starts = np.concatenate([[0], np.cumsum(counts)])
            slot = self._block_perm(int(block))(within[sel])
            c = np.searchsorted(starts, slot, side="right") - 1
            rank = slot - starts[c]
            prior = self._stage_base[s] + (int(block) - self._stage_blocks[s]) * counts
            comp[sel] = c
            local[sel] = prior[c] + rank
        return comp, local

    def get_batch(self, indices: Sequence[int]) -> list:
        comp, local = self.locate(indices)
        out: list = [None] * len(comp)
        for c in np.unique(comp):
            sel = np.nonzero(comp == c)[0]
            n = self._lengths[c]
            wanted = local[sel] % n if n is not None else local[sel]
            for pos, example in zip(
                sel, self.components[c].get_batch(wanted.tolist()), strict=True
            ):
                out[pos] = example
        return out
