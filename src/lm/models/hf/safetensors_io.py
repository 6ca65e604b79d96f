"""Reading and writing the safetensors format with numpy, bfloat16 included.

The `safetensors` package's numpy/flax bindings cannot represent bfloat16 (numpy has no
such dtype); this reader/writer uses `ml_dtypes` for it, so bf16 checkpoints load without
torch. Format: an 8-byte little-endian header length, a JSON header mapping each tensor
name to its dtype, shape and [begin, end) byte offsets into the data that follows (plus an
optional "__metadata__" string map), then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import BinaryIO

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def load_bytes(data: bytes, *, source: str = "safetensors data") -> dict[str, np.ndarray]:
    """Parse a safetensors file's bytes into name -> numpy array (views into `data`)."""
    header_len = _header_length(data[:8], len(data), source)
    entries = _entries(data[8 : 8 + header_len], len(data) - 8 - header_len, source)
    buffer = memoryview(data)[8 + header_len :]
    return {
        name: np.frombuffer(buffer[begin:end], dtype=dtype).reshape(shape)
        for name, (dtype, shape, begin, end) in entries.items()
    }


def read_shapes(f: BinaryIO, size: int, *, source: str) -> dict[str, tuple[np.dtype, tuple]]:
    """Name -> (dtype, shape) of a safetensors file open as `f` (`size` bytes long), from its
    header alone; the same checks as `load_bytes` (every tensor's bytes within the file), so a
    truncated or malformed file fails here without its data being read."""
    header_len = _header_length(f.read(8), size, source)
    entries = _entries(f.read(header_len), size - 8 - header_len, source)
    return {name: (dtype, shape) for name, (dtype, shape, _, _) in entries.items()}


def _header_length(prefix: bytes, size: int, source: str) -> int:
    if len(prefix) < 8 or size < 8:
        raise ValueError(
            f"{source}: not a safetensors file (shorter than its 8-byte header length)"
        )
    (header_len,) = struct.unpack("<Q", prefix)
    if 8 + header_len > size:
        raise ValueError(f"{source}: truncated safetensors header ({header_len} bytes declared)")
    return header_len


def _entries(header_bytes: bytes, data_len: int, source: str) -> dict[str, tuple]:
    """Name -> (dtype, shape, begin, end) of a header whose data section is `data_len` bytes."""
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{source}: malformed safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{source}: malformed safetensors header: not a JSON object")
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            shape, begin, end = tuple(int(n) for n in shape), int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{source}: malformed safetensors header entry for tensor {name!r}: {info!r}"
            ) from None
        dtype = _DTYPES.get(dtype_name)
        if dtype is None:
            raise ValueError(f"{source}: tensor {name!r} has unsupported dtype {dtype_name}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if begin < 0 or end - begin != expected or end > data_len:
            raise ValueError(f"{source}: tensor {name!r} has inconsistent offsets {begin}..{end}")
        entries[name] = (dtype, shape, begin, end)
    return entries


def save_bytes(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise name -> array to safetensors bytes (C order, little endian)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        name_of_dtype = _NAMES.get(array.dtype)
        if name_of_dtype is None:
            raise ValueError(
                f"tensor {name!r}: dtype {array.dtype} cannot be stored in safetensors"
            )
        raw = array.tobytes()
        header[name] = {
            "dtype": name_of_dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    return struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(chunks)
