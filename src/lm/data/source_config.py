"""Where a data config's documents come from: the source fields and a mixture's component.

`_SourceFields` holds the fields that pick one source (`train_urls`/`validation_urls`, an
HF `id`, or a `builtin` corpus), their checks, and `source_for`, which turns them into the
`ShardedSource` of a split. `LMDatasetConfig` (`lm.data.config`) has them at the top of
`data:`; `LMDatasetSourceConfig` is one named component of a mixture (`configs: {name: ...}`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import field

from lm.config.errors import (
    FieldError,
    did_you_mean,
    field_problem,
    invalid,
    raise_problems,
)
from lm.data.hf_source import HfSource, MissingSplit
from lm.data.sources import (
    BUILTIN_SOURCES,
    DEFAULT_TRAIN_SPLIT,
    ShardedSource,
    StdlibSource,
    UrlSource,
)
from lm.fs import TENSORSTORE_PROTOCOLS, check_url_protocol

# The data configs' messages go to one logger, the one a run's logging config looks at.
logger = logging.getLogger("lm.data.config")


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
