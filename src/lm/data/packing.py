"""Packed causal-LM examples: the cache's token stream cut into `seq_len` windows.

Documents (each ending in EOS with `enforce_eos`) are concatenated in cache order and
the stream is cut into consecutive windows of `Pos.size` tokens; the last partial window
is dropped. A long document simply continues in the next window (chunked, never
truncated). Each window carries segment ids (0, 1, 2, ... for the documents it touches),
so attention and the loss never cross a document boundary (`LmExample` conventions).

Examples hold numpy arrays inside their NamedArrays: the loader stacks a batch on the
host and makes one device array per field, instead of one per example.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from haliax import Axis, NamedArray

from lm.data.cache import TokenCache
from lm.data.dataset import AsyncDataset, _check_indices
from lm.models.lm_model import LmExample


def causal_loss_mask(
    tokens: np.ndarray, segment_ids: np.ndarray, ignore_id: int | None = None
) -> np.ndarray:
    """The loss mask `LmExample.causal` builds, computed in numpy over the last axis."""
    length = tokens.shape[-1]
    mask = np.zeros(tokens.shape, dtype=bool)
    mask[..., : length - 1] = True
    if ignore_id is not None:
        mask[..., : length - 1] &= tokens[..., 1:] != ignore_id
    mask[..., : length - 1] &= segment_ids[..., :-1] == segment_ids[..., 1:]
    mask &= segment_ids >= 0
    return mask


class CausalLmDataset(AsyncDataset[LmExample]):
    """Packed windows of a `TokenCache` as `LmExample`s over the `Pos` axis."""

    def __init__(self, cache: TokenCache, Pos: Axis, *, ignore_id: int | None = None):
        if Pos.size < 2:
            raise ValueError(f"seq_len ({Pos.size}) must be at least 2")
        self.cache = cache
        self.Pos = Pos
        self.ignore_id = ignore_id
        self._len = cache.num_tokens // Pos.size

    def is_finite(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._len

    def windows(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, segment_ids), each int32 [len(indices), seq_len]."""
        idx = _check_indices(indices, self._len)
        L = self.Pos.size
        starts = idx * L
        tokens = np.stack(self.cache.read_ranges([(int(s), int(s) + L) for s in starts]))
        positions = starts[:, None] + np.arange(L, dtype=np.int64)[None, :]
        docs = self.cache.doc_index(positions)
        segment_ids = (docs - docs[:, :1]).astype(np.int32)
        return tokens.reshape(len(idx), L), segment_ids

    def get_batch(self, indices: Sequence[int]) -> list[LmExample]:
        if len(indices) == 0:
            return []
        tokens, segment_ids = self.windows(indices)
        mask = causal_loss_mask(tokens, segment_ids, self.ignore_id)
        axes = (self.Pos,)
        return [
            LmExample(
                tokens=NamedArray(tokens[i], axes),
                loss_mask=NamedArray(mask[i], axes),
                segment_ids=NamedArray(segment_ids[i], axes),
            )
            for i in range(len(tokens))
        ]
