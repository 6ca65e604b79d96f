"""Reading one file into documents: JSON lines, plain text lines, parquet columns.

Each reader yields documents and turns a bad line (malformed JSON, invalid UTF-8, no
`text_key`, a value `check` rejects) into a `ValueError` naming the file and line (the row
for parquet), or with `skip_bad_lines` reports it to `on_bad_line` and goes on. A lone UTF-16
surrogate in a JSON string (`"\\ud800"`: valid JSON, but not text any tokenizer can take)
is replaced with U+FFFD, and the file logs how many lines it replaced.

While a reader goes through a file it hashes the file's bytes (blake2b), and once it has
read the file to its end it calls `on_file({"size", "mtime", "blake2b"})`: what the cache
ledger records to tell later whether the file still holds the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import lzma
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import fsspec.compression

from lm.fs import is_local_filesystem

logger = logging.getLogger(__name__)

Document = Any
"""A `str` (text) or a sequence of ints (pre-tokenized, for `passthrough`)."""

DocumentCheck = Callable[[Any], "str | None"]
"""`check(document)`: why the tokenizer cannot take `document` (its type, say), or None."""

_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
_JSON_EXTS = (".jsonl", ".json", ".ndjson")
_TEXT_EXTS = (".txt", ".text")
_PARQUET_EXTS = (".parquet",)
SUPPORTED_FORMATS = "jsonl/json/ndjson, txt, parquet (jsonl and txt optionally .gz/.zst/.bz2/.xz)"
SKIP_HINT = " (set skip_bad_lines: true to skip such lines)"
# A lone UTF-16 surrogate: what a JSON "\ud800" escape decodes to, and what the
# surrogateescape error handler makes of each byte that is not UTF-8 (U+DC80..U+DCFF).
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_REPLACEMENT_CHAR = "\ufffd"
_HASH_BLOCK = 4 << 20


def file_modified(info: dict) -> str | None:
    """A file's modification time as the filesystem reports it (local: `mtime`; s3fs:
    `LastModified`; gcsfs: `updated`; memory: `created`), as text; None if it has none."""
    for key in ("mtime", "LastModified", "updated", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return None


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


class _HashingReader(io.RawIOBase):
    """The bytes of a binary file, hashed (blake2b) and counted as they are read."""

    def __init__(self, f):
        self.f = f
        # read1 returns what is there (a pipe's data as it arrives) instead of waiting for more
        self._read = getattr(f, "read1", None) or f.read
        self.hash = hashlib.blake2b(digest_size=16)
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._read(len(b))
        n = len(data)
        b[:n] = data
        self.hash.update(data)
        self.size += n
        return n


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a zstd file of one or more frames, which ends in an error if
    the file stops inside a frame. zstandard's `stream_reader` (what fsspec uses) ends such
    a file quietly, so a truncated `.zst` read as a shorter corpus."""

    _CHUNK = 1 << 16

    def __init__(self, source):
        import zstandard

        self._new = zstandard.ZstdDecompressor().decompressobj
        self._source = source
        self._frame = self._new()
        self._in_frame = False  # part of a frame was read, and its end not yet
        self._out = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos == len(self._out):
            data = self._source.read(self._CHUNK)
            if not data:
                if self._in_frame:
                    raise EOFError("the file ends inside a zstd frame (it is truncated)")
                return 0
            self._out, self._pos = self._decompress(data), 0
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _decompress(self, data: bytes) -> bytes:
        parts = []
        while data:
            parts.append(self._frame.decompress(data))
            if not self._frame.eof:
                self._in_frame = True
                break
            data = self._frame.unused_data  # the next frame's first bytes, if any
            self._frame = self._new()
            self._in_frame = False
        return b"".join(parts)


def _zstd_error() -> type[Exception]:
    try:
        import zstandard
    except ImportError:  # .zst files then fail to open, with fsspec's message
        return EOFError
    return zstandard.ZstdError


_DECOMPRESSION_ERRORS = (EOFError, OSError, lzma.LZMAError, zlib.error, _zstd_error())


def _decompressed(buffered, compression: str):
    if compression == "zstd":
        return io.BufferedReader(_ZstdFrames(buffered), 1 << 20)
    return fsspec.compression.compr[compression](buffered, mode="rb")


def _stamp(info: dict, size: int, digest: str) -> dict:
    return {"size": size, "mtime": file_modified(info), "blake2b": digest}


def _read_lines(url: str, compression: str | None, errors: str, on_file) -> Iterator[str]:
    """The text lines of a file, decompressed; `on_file(stamp)` once it is read to its end,
    with a checksum of its (compressed) bytes."""
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    # A local file is opened directly: fsspec's local files seek to their end first, which a
    # named pipe cannot.
    local = is_local_filesystem(fs)
    with open(path, "rb", buffering=0) if local else fs.open(path, "rb") as raw:
        hashing = _HashingReader(raw)
        buffered = io.BufferedReader(hashing, 1 << 20)
        stream = buffered
        if compression is not None:
            stream = _decompressed(buffered, compression)
        # utf-8-sig: a byte-order mark at the start (as Windows editors write) is dropped, not
        # kept as U+FEFF in the first document or rejected by the JSON parser
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors=errors)
        try:
            yield from text
        except _DECOMPRESSION_ERRORS as e:
            if compression is None:
                raise
            # a truncated or damaged compressed file: Python's message names no file
            raise ValueError(
                f"{url}: cannot decompress it as {compression} ({type(e).__name__}: {e}); the "
                "file is truncated or damaged, or not compressed as its name says"
            ) from None
        while buffered.read(_HASH_BLOCK):  # bytes after the end of a compressed stream
            pass
    if on_file is not None:
        on_file(_stamp(info, hashing.size, hashing.hash.hexdigest()))


def file_checksum(url: str) -> tuple[dict, str]:
    """(fsspec info, blake2b hex digest) of the file at `url`, read from start to end."""
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    h = hashlib.blake2b(digest_size=16)
    with fs.open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return info, h.hexdigest()


def bad_line(problem: str, skip_bad_lines: bool, on_bad_line) -> None:
    """Raise for a bad line, or report it when `skip_bad_lines`."""
    if not skip_bad_lines:
        raise ValueError(problem + SKIP_HINT)
    if on_bad_line is not None:
        on_bad_line(problem)


def _invalid_utf8(line: str) -> str | None:
    """Where `line` (decoded with surrogateescape) held bytes that are not UTF-8, or None."""
    if line.isascii():
        return None
    m = _ESCAPED_BYTE.search(line)
    if m is None:
        return None
    byte = ord(m.group()) - 0xDC00
    return f"invalid UTF-8 (byte 0x{byte:02x} at column {m.start() + 1})"


def iter_json_lines(
    url: str,
    compression: str | None,
    text_key: str,
    skip_bad_lines: bool,
    on_bad_line,
    check: DocumentCheck | None = None,
    on_file=None,
) -> Iterator[Document]:
    replaced = 0
    for line_no, line in enumerate(_read_lines(url, compression, "surrogateescape", on_file), 1):
        if not line.strip():
            continue
        problem = None
        bad_bytes = _invalid_utf8(line)
        if bad_bytes is not None:
            problem = f"{url}:{line_no}: {bad_bytes}"
        else:
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
        if problem is None:
            doc = record[text_key]
            if isinstance(doc, str) and not doc.isascii() and _SURROGATE.search(doc):
                doc = _SURROGATE.sub(_REPLACEMENT_CHAR, doc)
                replaced += 1
                if replaced <= 3:
                    logger.warning(
                        "%s:%d: replaced lone UTF-16 surrogates (a JSON \\uD800-\\uDFFF escape "
                        "that is not half of a pair) with U+FFFD",
                        url,
                        line_no,
                    )
            why = check(doc) if check is not None else None
            if why is None:
                yield doc
                continue
            problem = f"{url}:{line_no}: {why} (text_key {text_key!r})"
        bad_line(problem, skip_bad_lines, on_bad_line)
    if replaced:
        logger.warning("%s: replaced lone UTF-16 surrogates with U+FFFD in %d lines", url, replaced)


def iter_text_lines(
    url: str,
    compression: str | None,
    skip_bad_lines=False,
    on_bad_line=None,
    check=None,
    on_file=None,
) -> Iterator[Document]:
    for line_no, line in enumerate(_read_lines(url, compression, "surrogateescape", on_file), 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        why = _invalid_utf8(line)
        if why is None and check is not None:
            why = check(line)
        if why is None:
            yield line
        else:
            bad_line(f"{url}:{line_no}: {why}", skip_bad_lines, on_bad_line)


def iter_parquet(
    url: str, text_key: str, skip_bad_lines=False, on_bad_line=None, check=None, on_file=None
) -> Iterator[Document]:
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if text_key not in names:
            raise ValueError(
                f"{url}: no column {text_key!r} (text_key); columns: {', '.join(names)}"
            )
        row = 0  # from 0, as pyarrow and pandas number them
        for batch in pf.iter_batches(columns=[text_key], batch_size=1024):
            for doc in batch.column(0).to_pylist():
                why = check(doc) if check is not None else None
                if why is None:
                    yield doc
                else:
                    problem = f"{url}: row {row}: {why} (column {text_key!r})"
                    bad_line(problem, skip_bad_lines, on_bad_line)
                row += 1
    if on_file is not None:
        # parquet is read by column chunks, not start to end: the checksum is one more pass
        info, digest = file_checksum(url)
        on_file(_stamp(info, info.get("size"), digest))
