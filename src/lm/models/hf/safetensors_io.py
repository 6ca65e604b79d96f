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
    if len(data) < 8:
        raise ValueError(
            f"{source}: not a safetensors file (shorter than its 8-byte header length)"
        )
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise ValueError(f"{source}: truncated safetensors header ({header_len} bytes declared)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: malformed safetensors header: {e}") from None
    buffer = memoryview(data)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{source}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != expected or end > len(buffer):
            raise ValueError(f"{source}: tensor {name!r} has inconsistent offsets {begin}..{end}")
        tensors[name] = np.frombuffer(buffer[begin:end], dtype=dtype).reshape(shape)
    return tensors


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
