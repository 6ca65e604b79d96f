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
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import field

import haliax as hax

from lm.config.errors import (
    FieldError,
    closest_name,
    field_problem,
    invalid,
    join_path,
    raise_problems,
)
from lm.data.cache import CacheOptions, TokenCache, build_or_load_cache
from lm.data.dataset import AsyncDataset
from lm.data.mixture import MixtureDataset, MixtureStage, block_counts
from lm.data.packing import CausalLmDataset
from lm.data.permutation import PERMUTATION_TYPES, mix_seed, seed_from_key
from lm.data.sources import (
    BUILTIN_SOURCES,
    DEFAULT_TRAIN_SPLIT,
    HfSource,
    MissingSplit,
    ShardedSource,
    StdlibSource,
    UrlSource,
)
from lm.data.tokenizer import PASSTHROUGH_TOKENIZER_NAME, DocumentEncoder
from lm.fs import TENSORSTORE_PROTOCOLS, check_url_protocol, missing_filesystem
from lm.models.lm_model import LmExample
from lm.schedule import BatchSchedule

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")


def did_you_mean(value: str, allowed) -> str:
    close = closest_name(value, allowed)
    return f" (did you mean {close!r}?)" if close else ""


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _tag_problems(tags) -> list[FieldError]:
    if isinstance(tags, str) or not isinstance(tags, list | tuple):
        return [invalid("tags", tags, "a list of tag names, e.g. [web, english]")]
    problems = [
        invalid(f"tags[{i}]", tag, "a non-empty name without '/' (it goes in eval/<tag>/loss)")
        for i, tag in enumerate(tags)
        if not isinstance(tag, str) or not tag or "/" in tag
    ]
    duplicates = sorted({t for t in tags if tags.count(t) > 1})
    if duplicates:
        problems.append(FieldError("tags", f"{duplicates[0]!r} is listed more than once"))
    return problems


MAX_DATA_SEED = 2**64 - 1
"""The largest `data_seed`: the shuffles take the seed as a 64-bit integer."""


@dataclasses.dataclass(frozen=True)
class _SourceFields:
    """Where one source's documents come from (exactly one kind: URLs, HF id, builtin)."""

    train_urls: list[str] = field(default_factory=list)
    """Training files: brace ranges (`{1..128}`), alternatives (`{a,b}`) and globs over any
    fsspec filesystem (local, `file://`, `memory://`, `gs://`, `s3://`, `https://`)."""
    validation_urls: list[str] = field(default_factory=list)
    """Validation files, same syntax as `train_urls`."""
    id: str | None = None
    """An HF `datasets` dataset: a hub id (from the local HF cache when offline) or a local
    directory (`save_to_disk` output or a folder of data files)."""
    name: str | None = None
    """The HF dataset's config name (e.g. `wikitext-103-raw-v1`)."""
    train_split: str = DEFAULT_TRAIN_SPLIT
    """The HF split used for training. A bare `Dataset` (saved with `Dataset.save_to_disk`)
    has no splits: it is the training set, and another name here is an error."""
    validation_split: str | None = "validation"
    """The HF split used for validation; None for none. A dataset without it has no
    validation set (logged)."""
    stream: bool = True
    """Accepted for Levanter configs. Files are always read shard by shard; an HF hub
    dataset is downloaded into the HF cache first (a warning says so when this is true)."""
    text_key: str = "text"
    """The JSON key / parquet column / HF column holding the text (or token ids)."""
    plaintext: bool = False
    """Read every file as plain text, one document per non-empty line, whatever its name."""
    skip_bad_lines: bool = False
    """Skip (and count) bad lines instead of failing: malformed JSON, invalid UTF-8, no
    `text_key`, or a value the tokenizer cannot take (null, a number, ...), also in parquet
    files and HF datasets (as rows)."""
    builtin: str | None = None
    """A builtin corpus: `stdlib` (the Python standard library sources, ~2% validation)."""
    tags: list[str] = field(default_factory=list)
    """Evaluation groups this source belongs to: besides `eval/<set>/...`, the trainer logs
    `eval/<tag>/loss` over all validation sets carrying the tag (weighted by tokens). A
    mixture component's tags must not name another component."""

    def _source_problems(self, where: str) -> list[FieldError]:
        """Every invalid source field (after the one check that is about the section: only
        one kind of source, a `ValueError`)."""
        kinds = [
            k
            for k, on in (
                ("train_urls/validation_urls", bool(self.train_urls or self.validation_urls)),
                ("id", self.id is not None),
                ("builtin", self.builtin is not None),
            )
            if on
        ]
        if len(kinds) > 1:
            raise ValueError(
                f"{where.rstrip('.') or 'data'}: set only one kind of source (train_urls / "
                f"validation_urls, id or builtin), got {' and '.join(kinds)}; unset the others "
                f"(on the command line: --{where}builtin null, --{where}id null)"
            )
        problems: list[FieldError] = []
        if self.builtin is not None and self.builtin not in BUILTIN_SOURCES:
            problems.append(
                FieldError(
                    "builtin",
                    f"unknown builtin corpus {self.builtin!r}; allowed: "
                    f"{', '.join(BUILTIN_SOURCES)}{did_you_mean(self.builtin, BUILTIN_SOURCES)}",
                )
            )
        for f in ("train_urls", "validation_urls"):
            value = getattr(self, f)
            if isinstance(value, str):
                problems.append(invalid(f, value, "a list of URLs, not a string"))
                continue
            for i, url in enumerate(value):
                problems += field_problem(lambda u=url, at=f"{f}[{i}]": check_url_protocol(u, at))
        if not self.text_key:
            problems.append(invalid("text_key", self.text_key, "a non-empty string"))
        problems += _tag_problems(self.tags)
        return problems

    def _source_urls(self, where: str) -> list[tuple[str, str]]:
        """(config path, URL) of every file pattern this source reads."""
        return [
            (f"{where}{f}[{i}]", url)
            for f in ("train_urls", "validation_urls")
            for i, url in enumerate(getattr(self, f))
        ]

    def _urls_field(self, split: str, where: str = "data.") -> str | None:
        """The field naming `split`'s files (`data.train_urls`), or None for another source."""
        if self.id is not None or self.builtin is not None or not self.has_split(split):
            return None
        return f"{where}{split}_urls"

    def has_source(self) -> bool:
        return bool(self.train_urls or self.validation_urls or self.id or self.builtin)

    def has_split(self, split: str) -> bool:
        if self.builtin is not None:
            return True
        if self.id is not None:
            return split == "train" or self.validation_split is not None
        return bool(self.train_urls if split == "train" else self.validation_urls)

    def source_for(self, split: str, where: str = "data.") -> ShardedSource | None:
        """The documents of `split`, or None when this source has none for it."""
        if not self.has_split(split):
            return None
        if self.builtin is not None:
            return StdlibSource(split)
        if self.id is not None:
            hf_split = self.train_split if split == "train" else self.validation_split
            if self.stream and not os.path.isdir(
                os.path.expanduser(self.id.removeprefix("file://"))
            ):
                logger.warning(
                    "%sstream: true is not supported for HF hub datasets; %r is loaded through "
                    "the HF cache (downloaded first if missing)",
                    where,
                    self.id,
                )
            try:
                return HfSource.load(
                    self.id, self.name, hf_split, self.text_key, self.skip_bad_lines
                )
            except MissingSplit as e:
                if split != "validation":
                    raise ValueError(f"{where}train_split: {e}") from e
                logger.warning("%s: no validation set (%s)", where.rstrip("."), e)
                return None
        urls = self.train_urls if split == "train" else self.validation_urls
        return UrlSource.from_patterns(
            urls,
            text_key=self.text_key,
            plaintext=self.plaintext,
            skip_bad_lines=self.skip_bad_lines,
            field=f"{where}{split}_urls",
        )


@dataclasses.dataclass(frozen=True)
class LMDatasetSourceConfig(_SourceFields):
    """One component of a mixture (`configs: {name: ...}`)."""

    cache_dir: str | None = None
    """This component's cache directory; default `<mixture cache_dir>/<name>`."""

    def __post_init__(self):
        problems = self._source_problems("")
        if self.cache_dir is not None:
            problems += field_problem(
                lambda: check_url_protocol(
                    self.cache_dir, "cache_dir", allowed=TENSORSTORE_PROTOCOLS
                )
            )
        raise_problems(problems)


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


@dataclasses.dataclass(frozen=True)
class LMMixtureDatasetConfig(LMTaskConfig):
    """Several named sources sampled with weights (`data: {configs: ..., train_weights: ...}`)."""

    configs: dict[str, LMDatasetSourceConfig] = field(default_factory=dict)
    """The components, by name. The name is used in cache paths and `eval/<name>/loss`."""
    train_weights: dict[str, float] | list[tuple[int, dict[str, float]]] = field(
        default_factory=dict
    )
    """Sampling weights (normalized): `{name: weight}`, or a schedule `[[step, {name:
    weight}], ...]` starting at step 0. A component left out has weight 0 (validation only)."""
    mixture_block_size: int = 2048
    """Each block of this many consecutive examples has fixed per-component counts
    (largest remainder of weight * block size) in a seeded random order."""
    stop_strategy: str = "restart"
    """`restart`: a component that runs out starts over (the mixture is infinite)."""

    def __post_init__(self):
        problems = self._task_problems()
        if not self.configs:
            problems.append(FieldError("configs", "must name at least one source"))
        sources: dict[str, LMDatasetSourceConfig] = {}  # the components that are sources
        for name, cfg in self.configs.items():
            if not name or "/" in name:
                problems.append(
                    FieldError(
                        join_path("configs", name),
                        f"component name {name!r} must be non-empty without '/'",
                    )
                )
            elif not isinstance(cfg, LMDatasetSourceConfig):
                problems.append(invalid(join_path("configs", name), cfg, "a source config"))
            else:
                sources[name] = cfg
        for name, cfg in sources.items():
            for i, tag in enumerate(cfg.tags):
                if tag in self.configs and tag != name:
                    problems.append(
                        FieldError(
                            f"configs.{name}.tags[{i}]",
                            f"{tag!r} is the name of another component, whose eval/{tag}/... "
                            "metrics it would mix with this tag's; choose another tag",
                        )
                    )
        block_ok = self.mixture_block_size > 0
        if not block_ok:
            problems.append(
                invalid(
                    "mixture_block_size", self.mixture_block_size, "a positive number of examples"
                )
            )
        if self.stop_strategy != "restart":
            problems.append(
                FieldError(
                    "stop_strategy", f"only 'restart' is supported, got {self.stop_strategy!r}"
                )
            )
        problems += self._train_weight_problems(sources, block_ok)
        raise_problems(problems)

    def _train_weight_problems(
        self, sources: dict[str, LMDatasetSourceConfig], block_ok: bool
    ) -> list[FieldError]:
        """The weights (once the stages are well formed), the mixture blocks (once the
        components, the weights and the block size are valid), and the weighted sources'
        training data."""
        try:
            stages = self.weight_stages
        except FieldError as e:
            return [e]
        problems = self._weight_problems(stages)
        configs_ok = bool(self.configs) and len(sources) == len(self.configs)
        if configs_ok and block_ok and not problems:
            staged = not isinstance(self.train_weights, Mapping)
            problems += field_problem(lambda: self._check_blocks(stages, staged))
        for name in self.components_with_weight():
            if name in sources and not sources[name].has_split("train"):
                problems.append(
                    FieldError(
                        join_path("configs", name),
                        "has train weight > 0 but no training source (set train_urls, id or "
                        "builtin)",
                    )
                )
        return problems

    def _weight_problems(self, stages: list[tuple[int, dict[str, float]]]) -> list[FieldError]:
        """Each weight that names no component or is not a finite number >= 0; a stage whose
        weights are all zero (when they are all valid)."""
        problems: list[FieldError] = []
        staged = not isinstance(self.train_weights, Mapping)
        for i, (step, weights) in enumerate(stages):
            stage = f"train_weights[{i}][1]" if staged else "train_weights"
            at_step = f" (at step {step})" if staged else ""
            valid = True  # (an unknown name's weight would go to another component)
            for name, w in weights.items():
                if self.configs and name not in self.configs:
                    valid = False
                    problems.append(
                        FieldError(
                            join_path(stage, name),
                            f"unknown component {name!r}{at_step}; components: "
                            f"{', '.join(self.configs)}{did_you_mean(name, self.configs)}",
                        )
                    )
                elif not (w >= 0 and math.isfinite(w)):  # NaN fails both
                    valid = False
                    problems.append(
                        FieldError(
                            join_path(stage, name),
                            f"weight of {name!r} must be >= 0 and finite, got {w} (at step "
                            f"{step}); weights are relative, e.g. 0.7 and 0.3",
                        )
                    )
            if valid and sum(weights.values()) <= 0:
                problems.append(FieldError(stage, f"all weights are zero{at_step}"))
        return problems

    def _check_blocks(self, stages: list[tuple[int, dict[str, float]]], staged: bool) -> None:
        """Every weighted component must get at least one example per mixture block (the
        same largest-remainder counts `MixtureDataset` uses), or it is never sampled."""
        names = self.components_with_weight()
        block = self.mixture_block_size
        for i, (step, weights) in enumerate(stages):
            values = [float(weights.get(n, 0.0)) for n in names]
            starved = _starved(names, values, block)
            if not starved:
                continue
            # enough for sure (each weight's floor share is >= 1), then the smallest block
            # size below that (a search bounded for extreme weights) that also works
            enough = math.ceil(sum(values) / min(weights[n] for n in starved))
            while _starved(names, values, enough):  # (floating point)
                enough += 1
            sizes = range(block + 1, min(enough, block + 100_000))
            need = next((b for b in sizes if not _starved(names, values, b)), enough)
            where = f"train_weights[{i}] (step {step})" if staged else "train_weights"
            shown = {n: weights[n] for n in names if n in weights}
            raise FieldError(
                "mixture_block_size",
                f"{block} examples per block give {starved} no example with {where} {shown}, "
                f"so they would never be sampled: raise mixture_block_size (with {need} "
                f"each gets at least one) or their weights in train_weights",
            )

    @property
    def weight_stages(self) -> list[tuple[int, dict[str, float]]]:
        w = self.train_weights
        if isinstance(w, Mapping):
            if not w:
                raise FieldError("train_weights", "must give at least one component a weight")
            return [(0, dict(w))]
        stages = [(int(step), dict(weights)) for step, weights in w]
        if not stages:
            raise FieldError("train_weights", "must have at least one [step, weights] stage")
        if stages[0][0] != 0:
            raise FieldError(
                "train_weights[0][0]", f"the first stage must start at step 0, not {stages[0][0]}"
            )
        for i, ((a, _), (b, _)) in enumerate(zip(stages, stages[1:], strict=False), start=1):
            if b <= a:
                raise FieldError(
                    f"train_weights[{i}][0]", f"stage steps must increase, got {a} then {b}"
                )
        return stages

    def components_with_weight(self) -> list[str]:
        names = {n for _, w in self.weight_stages for n, v in w.items() if v > 0}
        return [n for n in self.configs if n in names]

    def _urls(self) -> list[tuple[str, str]]:
        out = LMTaskConfig._urls(self)
        for name, cfg in self.configs.items():
            where = f"data.configs.{name}."
            out += cfg._source_urls(where)
            if cfg.cache_dir is not None:
                out.append((f"{where}cache_dir", cfg.cache_dir))
        return out

    def validation_tags(self) -> dict[str, list[str]]:
        """`{name: tags}` for every component (no I/O); a component's own name is left out
        of its tags, since its set already logs `eval/<name>/...`."""
        return {name: [t for t in cfg.tags if t != name] for name, cfg in self.configs.items()}

    def cache_dir_for(self, name: str, split: str) -> str:
        own = self.configs[name].cache_dir
        return _join(own if own else _join(self.cache_dir, name), split)

    def _component_source(self, name: str, split: str) -> ShardedSource | None:
        return self.configs[name].source_for(split, where=f"data.configs.{name}.")

    def _component_cache(
        self, name: str, split: str, source: ShardedSource | None = None, **kw
    ) -> TokenCache | None:
        source = source if source is not None else self._component_source(name, split)
        if source is None:
            return None
        logger.info("data %s/%s: %s, tokenizer %s", name, split, source.describe(), self.tokenizer)
        return self._build_cache(source, self.cache_dir_for(name, split), **kw)

    def build_caches(self, *, progress: bool = False, ray_config=None) -> dict[str, TokenCache]:
        """Build (or open) the caches a run reads; keys are `<name>/<split>`: every
        component's validation split, and the train split of the components with a train
        weight (`components_with_weight`; the others are never sampled, as in Levanter).
        Every component's files are found first, so a missing one is reported before any
        cache is built."""
        self.check_filesystems()
        weighted = set(self.components_with_weight())
        unweighted = [
            n for n in self.configs if n not in weighted and self.configs[n].has_split("train")
        ]
        if unweighted:
            logger.info(
                "data: not tokenizing the train split of %s: no weight in data.train_weights "
                "(used for validation only)",
                ", ".join(unweighted),
            )
        sources = {
            (name, split): source
            for name in self.configs
            for split in SPLITS
            if split != "train" or name in weighted
            if (source := self._component_source(name, split)) is not None
        }
        return {
            f"{name}/{split}": self._component_cache(
                name, split, source, progress=progress, ray_config=ray_config
            )
            for (name, split), source in sources.items()
        }

    def train_set(
        self, Pos: hax.Axis, *, key=None, batch_schedule: BatchSchedule | None = None
    ) -> AsyncDataset[LmExample]:
        """An infinite mixture of the weighted components' packed windows.

        Args:
            Pos: the position axis (its size is seq_len).
            key: PRNG key for the block order and shuffles (ignored if `data_seed` is set).
            batch_schedule: converts weight-stage steps into example offsets; required when
                `train_weights` has more than one stage.
        """
        self.check_filesystems()
        seed = self._shuffle_seed(key)
        if seed is None:
            raise ValueError(
                "a mixture's train_set needs key= or data.data_seed (block sampling is seeded)"
            )
        stages = self.weight_stages
        if len(stages) > 1 and batch_schedule is None:
            raise ValueError(
                "data.train_weights has several stages; train_set needs batch_schedule="
            )
        components: dict[str, AsyncDataset] = {}
        for name in self.components_with_weight():
            cache = self._component_cache(name, "train")
            assert cache is not None
            urls = self.configs[name]._urls_field("train", f"data.configs.{name}.")
            ds = self._packed(cache, Pos, f"data.configs.{name} (training)", urls)
            components[name] = self._shuffled(ds, mix_seed(seed, _stable_hash(name)), "train_set")
        mixture_stages = [
            MixtureStage(
                start_index=0 if step == 0 else batch_schedule.global_data_offset_by_step(step),
                weights={n: float(w.get(n, 0.0)) for n in components},
            )
            for step, w in stages
        ]
        return MixtureDataset(components, mixture_stages, self.mixture_block_size, seed)

    def validation_sets(self, Pos: hax.Axis) -> dict[str, AsyncDataset[LmExample]]:
        """`{name: dataset}` for every component with validation data; `validation_tags()`
        gives their tags."""
        self.check_filesystems()
        out = {}
        for name in self.configs:
            cache = self._component_cache(name, "validation")
            if cache is not None:
                urls = self.configs[name]._urls_field("validation", f"data.configs.{name}.")
                out[name] = self._packed(cache, Pos, f"data.configs.{name} (validation)", urls)
        return out


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


def _starved(names: list[str], weights: list[float], block_size: int) -> list[str]:
    """The components with a weight > 0 that get no example in a block of `block_size`."""
    counts = block_counts(weights, block_size)
    return [n for n, w, c in zip(names, weights, counts, strict=True) if w > 0 and c == 0]


def _stable_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
