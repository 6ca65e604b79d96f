"""What every data config shares: tokenization, caching, shuffling and packing (`LMTaskConfig`).

`LMTaskConfig` holds the `data:` fields that are not about where documents come from (the
tokenizer, `cache_dir` and `cache_options`, BOS/EOS, `shuffle`, `data_seed`) and the steps
built on them: building a split's cache, packing it into windows, shuffling them. Both
`LMDatasetConfig` (`lm.data.config`) and `LMMixtureDatasetConfig` (`lm.data.mixture_config`)
extend it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import field

import haliax as hax

from lm.config.errors import FieldError, did_you_mean, field_problem, invalid
from lm.data.cache import CacheOptions, TokenCache, build_or_load_cache
from lm.data.dataset import AsyncDataset
from lm.data.packing import CausalLmDataset
from lm.data.permutation import PERMUTATION_TYPES, mix_seed, seed_from_key
from lm.data.sources import ShardedSource
from lm.data.tokenizer import PASSTHROUGH_TOKENIZER_NAME, DocumentEncoder
from lm.fs import TENSORSTORE_PROTOCOLS, check_url_protocol, missing_filesystem

SPLITS = ("train", "validation")


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


MAX_DATA_SEED = 2**64 - 1
"""The largest `data_seed`: the shuffles take the seed as a 64-bit integer."""


@dataclasses.dataclass(frozen=True)
class LMTaskConfig:
    """Tokenization, caching and shuffling, shared by single sources and mixtures."""

    tokenizer: str = "builtin"
    """`builtin` (no network), `passthrough`, a local/fsspec tokenizer directory, or an HF
    hub name (from the local HF cache when offline). Levanter's default is `gpt2`."""
    vocab_size: int | None = None
    """The vocabulary size for `tokenizer: passthrough` (ids must be below it)."""
    cache_dir: str = "cache/"
    """Where tokenized caches go (local path or URL such as `gs://bucket/cache/`)."""
    cache_options: CacheOptions = field(default_factory=CacheOptions)
    """How the cache is built (Ray or in-process, workers, batch size)."""
    enforce_eos: bool = True
    """End every document with EOS (unless the tokenizer already does)."""
    add_bos: bool | None = None
    """None: the tokenizer's own behaviour; true: every document starts with BOS; false: a
    BOS the tokenizer adds is removed."""
    ignore_token_id: int | None = None
    """Predictions of this token id never count in the loss (e.g. a padding id)."""
    shuffle: bool | int = False
    """false: cache order; true: a full deterministic shuffle; an int: shuffle within eras
    of that many examples (windows)."""
    permutation_type: str = "feistel"
    """The shuffle's permutation: `feistel` (good mixing) or `linear` (`a*i+b mod n`)."""
    data_seed: int | None = None
    """Seed for shuffling and mixture sampling; None uses the key the trainer passes (its
    data key), so set this to change the data order without changing the model init."""

    def _task_problems(self) -> list[FieldError]:
        problems: list[FieldError] = []
        if not self.tokenizer:
            # (vocab_size is checked against a tokenizer that is given)
            problems.append(invalid("tokenizer", self.tokenizer, "a non-empty name or path"))
        elif self.tokenizer == PASSTHROUGH_TOKENIZER_NAME:
            if self.vocab_size is None or self.vocab_size <= 0:
                problems.append(
                    invalid(
                        "vocab_size", self.vocab_size, "a positive int with tokenizer: passthrough"
                    )
                )
        elif self.vocab_size is not None:
            problems.append(
                FieldError(
                    "vocab_size",
                    f"got {self.vocab_size}, but vocab_size is only for tokenizer: passthrough; "
                    f"tokenizer {self.tokenizer!r} has its own vocabulary. Remove vocab_size.",
                )
            )
        if not self.cache_dir:
            problems.append(invalid("cache_dir", self.cache_dir, "a non-empty path or URL"))
        else:
            problems += field_problem(
                lambda: check_url_protocol(
                    self.cache_dir, "cache_dir", allowed=TENSORSTORE_PROTOCOLS
                )
            )
        if self.tokenizer:
            problems += field_problem(lambda: check_url_protocol(self.tokenizer, "tokenizer"))
        if isinstance(self.shuffle, bool):
            pass
        elif not isinstance(self.shuffle, int) or self.shuffle <= 0:
            problems.append(
                invalid("shuffle", self.shuffle, "true, false or a positive era length")
            )
        if self.permutation_type not in PERMUTATION_TYPES:
            problems.append(
                invalid(
                    "permutation_type",
                    self.permutation_type,
                    f"one of {', '.join(PERMUTATION_TYPES)}"
                    f"{did_you_mean(self.permutation_type, PERMUTATION_TYPES)}",
                )
            )
        if self.ignore_token_id is not None and self.ignore_token_id < 0:
            problems.append(
                invalid("ignore_token_id", self.ignore_token_id, "a token id >= 0, or null")
            )
        if self.data_seed is not None and not 0 <= self.data_seed <= MAX_DATA_SEED:
            # the shuffles mix the seed as 64 bits: 2**64 + 1 would repeat seed 1's order
            problems.append(
                invalid(
                    "data_seed",
                    self.data_seed,
                    f"an integer from 0 to {MAX_DATA_SEED:,}, or null",
                )
            )
        if not isinstance(self.cache_options, CacheOptions):
            problems.append(invalid("cache_options", self.cache_options, "a CacheOptions"))
        return problems

    @property
    def encoder(self) -> DocumentEncoder:
        return DocumentEncoder(self.tokenizer, self.vocab_size, self.enforce_eos, self.add_bos)

    @functools.cached_property
    def the_tokenizer(self):
        """The tokenizer (a `transformers.PreTrainedTokenizerBase`), loaded once."""
        self.check_filesystems()
        return self.encoder.hf_tokenizer

    @functools.cached_property
    def the_vocab_size(self) -> int:
        """`len(the_tokenizer)`, without loading the builtin tokenizer through transformers."""
        self.check_filesystems()
        return self.encoder.vocab_length()

    def _urls(self) -> list[tuple[str, str]]:
        """(config path, URL) of every path or URL this config opens."""
        return [("data.tokenizer", self.tokenizer), ("data.cache_dir", self.cache_dir)]

    def cache_dirs(self) -> list[tuple[str, str]]:
        """(config path, directory) of every cache directory this config writes."""
        return [(path, url) for path, url in self._urls() if path.endswith("cache_dir")]

    def check_filesystems(self) -> None:
        """Raise a `ValueError` if this Python cannot open some URL of this config.

        A `gs://` URL needs `gcsfs` (`pip install 'lm[gcs]'`), `s3://` needs `s3fs`
        (`lm[s3]`). Every method that reads data (`train_set`, `validation_sets`,
        `build_caches`, `the_tokenizer`, `the_vocab_size`) calls it before opening anything;
        parsing a config does not, so a `gs://` config still parses where it is not run.
        """
        missing: dict[str, list[str]] = {}  # reason -> the fields it applies to
        for path, url in self._urls():
            reason = missing_filesystem(url)
            if reason is not None:
                missing.setdefault(reason, []).append(path)
        if missing:
            raise ValueError(
                "\n".join(f"{', '.join(fields)}: {reason}" for reason, fields in missing.items())
            )

    def _shuffle_seed(self, key) -> int | None:
        if self.data_seed is not None:
            return mix_seed(self.data_seed)
        if key is not None:
            return seed_from_key(key)
        return None

    def _shuffled(self, ds: AsyncDataset, seed: int | None, what: str) -> AsyncDataset:
        if self.shuffle is False:
            return ds
        if seed is None:
            raise ValueError(
                f"data.shuffle is {self.shuffle!r} but {what} got no key: pass key= or set "
                "data.data_seed"
            )
        from lm.data.dataset import EraShuffledDataset, PermutedDataset

        if self.shuffle is True:
            return PermutedDataset(ds, seed, self.permutation_type)
        return EraShuffledDataset(ds, int(self.shuffle), seed, self.permutation_type)

    def _build_cache(
        self, source: ShardedSource, cache_dir: str, *, progress: bool = False, ray_config=None
    ) -> TokenCache:
        return build_or_load_cache(
            cache_dir,
            source,
            self.encoder,
            self.cache_options,
            ray_config=ray_config,
            progress=progress,
        )

    def _packed(
        self, cache: TokenCache, Pos: hax.Axis, what: str, urls_field: str | None = None
    ) -> CausalLmDataset:
        """Windows over `cache`; `urls_field` (e.g. `data.train_urls`) names the files it was
        built from, for the error when there are too few tokens."""
        ds = CausalLmDataset(cache, Pos, ignore_id=self.ignore_token_id)
        if len(ds) == 0:
            raise ValueError(
                f"{what} has {cache.num_tokens} tokens ({cache.num_docs} documents), fewer than "
                f"one window of seq_len={Pos.size}{_empty_files(cache, urls_field)}; add data "
                f"or lower seq_len (cache: {cache.cache_dir})"
            )
        return ds


def _empty_files(cache: TokenCache, urls_field: str | None) -> str:
    """'; ' + which files of `urls_field` gave no documents (and the bad lines skipped), or ''."""
    if urls_field is None:
        return ""
    shards = cache.ledger.shards
    empty = [name for name in shards if cache.ledger.finished[name].num_docs == 0]
    if not empty:
        return ""
    skipped = sum(cache.ledger.finished[name].skipped_lines for name in empty)
    skipped_note = f" ({skipped} bad lines skipped)" if skipped else ""
    listed = ", ".join(empty[:3]) + (f" (+{len(empty) - 3} more)" if len(empty) > 3 else "")
    verb = "has" if len(empty) == 1 else "have"
    if len(empty) == len(shards):
        which = "the only file" if len(shards) == 1 else f"all {len(shards)} files"
    else:
        which = f"{len(empty)} of the {len(shards)} files"
    return f"; {which} of {urls_field} {verb} no documents{skipped_note}: {listed}"
