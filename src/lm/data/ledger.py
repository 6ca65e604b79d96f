"""The ledger of a tokenized cache (`<cache>/ledger.json`): what was built from what, and how
far it got.

It lists the finished shards with their counts (and, for a shard that is one file, a stamp of
that file's bytes), and fingerprints of the tokenizer and of the sources. Here: the records,
reading and writing them, and the checks that a cache matches a config: the same tokenizer
and sources, a readable format, source files unchanged since their shards were built.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from typing import TYPE_CHECKING

import fsspec

from lm.data.cache_arrays import join_url
from lm.fs import is_local_filesystem

if TYPE_CHECKING:
    from lm.data.sources import ShardedSource
    from lm.data.tokenizer import DocumentEncoder

# The ledger's messages are about the cache: they go to the cache's logger, the one a run's
# logging config (and the tests) look at for cache builds.
logger = logging.getLogger("lm.data.cache")

LEDGER_NAME = "ledger.json"
# 2: chunks carry a crc32c checksum and are all stored (even all-zero ones), so a missing or
# damaged chunk is an error on read; 1 (still read): no checksums and all-zero chunks were not
# stored, so opening one checks that every chunk is there (a missing one is refused).
CACHE_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)


@dataclasses.dataclass
class ShardStats:
    num_docs: int
    num_tokens: int
    skipped_lines: int = 0
    source_file: dict | None = None
    """For a shard that is one file: `{"size", "mtime", "blake2b"}` of the bytes it was built
    from (absent in caches built before this was recorded: then only sizes are checked)."""


@dataclasses.dataclass
class CacheLedger:
    tokenizer: str
    tokenizer_fingerprint: str
    source: str
    source_fingerprint: str
    shards: list[str]
    finished: dict[str, ShardStats] = dataclasses.field(default_factory=dict)
    complete: bool = False
    version: int = CACHE_FORMAT_VERSION
    config_source: ShardedSource | None = dataclasses.field(default=None, compare=False, repr=False)
    """For a ledger made from a config (`expected_ledger`): its source, which `mismatches`
    asks about a cache that names the same files in another form and about the files' sizes.
    Never written."""

    def to_json(self) -> str:
        d = dataclasses.asdict(dataclasses.replace(self, config_source=None))
        del d["config_source"]
        return json.dumps(d, indent=1)

    @staticmethod
    def from_json(text: str) -> CacheLedger:
        """Parse a ledger, checking every field's type (it may have been edited by hand).

        Raises:
            ValueError: not JSON, or a field missing, unknown or of the wrong type (named).
        """
        d = json.loads(text)
        _check_fields(d, _LEDGER_FIELDS, _LEDGER_OPTIONAL)
        for i, name in enumerate(d["shards"]):
            if not isinstance(name, str):
                raise ValueError(
                    f'"shards"[{i}] must be a shard name (a string), got {_shown(name)}'
                )
        finished = {}
        for name, stats in d["finished"].items():
            _check_fields(stats, _SHARD_FIELDS, _SHARD_OPTIONAL, f'"finished"[{json.dumps(name)}]')
            finished[name] = ShardStats(**stats)
        return CacheLedger(**{**d, "finished": finished})

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.finished.values())

    @property
    def num_docs(self) -> int:
        return sum(s.num_docs for s in self.finished.values())


# Each field's JSON types and how a message names them; the optional ones have defaults.
_LEDGER_FIELDS = {
    "tokenizer": ((str,), "a string"),
    "tokenizer_fingerprint": ((str,), "a string"),
    "source": ((str,), "a string"),
    "source_fingerprint": ((str,), "a string"),
    "shards": ((list,), "a list of shard names"),
    "finished": ((dict,), "an object of shard name -> stats"),
    "complete": ((bool,), "true or false"),
    "version": ((int,), "an integer"),
}
_LEDGER_OPTIONAL = ("complete", "version")
_SHARD_FIELDS = {
    "num_docs": ((int,), "an integer >= 0"),
    "num_tokens": ((int,), "an integer >= 0"),
    "skipped_lines": ((int,), "an integer >= 0"),
    "source_file": ((dict, type(None)), "an object or null"),
}
_SHARD_OPTIONAL = ("skipped_lines", "source_file")


def _check_fields(d, fields: dict, optional: tuple[str, ...], where: str = "") -> None:
    """Raise a `ValueError` naming the field of the JSON object `d` (at `where` in the ledger,
    e.g. `"finished"["a.jsonl"]`) that is missing, unknown, or not of its type."""
    if not isinstance(d, dict):
        raise ValueError(f"{where or 'the ledger'} must be a JSON object, got {_shown(d)}")
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{where or 'the ledger'} has an unknown field {unknown[0]!r}")
    for key, (types, allowed) in fields.items():
        if key not in d:
            if key not in optional:
                raise ValueError(f"{where or 'the ledger'} has no field {key!r}")
            continue
        value = d[key]
        # JSON true/false are Python bools, which are ints too: never a count or a version
        wrong_type = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if wrong_type or (allowed.endswith(">= 0") and value < 0):
            name = f"{where}.{json.dumps(key)}" if where else json.dumps(key)
            raise ValueError(f"{name} must be {allowed}, got {_shown(value)}")


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_ledger(cache_dir: str) -> CacheLedger | None:
    fs, path = fsspec.core.url_to_fs(join_url(cache_dir, LEDGER_NAME))
    if not fs.exists(path):
        return None
    try:
        return CacheLedger.from_json(fs.cat_file(path).decode("utf-8"))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"the cache ledger {join_url(cache_dir, LEDGER_NAME)} is unreadable ({e}); "
            "delete the cache directory to rebuild it"
        ) from e


def write_ledger(cache_dir: str, ledger: CacheLedger) -> None:
    """Write the ledger atomically: a local file via rename, an object store via one put."""
    url = join_url(cache_dir, LEDGER_NAME)
    fs, path = fsspec.core.url_to_fs(url)
    data = ledger.to_json().encode("utf-8")
    if is_local_filesystem(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def mismatches(found: CacheLedger, expected: CacheLedger) -> list[str]:
    """How a cache's tokenizer and sources differ from the config's, one line each."""
    problems = []
    if found.tokenizer_fingerprint != expected.tokenizer_fingerprint:
        problems.append(
            f"tokenizer: cache built with {found.tokenizer} [{found.tokenizer_fingerprint}], "
            f"config asks for {expected.tokenizer} [{expected.tokenizer_fingerprint}]"
        )
    # the config's source under the names the cache gave its files, if they are the same files
    # named in another form (an older lm recorded a relative glob's matches as absolute paths)
    source = expected.config_source
    renamed = source.named_as(found.shards) if source is not None else None
    if found.shards == expected.shards:
        fingerprint, description = expected.source_fingerprint, expected.source
    elif renamed is not None:
        fingerprint, description = renamed.fingerprint(), renamed.describe()
    else:
        fingerprint, description = None, None
    if found.source_fingerprint != fingerprint:
        if fingerprint is None:
            detail = f" ({_first_shard_difference(found.shards, expected.shards, source)})"
        elif found.source == description:
            detail = f" ({_same_description_change(found, expected)})"
        else:
            detail = ""  # the settings the descriptions show differ
        problems.append(
            f"sources: cache built from {found.source} [{found.source_fingerprint}, "
            f"{len(found.shards)} shards], config asks for {expected.source} "
            f"[{expected.source_fingerprint}, {len(expected.shards)} shards]{detail}"
        )
    return problems


def _first_shard_difference(
    found: list[str], expected: list[str], source: ShardedSource | None
) -> str:
    """Where the cache's shard list and the config's (the shard names of `source`) part."""
    n = min(len(found), len(expected))
    for index, (built, wanted) in enumerate(zip(found[:n], expected[:n], strict=True)):
        same = source.names_shard(index, built) if source is not None else built == wanted
        if not same:
            return (
                f"the shard lists differ first at shard {index}: {built!r} in the cache, "
                f"{wanted!r} in the config"
            )
    if len(expected) > n:
        extra = len(expected) - n
        return f"the config lists {extra} more shard{'s' * (extra > 1)}, from {expected[n]!r}"
    extra = len(found) - n
    return f"the cache has {extra} more shard{'s' * (extra > 1)}, from {found[n]!r}"


def _changed_sizes(found: CacheLedger, source: ShardedSource) -> str | None:
    """The files of finished shards whose size differs from the one recorded when they were
    built, with both sizes (None: no recorded size differs)."""
    changed = []
    names = source.shard_names()
    for index, shard in enumerate(found.shards):
        stats = found.finished.get(shard)
        recorded = (stats.source_file or {}).get("size") if stats is not None else None
        now = source.shard_size(index)
        if recorded is not None and now is not None and recorded != now:
            changed.append(f"{names[index]} was {recorded} bytes then, {now} bytes now")
    if not changed:
        return None
    more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
    return "; ".join(changed[:3]) + more


def _same_description_change(found: CacheLedger, expected: CacheLedger) -> str:
    """What changed when a source's description and shards are the same as the cache's but its
    fingerprint is not, by the kind of source (told by its shard names)."""
    first = expected.shards[0] if expected.shards else ""
    if first.startswith("hf:"):
        return (
            "the same HF dataset and settings, but the dataset's fingerprint changed since the "
            "cache was built: `datasets` computes it from the data, and for a local folder of "
            "data files from their modification times too, so a touched or copied file changes "
            "it even with the same bytes"
        )
    if first.startswith("stdlib:"):
        return "the same split of the embedded corpus, but its files changed (another Python?)"
    changed = _changed_sizes(found, expected.config_source) if expected.config_source else None
    if changed is not None:
        return (
            f"the same files and settings: a file changed size since the cache was built: {changed}"
        )
    unfinished = len(found.shards) - len(found.finished)
    which = (
        f" (one of the {unfinished} shards not built yet: the finished ones' files kept "
        "their sizes)"
        if unfinished
        and found.finished
        and all("size" in (s.source_file or {}) for s in found.finished.values())
        else ""
    )
    return f"the same files and settings: a file changed size since the cache was built{which}"


def check_compatible(cache_dir: str, found: CacheLedger, expected: CacheLedger) -> None:
    """Raise if a cache was built from another tokenizer or other sources."""
    if found.version not in READABLE_FORMAT_VERSIONS:
        raise ValueError(
            f"the cache at {cache_dir} has format version {found.version}, this code reads "
            f"versions {list(READABLE_FORMAT_VERSIONS)}; delete it or choose another cache_dir"
        )
    problems = mismatches(found, expected)
    if problems:
        raise ValueError(
            f"the tokenized cache at {cache_dir} does not match this config ("
            + "; ".join(problems)
            + "). Use another cache_dir, or delete this one to rebuild it."
        )


def is_replaceable(found: CacheLedger | None, expected: CacheLedger) -> bool:
    """Whether `found` is a build that failed before finishing any shard, for other settings
    or another format: starting it over for `expected` loses nothing."""
    return (
        found is not None
        and not found.complete
        and not found.finished
        and (found.version != expected.version or bool(mismatches(found, expected)))
    )


def expected_ledger(source: ShardedSource, encoder: DocumentEncoder) -> CacheLedger:
    return CacheLedger(
        tokenizer=encoder.describe(),
        tokenizer_fingerprint=encoder.fingerprint(),
        source=source.describe(),
        source_fingerprint=source.fingerprint(),
        shards=source.shard_names(),
        config_source=source,
    )


def usable_ledger(cache_dir: str, expected: CacheLedger) -> CacheLedger | None:
    """The ledger at `cache_dir` if it is one for `expected` (None: none yet, or a failed
    build for other settings that may be started over).

    Raises:
        ValueError: a cache of another tokenizer or other sources.
    """
    ledger = read_ledger(cache_dir)
    if is_replaceable(ledger, expected):
        return None
    if ledger is not None:
        check_compatible(cache_dir, ledger, expected)
    return ledger


def verify_source_files(cache_dir: str, ledger: CacheLedger, source, *, write: bool) -> None:
    """Check every finished shard's file against what the ledger recorded when it was built
    (`ShardedSource.verify_shard`): a file whose modification time changed is hashed again;
    the same bytes update the ledger (when `write`), other bytes are an error."""
    updates = {}
    old = 0
    for index, name in enumerate(ledger.shards):
        stats = ledger.finished.get(name)
        if stats is None:
            continue
        if stats.source_file is None:
            old += 1
            continue
        try:
            new = source.verify_shard(index, stats.source_file)
        except ValueError as e:
            raise ValueError(
                f"the tokenized cache at {cache_dir} does not match this config: {e}. Use "
                "another cache_dir, or delete this one to rebuild it."
            ) from e
        if new is not None:
            updates[name] = new
    if old:
        logger.debug(
            "The cache at %s records no checksums for %d source files (built before they were "
            "recorded); only their sizes are compared",
            cache_dir,
            old,
        )
    if updates:
        logger.info(
            "%d source files of the cache at %s were modified since it was built but hold the "
            "same bytes (their checksums match)%s",
            len(updates),
            cache_dir,
            "; recorded their new modification times" if write else "",
        )
        if write:
            for name, stamp in updates.items():
                ledger.finished[name].source_file = stamp
            write_ledger(cache_dir, ledger)
