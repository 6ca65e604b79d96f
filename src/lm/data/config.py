"""Data configs: `LMDatasetConfig` (one source) and `LMMixtureDatasetConfig` (weighted sources).

Both build packed, optionally shuffled `AsyncDataset[LmExample]`s:

    train = config.train_set(Pos, key=data_key, batch_schedule=schedule)
    evals = config.validation_sets(Pos)   # {name: dataset}; "" for a single source
    tags = config.validation_tags()       # {name: [tag, ...]}: eval groups (`tags:`), no I/O

A single-source config with no source field set (`train_urls`, `validation_urls`, `id`,
`builtin`) uses the embedded corpus (`builtin: stdlib`, the Python standard library)
with the builtin tokenizer: a run works with no network and no data download.

Tokenized caches go under `cache_dir`: `<cache_dir>/train` and `<cache_dir>/validation`
for one source; `<cache_dir>/<name>/<split>` for a mixture component, or
`<component cache_dir>/<split>` if the component sets its own.

Here: `LMDatasetConfig`. Its parts live in `lm.data.source_config` (the source fields,
`LMDatasetSourceConfig`) and `lm.data.task_config` (`LMTaskConfig`, what both configs
share); the mixture in `lm.data.mixture_config`. All are importable from here.
"""

from __future__ import annotations

import dataclasses
import logging

import haliax as hax

from lm.config.errors import raise_problems
from lm.data.cache import TokenCache
from lm.data.dataset import AsyncDataset
from lm.data.mixture_config import LMMixtureDatasetConfig as LMMixtureDatasetConfig
from lm.data.source_config import LMDatasetSourceConfig as LMDatasetSourceConfig
from lm.data.source_config import _SourceFields
from lm.data.task_config import MAX_DATA_SEED as MAX_DATA_SEED
from lm.data.task_config import SPLITS, LMTaskConfig, _join
from lm.models.lm_model import LmExample
from lm.schedule import BatchSchedule

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LMDatasetConfig(_SourceFields, LMTaskConfig):
    """One source of documents (`data:`); the embedded corpus when no source is set."""

    def __post_init__(self):
        raise_problems([*self._source_problems("data."), *self._task_problems()])

    @property
    def effective_source(self) -> _SourceFields:
        if self.has_source():
            return self
        return dataclasses.replace(self, builtin="stdlib")

    def cache_dir_for(self, split: str) -> str:
        return _join(self.cache_dir, split)

    def _urls(self) -> list[tuple[str, str]]:
        return [*LMTaskConfig._urls(self), *self._source_urls("data.")]

    def validation_tags(self) -> dict[str, list[str]]:
        """`{"": tags}`: the tags of the validation set `validation_sets` returns (no I/O)."""
        return {"": list(self.tags)}

    def build_caches(self, *, progress: bool = False, ray_config=None) -> dict[str, TokenCache]:
        """Build (or open) the cache of every split this source has. Every split's files are
        found first: a missing validation file is reported before the train cache is built,
        not after."""
        self.check_filesystems()
        sources = {split: self.effective_source.source_for(split) for split in SPLITS}
        return {
            split: self._build_cache(
                source, self.cache_dir_for(split), progress=progress, ray_config=ray_config
            )
            for split, source in sources.items()
            if source is not None
        }

    def _split_cache(self, split: str) -> TokenCache | None:
        src = self.effective_source
        if not self.has_source():
            logger.info("data: no source set, using the embedded corpus (builtin: stdlib)")
        source = src.source_for(split)
        if source is None:
            return None
        logger.info("data %s: %s, tokenizer %s", split, source.describe(), self.tokenizer)
        return self._build_cache(source, self.cache_dir_for(split))

    def train_set(
        self, Pos: hax.Axis, *, key=None, batch_schedule: BatchSchedule | None = None
    ) -> AsyncDataset[LmExample]:
        """Packed training windows over `Pos`, shuffled per `shuffle` (needs `key` or
        `data_seed` when shuffling). `batch_schedule` is unused for a single source."""
        self.check_filesystems()
        cache = self._split_cache("train")
        if cache is None:
            raise ValueError(
                "data: no training data (set train_urls, id or builtin, or nothing at all for "
                "the embedded corpus)"
            )
        ds = self._packed(cache, Pos, "the training data", self._urls_field("train"))
        return self._shuffled(ds, self._shuffle_seed(key), "train_set")

    def validation_sets(self, Pos: hax.Axis) -> dict[str, AsyncDataset[LmExample]]:
        """`{"": dataset}` when this source has validation data, else `{}` (unshuffled).
        `validation_tags()` gives its tags."""
        self.check_filesystems()
        cache = self._split_cache("validation")
        if cache is None:
            return {}
        return {"": self._packed(cache, Pos, "the validation data", self._urls_field("validation"))}
