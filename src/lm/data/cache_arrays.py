"""The tokenized cache's storage: growing 1-D zarr3 arrays in TensorStore, chunked and
zstd-compressed, every chunk stored with a crc32c checksum, opened in one context per process."""

from __future__ import annotations

import os
import threading

import numpy as np
import tensorstore as ts

_CONTEXT: ts.Context | None = None
_CONTEXT_LOCK = threading.Lock()


def context() -> ts.Context:
    """One TensorStore context per process: a shared chunk cache, and `memory://` stores
    that outlive a single open."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            _CONTEXT = ts.Context({"cache_pool": {"total_bytes_limit": 256 << 20}})
        return _CONTEXT


def kvstore_url(url: str) -> str:
    if "://" not in url:
        return "file://" + os.path.abspath(os.path.expanduser(url))
    return url


def join_url(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def _array_spec(url: str, dtype: str, chunk: int) -> dict:
    return {
        "driver": "zarr3",
        "kvstore": kvstore_url(url),
        "metadata": {
            "shape": [0],
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk]}},
            "codecs": [
                {"name": "bytes", "configuration": {"endian": "little"}},
                {"name": "zstd", "configuration": {"level": 1}},
                {"name": "crc32c"},
            ],
        },
        # A chunk of zeros is stored too, so a chunk that is not there is always damage.
        "store_data_equal_to_fill_value": True,
    }


def create_array(url: str, dtype: str, chunk: int) -> ts.TensorStore:
    return ts.open(
        _array_spec(url, dtype, chunk), create=True, delete_existing=True, context=context()
    ).result()


def open_array(url: str) -> ts.Future:
    """Open a cache array for reading; a missing chunk is an error when read, never zeros."""
    spec = {"driver": "zarr3", "kvstore": kvstore_url(url), "fill_missing_data_reads": False}
    return ts.open(spec, open=True, read=True, context=context())


def chunk_keys(array: ts.TensorStore) -> list[str]:
    """The keys of every chunk a 1-D array's shape implies, relative to its directory."""
    encoding = array.spec().to_json()["metadata"].get("chunk_key_encoding", {})
    separator = encoding.get("configuration", {}).get("separator", "/")
    prefix = "" if encoding.get("name") == "v2" else f"c{separator}"
    (chunk,) = array.chunk_layout.read_chunk.shape
    return [f"{prefix}{i}" for i in range(-(-array.shape[0] // chunk))]


class Appender:
    """Appends to a growing 1-D TensorStore array."""

    def __init__(self, array: ts.TensorStore):
        self.array = array
        self.size = 0

    def append(self, data: np.ndarray) -> None:
        if data.size == 0:
            return
        end = self.size + data.size
        self.array = self.array.resize(exclusive_max=[end], expand_only=True).result()
        self.array[self.size : end].write(data).result()
        self.size = end
