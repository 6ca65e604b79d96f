"""Document sources: URL lists (fsspec), HF `datasets`, and the embedded corpus.

A source is a list of named shards; each shard yields documents (a string, or a list of
token ids for `passthrough`). Sources are plain picklable dataclasses, so a cache builder
can send one shard's recipe to a Ray worker, which opens the shard itself.

URLs: each entry of `train_urls`/`validation_urls` is brace-expanded (`{1..128}`,
`{001..128}`, `{a,b}`), then globbed if it contains `*`, `?` or `[` (any fsspec
filesystem: local paths, `file://`, `memory://`, `gs://`, `s3://`, `https://`). An
empty glob or a missing file is an error. Formats, by extension:

| extension | documents |
|---|---|
| `.jsonl`, `.json` (+ `.gz`, `.zst`/`.zstd`) | one JSON object per line, text under `text_key` |
| `.txt` (+ compression), or any file with `plaintext: true` | one document per non-empty line |
| `.parquet` | the `text_key` column, one row per document |

A malformed JSON line is an error naming the file and line number, or with
`skip_bad_lines: true` it is skipped and counted (the cache ledger records the count).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import braceexpand
import fsspec

from lm.data import corpus

logger = logging.getLogger(__name__)

Document = Any
"""A `str` (text) or a sequence of ints (pre-tokenized, for `passthrough`)."""

_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
_JSON_EXTS = (".jsonl", ".json", ".ndjson")
_TEXT_EXTS = (".txt", ".text")
_PARQUET_EXTS = (".parquet",)
SUPPORTED_FORMATS = "jsonl/json/ndjson, txt, parquet (jsonl and txt optionally .gz/.zst/.bz2/.xz)"


class ShardedSource(abc.ABC):
    """A named list of shards, each an iterable of documents."""

    @abc.abstractmethod
    def shard_names(self) -> list[str]: ...

    @abc.abstractmethod
    def open_shard(
        self, index: int, on_bad_line: Callable[[str], None] | None = None
    ) -> Iterator[Document]:
        """The documents of shard `index`. `on_bad_line(message)` is called per skipped line."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A hash that changes when the documents would change."""

    @abc.abstractmethod
    def describe(self) -> str: ...


# ---------------------------------------------------------------------------- URLs


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def expand_urls(patterns: Sequence[str], *, field: str = "urls") -> list[tuple[str, int | None]]:
    """Brace-expand and glob URL patterns into (url, size in bytes or None) pairs.

    Raises:
        ValueError: a pattern matches no file, or a named file does not exist.
    """
    out: list[tuple[str, int | None]] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{field}: every entry must be a non-empty string, got {pattern!r}")
        for url in braceexpand.braceexpand(pattern):
            fs, path = fsspec.core.url_to_fs(url)
            if _has_glob(path):
                matches = sorted(fs.glob(path))
                if not matches:
                    raise ValueError(f"{field}: the glob {url!r} matched no files")
                for m in matches:
                    info = fs.info(m)
                    if info.get("type") == "directory":
                        continue
                    out.append((_with_protocol(fs, url, m), info.get("size")))
            else:
                try:
                    info = fs.info(path)
                except FileNotFoundError:
                    raise ValueError(
                        f"{field}: missing shard {url!r} (from pattern {pattern!r})"
                    ) from None
                if info.get("type") == "directory":
                    raise ValueError(
                        f"{field}: {url!r} is a directory; give files or a glob like '{url.rstrip('/')}/*.jsonl.gz'"
                    )
                out.append((url, info.get("size")))
    return out


def _with_protocol(fs, original: str, path: str) -> str:
    if "://" not in original:
        return path
    return fs.unstrip_protocol(path)


def detect_format(url: str, plaintext: bool = False) -> tuple[str, str | None]:
    """(format, compression) of a URL from its extension: format is json, text or parquet."""
    name = url.rsplit("/", 1)[-1].lower()
    compression = None
    for ext, comp in _COMPRESSIONS.items():
        if name.endswith(ext):
            compression = comp
            name = name[: -len(ext)]
            break
    if plaintext:
        return "text", compression
    if name.endswith(_JSON_EXTS):
        return "json", compression
    if name.endswith(_TEXT_EXTS):
        return "text", compression
    if name.endswith(_PARQUET_EXTS) and compression is None:
        return "parquet", None
    raise ValueError(
        f"cannot tell the format of {url!r} from its extension; supported: {SUPPORTED_FORMATS}. "
        "Set plaintext: true to read any file as one document per line."
    )


def _iter_json_lines(
    url: str, compression: str | None, text_key: str, skip_bad_lines: bool, on_bad_line
) -> Iterator[Document]:
    with fsspec.open(url, "rt", compression=compression, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            problem = None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                problem = f"{url}:{line_no}: malformed JSON ({e.msg} at column {e.colno})"
            else:
                if not isinstance(record, dict):
                    problem = (
                        f"{url}:{line_no}: expected a JSON object, got {type(record).__name__}"
                    )
                elif text_key not in record:
                    keys = ", ".join(sorted(record)[:10])
                    problem = f"{url}:{line_no}: no key {text_key!r} (text_key); keys: {keys}"
            if problem is not None:
                if not skip_bad_lines:
                    raise ValueError(problem + " (set skip_bad_lines: true to skip such lines)")
                if on_bad_line is not None:
                    on_bad_line(problem)
                continue
            yield record[text_key]


def _iter_text_lines(url: str, compression: str | None) -> Iterator[Document]:
    with fsspec.open(url, "rt", compression=compression, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                yield line


def _iter_parquet(url: str, text_key: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if text_key not in names:
            raise ValueError(
                f"{url}: no column {text_key!r} (text_key); columns: {', '.join(names)}"
            )
        for batch in pf.iter_batches(columns=[text_key], batch_size=1024):
            yield from batch.column(0).to_pylist()


@dataclasses.dataclass(frozen=True)
class UrlSource(ShardedSource):
    """Files named by URL patterns; one file is one shard."""

    urls: tuple[str, ...]
    sizes: tuple[int | None, ...]
    text_key: str = "text"
    plaintext: bool = False
    skip_bad_lines: bool = False

    @staticmethod
    def from_patterns(
        patterns: Sequence[str],
        *,
        text_key: str = "text",
        plaintext: bool = False,
        skip_bad_lines: bool = False,
        field: str = "urls",
    ) -> UrlSource:
        found = expand_urls(patterns, field=field)
        if not found:
            raise ValueError(f"{field}: no files given")
        for url, _ in found:
            detect_format(url, plaintext)  # fail early on an unknown extension
        return UrlSource(
            urls=tuple(u for u, _ in found),
            sizes=tuple(s for _, s in found),
            text_key=text_key,
            plaintext=plaintext,
            skip_bad_lines=skip_bad_lines,
        )

    def shard_names(self) -> list[str]:
        return list(self.urls)

    def open_shard(self, index: int, on_bad_line=None) -> Iterator[Document]:
        url = self.urls[index]
        fmt, compression = detect_format(url, self.plaintext)
        if fmt == "json":
            return _iter_json_lines(
                url, compression, self.text_key, self.skip_bad_lines, on_bad_line
            )
        if fmt == "text":
            return _iter_text_lines(url, compression)
        return _iter_parquet(url, self.text_key)

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


# ---------------------------------------------------------------------------- HF datasets

ROWS_PER_HF_SHARD = 10_000
MAX_HF_SHARDS = 256


def _load_hf_split(id: str, name: str | None, split: str):
    import datasets

    path = os.path.expanduser(id[len("file://") :] if id.startswith("file://") else id)
    if os.path.isdir(path):
        saved = os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(
            os.path.join(path, "state.json")
        )
        if saved:
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(
                        f"HF dataset {id!r} has no split {split!r}; splits: {', '.join(ds)}"
                    )
                ds = ds[split]
            return ds
        try:
            return datasets.load_dataset(path, name, split=split)
        except ValueError as e:
            raise ValueError(f"HF dataset directory {id!r}, split {split!r}: {e}") from e
    try:
        return datasets.load_dataset(id, name, split=split)
    except ValueError as e:
        if "split" in str(e).lower():
            raise ValueError(f"HF dataset {id!r}: {e}") from e
        raise _offline_error(id, e) from e
    except Exception as e:  # connection errors come in many types (requests, httpx, OSError)
        raise _offline_error(id, e) from e


def _offline_error(id: str, e: Exception) -> ValueError:
    return ValueError(
        f"HF dataset {id!r} is not a local directory and could not be loaded from the HF cache "
        f"or the hub ({type(e).__name__}: {e}). Without network access, point id at a local "
        "dataset directory (datasets.save_to_disk or a folder of data files), or pre-download "
        "it into the HF cache."
    )


@dataclasses.dataclass(frozen=True)
class HfSource(ShardedSource):
    """One split of an HF `datasets` dataset, cut into contiguous row-range shards."""

    id: str
    name: str | None
    split: str
    text_key: str = "text"
    num_rows: int = 0
    data_fingerprint: str = ""

    @staticmethod
    def load(id: str, name: str | None, split: str, text_key: str = "text") -> HfSource:
        ds = _load_hf_split(id, name, split)
        if text_key not in ds.column_names:
            raise ValueError(
                f"HF dataset {id!r} split {split!r} has no column {text_key!r} (text_key); "
                f"columns: {', '.join(ds.column_names)}"
            )
        return HfSource(id, name, split, text_key, len(ds), ds._fingerprint)

    @property
    def num_shards(self) -> int:
        return max(1, min(MAX_HF_SHARDS, math.ceil(self.num_rows / ROWS_PER_HF_SHARD)))

    def shard_names(self) -> list[str]:
        n = self.num_shards
        return [f"hf:{self.id}:{self.name or ''}:{self.split}:{i:05d}-of-{n:05d}" for i in range(n)]

    def open_shard(self, index: int, on_bad_line=None) -> Iterator[Document]:
        ds = _load_hf_split(self.id, self.name, self.split)
        shard = ds.shard(num_shards=self.num_shards, index=index, contiguous=True)
        for batch in shard.select_columns([self.text_key]).iter(batch_size=1024):
            yield from batch[self.text_key]

    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"hf {self.id} {self.name} {self.split} {self.text_key} {self.num_rows} "
            f"{self.data_fingerprint}".encode()
        ).hexdigest()[:16]

    def describe(self) -> str:
        name = f" ({self.name})" if self.name else ""
        return (
            f"HF dataset {self.id}{name} split {self.split}, text_key={self.text_key!r}, "
            f"{self.num_rows} rows"
        )


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

    def open_shard(self, index: int, on_bad_line=None) -> Iterator[Document]:
        return corpus.iter_documents(self._shards()[index])

    def fingerprint(self) -> str:
        return corpus.corpus_fingerprint(self.split)

    def describe(self) -> str:
        files = self._files()
        return (
            f"the embedded Python stdlib corpus ({self.split}: {len(files)} files, "
            f"{sum(f.size for f in files) / 1e6:.1f} MB from {corpus.stdlib_root()})"
        )
