"""Data: sources -> tokenized TensorStore cache -> packed, shuffled, resumable batches.

Configs (`data:` in a run YAML): `LMDatasetConfig` (one source; the embedded stdlib
corpus with the builtin tokenizer when no source is set) and `LMMixtureDatasetConfig`
(named components with weights). Runtime pieces: `AsyncDataset` and its combinators,
`TokenCache`, `MixtureDataset`, `DataLoader`.
"""

from lm.data.builtin_tokenizer import cache_root, ensure_builtin_tokenizer, load_builtin_tokenizer
from lm.data.cache import (
    CacheLedger,
    CacheOptions,
    ShardStats,
    TokenCache,
    build_or_load_cache,
    read_ledger,
)
from lm.data.config import (
    LMDatasetConfig,
    LMDatasetSourceConfig,
    LMMixtureDatasetConfig,
    LMTaskConfig,
)
from lm.data.dataset import (
    AsyncDataset,
    EraShuffledDataset,
    ListDataset,
    MappedDataset,
    PermutedDataset,
    SlicedDataset,
)
from lm.data.hf_source import HfSource
from lm.data.loader import DataLoader
from lm.data.mixture import MixtureDataset, MixtureStage
from lm.data.packing import CausalLmDataset, causal_loss_mask
from lm.data.permutation import Permutation
from lm.data.sources import ShardedSource, StdlibSource, UrlSource, expand_urls
from lm.data.tokenizer import DocumentEncoder, load_tokenizer

__all__ = [
    "AsyncDataset",
    "CacheLedger",
    "CacheOptions",
    "CausalLmDataset",
    "DataLoader",
    "DocumentEncoder",
    "EraShuffledDataset",
    "HfSource",
    "LMDatasetConfig",
    "LMDatasetSourceConfig",
    "LMMixtureDatasetConfig",
    "LMTaskConfig",
    "ListDataset",
    "MappedDataset",
    "MixtureDataset",
    "MixtureStage",
    "Permutation",
    "PermutedDataset",
    "ShardStats",
    "ShardedSource",
    "SlicedDataset",
    "StdlibSource",
    "TokenCache",
    "UrlSource",
    "build_or_load_cache",
    "cache_root",
    "causal_loss_mask",
    "ensure_builtin_tokenizer",
    "expand_urls",
    "load_builtin_tokenizer",
    "load_tokenizer",
    "read_ledger",
]
