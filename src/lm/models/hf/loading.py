"""Read Hugging Face checkpoint directories: `config.json` and the weights.

A checkpoint directory (local path or any fsspec URL) holds `config.json`, the weights as
`model.safetensors`, sharded `model-XXXXX-of-YYYYY.safetensors` + `model.safetensors.index.json`,
or (old checkpoints) `pytorch_model.bin` / `pytorch_model.bin.index.json`, and usually the
tokenizer files. `.bin` files are read with `torch.load(weights_only=True)`, which refuses
arbitrary pickled objects.

A path that is neither an existing directory nor a URL, and looks like `org/name`, is taken
as a Hugging Face Hub repo id and fetched with `huggingface_hub` (honouring
`HF_HUB_OFFLINE`). Everything else that is missing is an error naming the missing file.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
from collections.abc import Mapping

import fsspec
import ml_dtypes
import numpy as np

from lm.hf_files import TOKENIZER_FILES
from lm.models.hf import safetensors_io

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


def read_hf_config(path: str):
    """Parse `<path>/config.json` into its `transformers` config class."""
    from transformers import CONFIG_MAPPING

    path = _resolve(path)
    config_path = _join(path, CONFIG_FILE)
    raw = _read(config_path)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type is None:
        raise ValueError(f"{config_path} has no model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{config_path}: unknown HF model_type {model_type!r}")
    try:
        return CONFIG_MAPPING[model_type].from_dict(data)
    except Exception as e:  # transformers' own checks: missing rope keys, a field's type, ...
        raise ValueError(
            f"{config_path}: transformers cannot read it as a {model_type!r} config "
            f"({type(e).__name__}: {' '.join(str(e).split())})"
        ) from None


def read_hf_weights(path: str, *, shapes_only: bool = False) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a checkpoint directory, and a description of where they came from.

    With `shapes_only`, safetensors files are checked from their headers alone (every tensor's
    bytes within its file) and their tensors are stand-ins of the right shape and dtype that
    hold no memory (`np.broadcast_to` of one zero): a cheap check of the whole checkpoint's
    names and shapes. Torch pickles have no header and are read in full either way.
    """
    path = _resolve(path)
    fs, root = fsspec.core.url_to_fs(path)
    read_safetensors = _safetensors_shapes if shapes_only else _read_safetensors
    read_torch = _torch_shapes if shapes_only else _read_torch
    for index_name, reader in ((SAFETENSORS_INDEX, read_safetensors), (TORCH_INDEX, read_torch)):
        index_path = posixpath.join(root, index_name)
        if fs.exists(index_path):
            try:
                weight_map = json.loads(_read(_join(path, index_name)))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{_join(path, index_name)} is not a valid weight index: {e!r}"
                ) from None
            tensors: dict[str, np.ndarray] = {}
            for shard in sorted(set(weight_map.values())):
                tensors.update(reader(_join(path, shard)))
            missing = sorted(k for k in weight_map if k not in tensors)
            if missing:
                raise ValueError(
                    f"{_join(path, index_name)} lists tensors its shards lack: {missing[:8]}"
                )
            return tensors, _join(path, index_name)
    for file_name, reader in ((SAFETENSORS_FILE, read_safetensors), (TORCH_FILE, read_torch)):
        if fs.exists(posixpath.join(root, file_name)):
            return reader(_join(path, file_name)), _join(path, file_name)
    raise FileNotFoundError(
        f"no weights in {path}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {TORCH_FILE} or {TORCH_INDEX}"
    )


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    return safetensors_io.load_bytes(_read(path), source=path)


def _safetensors_shapes(path: str) -> dict[str, np.ndarray]:
    try:
        with fsspec.open(path, "rb") as f:
            size = f.seek(0, io.SEEK_END)
            f.seek(0)
            return _stand_ins(safetensors_io.read_shapes(f, size, source=path))
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file: {path}") from None


def _torch_shapes(path: str) -> dict[str, np.ndarray]:
    tensors = None
    if "://" not in path and os.path.isfile(path):
        try:  # memory-mapped: only the pickle is read, not the tensors' pages
            tensors = _read_torch(path, mmap=True)
        except ValueError:
            pass  # an old (non-zip) torch file, or a bad one: the full read tells which
    if tensors is None:
        tensors = _read_torch(path)
    return _stand_ins({name: (t.dtype, t.shape) for name, t in tensors.items()})


def _stand_ins(shapes: Mapping[str, tuple[np.dtype, tuple]]) -> dict[str, np.ndarray]:
    """Arrays of these dtypes and shapes that hold no memory (one zero, broadcast)."""
    return {
        name: np.broadcast_to(np.zeros((), dtype), shape) for name, (dtype, shape) in shapes.items()
    }


def _read_torch(path: str, *, mmap: bool = False) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path} is a torch pickle; reading it needs torch installed") from None
    try:
        source = path if mmap else io.BytesIO(_read(path))
        state = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises UnpicklingError and friends for disallowed objects
        raise ValueError(
            f"{path}: refusing to load (only plain tensors are allowed, weights_only=True): {e}"
        ) from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    out = {}
    for name, tensor in state.items():
        if tensor.dtype == torch.bfloat16:
            out[name] = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[name] = tensor.numpy()
    return out


def _resolve(path: str) -> str:
    """A local path or URL as is; an `org/name` that is not a local directory from the hub."""
    if "://" in path or os.path.exists(path) or not _REPO_ID.match(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        patterns = [
            CONFIG_FILE,
            GENERATION_CONFIG_FILE,
            "*.safetensors",
            SAFETENSORS_INDEX,
            TORCH_FILE,
            TORCH_INDEX,
            *TOKENIZER_FILES,
        ]
        return snapshot_download(path, allow_patterns=patterns)
    except Exception as e:
        raise FileNotFoundError(
            f"{path!r} is not a local directory, and fetching it as a Hugging Face Hub repo failed: {e}"
        ) from None


def _join(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name


def _read(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file: {path}") from None
