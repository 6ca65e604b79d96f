"""Document sources: URL lists (fsspec) and the embedded corpus (HF `datasets` are in
`lm.data.hf_source`).

A source is a list of named shards; each shard yields documents (a string, or a list of
token ids for `passthrough`). Sources are plain picklable dataclasses, so a cache builder
can send one shard's recipe to a Ray worker, which opens the shard itself.

URLs: each entry of `train_urls`/`validation_urls` is brace-expanded (`{1..128}`,
`{001..128}`, `{a,b}`), then globbed if it contains `*`, `?` or `[` (any fsspec
filesystem: local paths, `file://`, `memory://`, `gs://`, `s3://`, `https://`). A glob's
matches keep the form of its pattern: a relative pattern gives paths relative to the working
directory (as brace expansion does), so shard names, and a cache's ledger, do not change when
the project directory moves. An empty glob is an error, and so are missing files (all of a
source's named in one error). Formats, by extension:

| extension | documents |
|---|---|
| `.jsonl`, `.json` (+ `.gz`, `.zst`/`.zstd`) | one JSON object per line, text under `text_key` |
| `.txt` (+ compression), or any file with `plaintext: true` | one document per non-empty line |
| `.parquet` | the `text_key` column, one row per document |

A bad line (malformed JSON, invalid UTF-8, no `text_key`, or a value the tokenizer cannot
take, such as `null` or a number where text is expected) is an error naming the file and
line number (the row for parquet and HF datasets), or with `skip_bad_lines: true` it is
skipped and counted (the cache ledger records the count); `lm.data.formats` reads the files.

While a build reads a file it records the file's size, modification time and a blake2b
checksum of its bytes (`on_file`); `UrlSource.verify_shard` later tells whether the file
still holds what the cache was built from.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence

import braceexpand
import fsspec

from lm.config.errors import SetupConfigError
from lm.data import corpus
from lm.data.formats import (
    Document,
    DocumentCheck,
    detect_format,
    file_checksum,
    file_modified,
    iter_json_lines,
    iter_parquet,
    iter_text_lines,
)
from lm.fs import local_path

logger = logging.getLogger(__name__)

DEFAULT_TRAIN_SPLIT = "train"


class ShardedSource(abc.ABC):
    """A named list of shards, each an iterable of documents."""

    @abc.abstractmethod
    def shard_names(self) -> list[str]: ...

    @abc.abstractmethod
    def open_shard(
        self,
        index: int,
        on_bad_line: Callable[[str], None] | None = None,
        check: DocumentCheck | None = None,
        on_file: Callable[[dict], None] | None = None,
    ) -> Iterator[Document]:
        """The documents of shard `index`.

        Args:
            index: the shard.
            on_bad_line: called with the message of each bad line skipped (only with
                `skip_bad_lines`; otherwise a bad line raises a `ValueError`).
            check: `check(document)` says why the tokenizer cannot take a document (or None);
                such a document is a bad line, named by its file and line (or row).
            on_file: a shard that is one file calls it once the file has been read to its
                end, with `{"size", "mtime", "blake2b"}` of the bytes read (see
                `verify_shard`).
        """

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A hash that changes when the documents would change."""

    @abc.abstractmethod
    def describe(self) -> str: ...

    def for_workers(self) -> ShardedSource:
        """This source as a process in another working directory must see it (a Ray worker):
        local relative paths made absolute. Shard names and fingerprints stay this source's."""
        return self

    def check_read(self, index: int, stamp: dict | None) -> None:
        """Check what a build read for shard `index` (its `on_file` stamp, None if it gave
        none) against what this source found when it was made.

        Raises:
            ValueError: the build read another file, or the file changed meanwhile.
        """
        return None

    def verify_shard(self, index: int, recorded: dict) -> dict | None:
        """Check shard `index` against `recorded`, what `on_file` gave when it was built.

        Returns None when nothing changed, or the stamp to record instead (the file was
        touched or copied: another modification time, the same bytes).

        Raises:
            ValueError: the file's contents changed.
        """
        return None

    def shard_size(self, index: int) -> int | None:
        """The size in bytes of shard `index`'s file when this source was made (None: not a
        file, or unknown), to name a file that changed size since a cache was built."""
        return None

    def names_shard(self, index: int, name: str) -> bool:
        """Whether `name` (a shard name a cache's ledger recorded) names shard `index`."""
        return name == self.shard_names()[index]

    def named_as(self, names: Sequence[str]) -> ShardedSource | None:
        """This source with its shards named `names`, if `names` name this source's shards in
        another form (as a cache's ledger recorded them), else None; its `fingerprint` is the
        one a cache built from these shards under those names has."""
        return None


# ---------------------------------------------------------------------------- URLs


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


# How many missing files one error lists by name (the rest are counted).
MAX_MISSING_SHOWN = 10


def _expand(patterns: Sequence[str], field: str) -> list[tuple[str, dict, int]]:
    """(url, fsspec info, index of the pattern naming it) of every file the patterns name, in
    order; a file named twice is an error, and so are missing files (all of them named in one
    error)."""
    out: list[tuple[str, dict, int]] = []
    missing: list[tuple[str, str]] = []  # (url, the pattern naming it)
    named_by: dict[tuple[str, str], str] = {}  # (protocol, path) -> the pattern naming it

    def add(fs, url: str, info: dict, pattern: str, index: int) -> None:
        key = (
            fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0],
            fs._strip_protocol(url),
        )
        if key in named_by:
            first_pattern = named_by[key]
            by = (
                f"pattern {pattern!r} names it twice"
                if first_pattern == pattern
                else f"patterns {first_pattern!r} and {pattern!r} both name it"
            )
            raise SetupConfigError(
                f"{field}: {url!r} is listed twice ({by}): its documents would be read twice, "
                "and a cache keeps one record per file. List each file once (to weight a "
                "source up, use a mixture's train_weights)"
            )
        named_by[key] = pattern
        out.append((url, info, index))

    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            raise SetupConfigError(
                f"{field}: every entry must be a non-empty string, got {pattern!r}"
            )
        for url in braceexpand.braceexpand(pattern):
            fs, path = fsspec.core.url_to_fs(url)
            if _has_glob(path):
                matches = fs.glob(path, detail=True)
                if not matches:
                    raise SetupConfigError(f"{field}: the glob {url!r} matched no files")
                files = [(m, info) for m, info in sorted(matches.items())]
                dirs = [m for m, info in files if info.get("type") == "directory"]
                files = [(m, info) for m, info in files if info.get("type") != "directory"]
                if not files:
                    shown = ", ".join(_as_written(url, path, d, fs) for d in dirs[:3])
                    more = f" (+{len(dirs) - 3} more)" if len(dirs) > 3 else ""
                    raise SetupConfigError(
                        f"{field}: the glob {url!r} matched no files (only directories: "
                        f"{shown}{more}); give the files, or a glob that matches the files "
                        "inside those directories"
                    )
                for m, info in files:
                    add(fs, _as_written(url, path, m, fs), info, pattern, index)
            else:
                try:
                    info = fs.info(path)
                except FileNotFoundError:
                    missing.append((url, pattern))
                    continue
                if info.get("type") == "directory":
                    raise SetupConfigError(
                        f"{field}: {url!r} is a directory; give files or a glob like '{url.rstrip('/')}/*.jsonl.gz'"
                    )
                add(fs, url, info, pattern, index)
    if missing:
        raise SetupConfigError(_missing_message(field, missing))
    return out


def _missing_message(field: str, missing: list[tuple[str, str]]) -> str:
    """`field: missing shard(s) ...`, naming up to `MAX_MISSING_SHOWN` of the missing files and
    the patterns that named them."""
    patterns = list(dict.fromkeys(pattern for _, pattern in missing))
    if len(missing) == 1:
        return f"{field}: missing shard {missing[0][0]!r} (from pattern {patterns[0]!r})"
    shown = missing[:MAX_MISSING_SHOWN]
    more = f" (+{len(missing) - len(shown)} more)" if len(missing) > len(shown) else ""
    if len(patterns) == 1:
        names = ", ".join(repr(url) for url, _ in shown)
        return (
            f"{field}: {len(missing)} missing shards: {names}{more} (from pattern {patterns[0]!r})"
        )
    names = ", ".join(f"{url!r} (from {pattern!r})" for url, pattern in shown)
    return f"{field}: {len(missing)} missing shards: {names}{more}"


def expand_urls(patterns: Sequence[str], *, field: str = "urls") -> list[tuple[str, int | None]]:
    """Brace-expand and glob URL patterns into (url, size in bytes or None) pairs.

    Raises:
        ValueError: a pattern matches no file (or only directories), or a named file does
            not exist.
    """
    return [(url, info.get("size")) for url, info, _ in _expand(patterns, field)]


def _is_relative_local(pattern: str) -> bool:
    """Whether `pattern` is a local path relative to the working directory (not `/...`,
    `~/...`, a `scheme://` URL or a chained `a::b` one)."""
    return not ("://" in pattern or "::" in pattern or pattern.startswith(("/", "~")))


def _static_dir(path: str) -> str:
    """The part of a glob `path` up to and including the last `/` before its first wildcard."""
    first = min(i for i, c in enumerate(path) if c in "*?[")
    return path[: path.rfind("/", 0, first) + 1]


def _as_written(url: str, path: str, match: str, fs) -> str:
    """A file `match`ed by the glob `url` (which fsspec turned into the absolute `path`), in
    the form `url` was written: relative to the working directory for a relative pattern
    (fsspec returns absolute paths, which would tie a cache's ledger to the directory it was
    built in), with `url`'s protocol for a URL, else as fsspec gives it."""
    if _is_relative_local(url):
        written, absolute = _static_dir(url), _static_dir(path)
        if match.startswith(absolute):
            return written + match[len(absolute) :]
        return os.path.relpath(match)
    if "://" not in url:
        return match
    return fs.unstrip_protocol(match)


def _absolute_form_of(recorded: str, url: str) -> bool:
    """Whether the absolute path `recorded` names the relative local path `url`: `url` made
    absolute here, or a path ending in it (made absolute in another working directory)."""
    if not (_is_relative_local(url) and recorded.startswith("/")):
        return False
    recorded = os.path.normpath(recorded)
    if recorded == os.path.abspath(url):
        return True
    tail = os.path.normpath(url)
    while tail.startswith("../"):  # the directories above the working directory differ too
        tail = tail[3:]
    return tail not in ("", ".", "..") and recorded.endswith("/" + tail)


def absolute_local(url: str) -> str:
    """`url` with a local path (plain or `file://`) made absolute (and `~` expanded); any other
    URL (`gs://`, `memory://`, a chained `simplecache::...`) unchanged."""
    local = local_path(url)
    if local is None:
        return url
    return "file://" + local if url.startswith("file://") else local


def local_directory(name: str) -> str | None:
    """The absolute path of the local directory `name` (a path or `file://` URL) names, or
    None (a hub id, a URL, a file): what a Ray worker in another working directory must be
    given instead of a relative directory name."""
    local = local_path(name)
    return local if local is not None and os.path.isdir(local) else None


@dataclasses.dataclass(frozen=True)
class UrlSource(ShardedSource):
    """Files named by URL patterns; one file is one shard."""

    urls: tuple[str, ...]
    sizes: tuple[int | None, ...]
    text_key: str = "text"
    plaintext: bool = False
    skip_bad_lines: bool = False
    mtimes: tuple[str | None, ...] = ()
    """Each file's modification time when the patterns were expanded (`verify_shard`); not
    part of the fingerprint, so a touched or copied corpus still matches its cache."""
    regular: tuple[bool, ...] = ()
    """Whether each file was a regular file when the patterns were expanded: a named pipe's
    listed size (0) says nothing of what it holds, so `check_read` leaves it alone."""

    @staticmethod
    def from_patterns(
        patterns: Sequence[str],
        *,
        text_key: str = "text",
        plaintext: bool = False,
        skip_bad_lines: bool = False,
        field: str = "urls",
    ) -> UrlSource:
        found = _expand(patterns, field)
        if not found:
            raise SetupConfigError(f"{field}: no files given")
        for url, _, index in found:  # fail early on an unknown extension
            try:
                detect_format(url, plaintext)
            except ValueError as e:
                named = "" if url == patterns[index] else f" (from {patterns[index]!r})"
                raise SetupConfigError(f"{field}[{index}]{named}: {e}") from None
        return UrlSource(
            urls=tuple(u for u, _, _ in found),
            sizes=tuple(info.get("size") for _, info, _ in found),
            text_key=text_key,
            plaintext=plaintext,
            skip_bad_lines=skip_bad_lines,
            mtimes=tuple(file_modified(info) for _, info, _ in found),
            regular=tuple(info.get("type") != "other" for _, info, _ in found),
        )

    def shard_names(self) -> list[str]:
        return list(self.urls)

    def open_shard(self, index: int, on_bad_line=None, check=None, on_file=None):
        url = self.urls[index]
        fmt, compression = detect_format(url, self.plaintext)
        skip = self.skip_bad_lines
        if fmt == "json":
            return iter_json_lines(
                url, compression, self.text_key, skip, on_bad_line, check, on_file
            )
        if fmt == "text":
            return iter_text_lines(url, compression, skip, on_bad_line, check, on_file)
        return iter_parquet(url, self.text_key, skip, on_bad_line, check, on_file)

    def for_workers(self) -> UrlSource:
        return dataclasses.replace(self, urls=tuple(absolute_local(u) for u in self.urls))

    def check_read(self, index: int, stamp: dict | None) -> None:
        """The size of the file read must be the size listed: another size means the build
        read another file (a Ray worker that resolved the path in its own working directory,
        on another machine) or the file changed while the cache was built."""
        regular = self.regular[index] if index < len(self.regular) else True
        if stamp is None or not regular:
            return
        listed, read = self.sizes[index], stamp.get("size")
        if listed is None or read is None or listed == read:
            return
        raise ValueError(
            f"cache shard {index}: its source file {self.urls[index]} was {listed} bytes when "
            f"the sources were listed, but the file the build read was {read} bytes: the "
            "builder read another file (a Ray worker resolves a relative path in its own "
            "working directory, on its own machine) or the file changed during the build. The "
            "shard was not recorded; give the sources as absolute paths or URLs every worker "
            "can read, and leave the files alone while the cache is built"
        )

    def verify_shard(self, index: int, recorded: dict) -> dict | None:
        """A file whose modification time differs from the recorded one is hashed again: the
        same bytes (a touched or copied corpus) give the new stamp to record, other bytes are
        a `ValueError`. A size change already changes the fingerprint."""
        url = self.urls[index]
        mtime = self.mtimes[index] if index < len(self.mtimes) else None
        if mtime is None or mtime == recorded.get("mtime") or "blake2b" not in recorded:
            return None
        info, digest = file_checksum(url)
        if digest != recorded["blake2b"]:
            raise ValueError(
                f"the source file {url} changed since the cache was built from it: it is "
                f"{info.get('size')} bytes as before, but its contents differ (blake2b "
                f"{recorded['blake2b']} when the cache was built, {digest} now; modified "
                f"{recorded.get('mtime')} then, {file_modified(info)} now)"
            )
        logger.debug("%s was modified but holds the same bytes (blake2b %s)", url, digest)
        return {**recorded, "mtime": file_modified(info)}

    def shard_size(self, index: int) -> int | None:
        return self.sizes[index]

    def names_shard(self, index: int, name: str) -> bool:
        """Before glob matches kept their pattern's form, a relative glob's files were recorded
        as absolute paths (`/home/me/proj/data/a.jsonl` for `data/*.jsonl`): such a name
        stands for the relative one it ends in, in this directory or the one the project was
        moved from."""
        url = self.urls[index]
        return name == url or _absolute_form_of(name, url)

    def named_as(self, names: Sequence[str]) -> UrlSource | None:
        if len(names) != len(self.urls) or not all(
            self.names_shard(i, name) for i, name in enumerate(names)
        ):
            return None
        return dataclasses.replace(self, urls=tuple(names))

    def fingerprint(self) -> str:
        h = hashlib.sha256(
            f"urls text_key={self.text_key} plaintext={self.plaintext} skip={self.skip_bad_lines}\n".encode()
        )
        for url, size in zip(self.urls, self.sizes, strict=True):
            h.update(f"{url}\t{size}\n".encode())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        """The files and every setting the fingerprint covers, so two descriptions of
        different sources differ visibly (sizes excepted)."""
        first = self.urls[0] if self.urls else ""
        more = f" (+{len(self.urls) - 1} more)" if len(self.urls) > 1 else ""
        settings = [f"text_key={self.text_key!r}"]
        settings += [
            f"{name}=true" for name in ("plaintext", "skip_bad_lines") if getattr(self, name)
        ]
        return ", ".join([f"{first}{more}", *settings])


# ---------------------------------------------------------------------------- embedded corpus

BUILTIN_SOURCES = (corpus.STDLIB_SOURCE_NAME,)
STDLIB_FILES_PER_SHARD = 64


@dataclasses.dataclass(frozen=True)
class StdlibSource(ShardedSource):
    """The embedded corpus (Python standard library sources, see `lm.data.corpus`)."""

    split: str

    def _files(self) -> list[corpus.CorpusFile]:
        return corpus.corpus_files(self.split)

    def _shards(self) -> list[list[corpus.CorpusFile]]:
        files = self._files()
        n = max(1, math.ceil(len(files) / STDLIB_FILES_PER_SHARD))
        return [files[i * len(files) // n : (i + 1) * len(files) // n] for i in range(n)]

    def shard_names(self) -> list[str]:
        n = len(self._shards())
        return [f"stdlib:{self.split}:{i:05d}-of-{n:05d}" for i in range(n)]

    def open_shard(self, index: int, on_bad_line=None, check=None, on_file=None):
        return corpus.iter_documents(self._shards()[index])

    def fingerprint(self) -> str:
        return corpus.corpus_fingerprint(self.split)

    def describe(self) -> str:
        files = self._files()
        return (
            f"the embedded Python stdlib corpus ({self.split}: {len(files)} files, "
            f"{sum(f.size for f in files) / 1e6:.1f} MB from {corpus.stdlib_root()})"
        )
