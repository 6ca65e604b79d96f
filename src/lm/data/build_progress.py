"""How far a cache build got: a tqdm bar (`cache_dataset`), else a log line every
`PROGRESS_LOG_S` (`train_lm`), counting finished shards and what in-flight shards reported
(each tokenizer batch; with Ray, through a `ShardCounts` actor the driver polls)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lm.data.cache import CacheLedger, ShardStats

logger = logging.getLogger(__name__)

PROGRESS_LOG_S = 20.0
"""How often a build without a progress bar logs its progress."""


class BuildProgress:
    """A build's progress: a tqdm bar (`enabled`), else a log line every `PROGRESS_LOG_S`.

    Counts cover this run: finished shards' stats plus what in-flight shards reported."""

    def __init__(self, cache_dir: str, ledger: CacheLedger, enabled: bool):
        self.cache_dir = cache_dir
        self.num_shards = len(ledger.shards)
        self.num_done = len(ledger.finished)
        self.bar = None
        self.start = self.last_log = time.perf_counter()
        self.docs = 0
        self.tokens = 0
        self.partial: dict[int, tuple[int, int]] = {}
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.num_shards, initial=self.num_done, unit="shard", desc="cache"
            )

    def batch_done(self, index: int, num_docs: int, num_tokens: int) -> None:
        """One tokenizer batch of shard `index` is done (local backend)."""
        docs, tokens = self.partial.get(index, (0, 0))
        self.partial[index] = (docs + num_docs, tokens + num_tokens)
        self._tick()

    def in_shard(self, counts: dict[int, tuple[int, int]]) -> None:
        """How far the in-flight shards got, `{index: (docs, tokens)}` (Ray backend)."""
        self.partial.update(counts)
        self._tick()

    def shard_done(self, index: int, stats: ShardStats) -> None:
        self.partial.pop(index, None)
        self.docs += stats.num_docs
        self.tokens += stats.num_tokens
        self.num_done += 1
        if self.bar is not None:
            self.bar.update(1)
        self._tick()

    def _tick(self) -> None:
        now = time.perf_counter()
        elapsed = max(now - self.start, 1e-9)
        docs = self.docs + sum(d for d, _ in self.partial.values())
        tokens = self.tokens + sum(t for _, t in self.partial.values())
        if self.bar is not None:
            self.bar.set_postfix(
                docs_per_s=f"{docs / elapsed:,.0f}", tokens_per_s=f"{tokens / elapsed:,.0f}"
            )
        elif now - self.last_log >= PROGRESS_LOG_S:
            self.last_log = now
            logger.info(
                "Building the tokenized cache at %s: %d/%d shards done, %s tokens in %s "
                "documents so far (%s tokens/s, %s documents/s)",
                self.cache_dir,
                self.num_done,
                self.num_shards,
                f"{tokens:,}",
                f"{docs:,}",
                f"{tokens / elapsed:,.0f}",
                f"{docs / elapsed:,.0f}",
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ShardCounts:
    """A Ray actor (`num_cpus=0`): what each in-flight shard's task has tokenized so far."""

    def __init__(self):
        self.counts: dict[int, tuple[int, int]] = {}

    def add(self, index: int, num_docs: int, num_tokens: int) -> None:
        docs, tokens = self.counts.get(index, (0, 0))
        self.counts[index] = (docs + num_docs, tokens + num_tokens)

    def get(self) -> dict[int, tuple[int, int]]:
        return self.counts
