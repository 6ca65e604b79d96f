"""Reading a finished tokenized cache: `TokenCache`, random access to its token stream.

Opening one checks it whole, up front: every shard the ledger lists must open, hold the
counts the ledger records, and have all its chunks stored, so a damaged cache is an error
naming the shard (and how to rebuild it) before training starts, not a TensorStore error
hours into a run. The layout and how a cache is built: `lm.data.cache`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Sequence

import numpy as np
import tensorstore as ts

from lm.data.cache_arrays import chunk_keys, join_url, open_array
from lm.data.ledger import CACHE_FORMAT_VERSION, LEDGER_NAME, CacheLedger, read_ledger

# Reading is part of the cache: its messages go to the cache's logger, the one a run's
# logging config (and the tests) look at.
logger = logging.getLogger("lm.data.cache")


def shard_dir(cache_dir: str, index: int) -> str:
    return join_url(cache_dir, "shards", f"{index:05d}")


@functools.cache
def _note_old_format(cache_dir: str, version: int) -> None:
    """Warn once per process and cache that an old-format cache is read without checksums."""
    logger.warning(
        "The tokenized cache at %s has format version %d: its chunks carry no checksums, so a "
        "damaged chunk may go unnoticed. Delete it to rebuild it in version %d.",
        cache_dir,
        version,
        CACHE_FORMAT_VERSION,
    )


class TokenCache:
    """A finished tokenized cache: random access to the token stream and document bounds."""

    def __init__(self, cache_dir: str, ledger: CacheLedger | None = None):
        ledger = ledger if ledger is not None else read_ledger(cache_dir)
        if ledger is None:
            raise ValueError(f"no tokenized cache at {cache_dir} (no {LEDGER_NAME})")
        if not ledger.complete:
            raise ValueError(f"the tokenized cache at {cache_dir} is not finished; rebuild it")
        self.cache_dir = cache_dir
        self.ledger = ledger
        unfinished = [name for name in ledger.shards if name not in ledger.finished]
        if unfinished:
            raise ValueError(
                f"the tokenized cache at {cache_dir} is damaged: its ledger says complete but "
                f"lists no stats for shard {unfinished[0]!r}; delete {cache_dir} to rebuild it"
            )
        stats = [ledger.finished[name] for name in ledger.shards]
        counts = [s.num_tokens for s in stats]
        self.shard_starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        # Every shard the ledger lists must open: a missing one is an error now, naming it,
        # not a TensorStore NOT_FOUND in the middle of training.
        futures = [
            (
                open_array(join_url(shard_dir(cache_dir, i), "tokens")),
                open_array(join_url(shard_dir(cache_dir, i), "offsets")),
            )
            for i in range(len(ledger.shards))
        ]
        self._tokens = []
        offset_arrays = []
        for i, (tokens, offsets) in enumerate(futures):
            with self._shard_errors(i):
                self._tokens.append(tokens.result())
                offset_arrays.append(offsets.result())
        if ledger.version < 2:
            _note_old_format(cache_dir, ledger.version)
        self._check_chunks(offset_arrays)
        reads = [offsets.read() for offsets in offset_arrays]
        ends = []
        for i, read in enumerate(reads):
            with self._shard_errors(i):
                ends.append(read.result())
        for i, (arr, end, s) in enumerate(zip(self._tokens, ends, stats, strict=True)):
            found = (arr.shape[0], len(end), int(end[-1]) if len(end) else 0)
            if found != (s.num_tokens, s.num_docs, s.num_tokens):
                raise ValueError(
                    f"cache shard {shard_dir(cache_dir, i)} holds {found[0]} tokens in "
                    f"{found[1]} documents but the ledger says {s.num_tokens} in {s.num_docs}: "
                    f"the tokenized cache at {cache_dir} is damaged. {self._rebuild_advice(i)}"
                )
        self.doc_ends = np.concatenate(
            [e.astype(np.int64) + s for e, s in zip(ends, self.shard_starts[:-1], strict=True)]
            or [np.zeros(0, np.int64)]
        )

    def _check_chunks(self, offset_arrays: list[ts.TensorStore]) -> None:
        """Raise if a chunk the arrays' shapes imply is not stored. Format 1 did not store
        all-zero chunks and read a missing one as zeros, so a deleted chunk went unnoticed;
        format 2 refuses to read one, but only when training reaches it (hours into a run),
        while `cache_dataset` said the cache was fine. This costs one listing per array,
        all in flight at once."""
        arrays = [
            {"tokens": tokens, "offsets": offsets}
            for tokens, offsets in zip(self._tokens, offset_arrays, strict=True)
        ]
        listings = [{name: a.kvstore.list() for name, a in shard.items()} for shard in arrays]
        for i, (shard, listing) in enumerate(zip(arrays, listings, strict=True)):
            missing = []
            for name, array in shard.items():
                with self._shard_errors(i):
                    present = {key.decode() for key in listing[name].result()}
                missing += [f"{name}/{k}" for k in chunk_keys(array) if k not in present]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                old = (
                    f" (it has format version {self.ledger.version}, which did not store chunks "
                    "that were entirely token id 0, so a rebuild is the way to be sure)"
                    if self.ledger.version < 2
                    else ""
                )
                raise ValueError(
                    f"cache shard {shard_dir(self.cache_dir, i)} is missing chunk {missing[0]}"
                    f"{more}: the tokenized cache at {self.cache_dir} is damaged{old}. "
                    + self._rebuild_advice(i)
                )

    def _rebuild_advice(self, index: int) -> str:
        ledger_url = join_url(self.cache_dir, LEDGER_NAME)
        return (
            f"Delete {self.cache_dir} to rebuild the cache, or rebuild just this shard: remove "
            f'{json.dumps(self.ledger.shards[index])} from "finished" in {ledger_url}, set '
            '"complete" to false, and run again'
        )

    @contextlib.contextmanager
    def _shard_errors(self, index: int):
        """TensorStore's errors while opening or reading shard `index`, as a `ValueError` that
        names the shard and says how to rebuild it."""
        try:
            yield
        except ValueError as e:
            # TensorStore's message ends in the whole JSON spec; the status line is enough.
            status = str(e).split(" [tensorstore_spec=", 1)[0]
            if status.startswith("NOT_FOUND"):
                what = "has a missing chunk" if "chunk" in status else "is missing"
                state = "damaged"
            else:
                what, state = "cannot be read", "damaged or unreachable"
            raise ValueError(
                f"cache shard {shard_dir(self.cache_dir, index)} {what} ({status}): the "
                f"tokenized cache at {self.cache_dir} is {state}. {self._rebuild_advice(index)}"
            ) from e

    @property
    def num_tokens(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def num_docs(self) -> int:
        return len(self.doc_ends)

    def doc_index(self, positions: np.ndarray) -> np.ndarray:
        """The index of the document each global token position belongs to."""
        return np.searchsorted(self.doc_ends, positions, side="right")

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """The tokens of each global [start, stop) range, read concurrently."""
        pieces: list[list[tuple[int, ts.Future]]] = []
        for start, stop in ranges:
            if not 0 <= start <= stop <= self.num_tokens:
                raise IndexError(f"token range [{start}, {stop}) outside [0, {self.num_tokens})")
            parts = []
            shard = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
            pos = start
            while pos < stop:
                base, end = self.shard_starts[shard], self.shard_starts[shard + 1]
                take = min(stop, end)
                if take > pos:
                    parts.append((shard, self._tokens[shard][pos - base : take - base].read()))
                pos = max(pos, take)
                shard += 1
            pieces.append(parts)
        out = []
        for parts in pieces:
            arrays = []
            for shard, future in parts:
                with self._shard_errors(shard):
                    arrays.append(future.result())
            if not arrays:
                out.append(np.zeros(0, np.int32))
            else:
                out.append(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        return out
