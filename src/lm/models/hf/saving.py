"""Write Hugging Face checkpoint directories: the checks on the output directory, the
config.json an export writes (the tokenizer's special-token ids, and what it keeps of the
checkpoint the model started from), the weights in safetensors shards, and file writes that
never leave a file cut short.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from lm.models.hf import safetensors_io
from lm.models.hf.loading import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    _join,
    _read,
    _resolve,
    read_hf_config,
)
from lm.models.lm_model import LmHeadModel

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = 5 * 1000**3
"""5 GB, as HF `save_pretrained` writes shards."""
SPECIAL_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
"""The config.json fields an export takes from the tokenizer."""


def check_output_dir(output_dir: str) -> None:
    """Raise a `ValueError` if `output_dir` (local path or fsspec URL) cannot become an
    export directory: it is a file, (a local path) a folder on its way is one, or it holds
    lm checkpoints: it is a checkpoint (`step-N`) or a run's checkpoint directory (a `step-N`
    folder in it has a metadata.json or manifest.json)."""
    from lm.checkpoint.storage import MANIFEST_FILE, METADATA_FILE, STEP_DIR_RE
    from lm.fs import cannot_write_directory, local_path

    fs, root = fsspec.core.url_to_fs(output_dir)
    if local_path(output_dir) is not None:
        why = cannot_write_directory(output_dir)
    else:
        why = f"{output_dir} is a file, not a directory" if fs.isfile(root) else None
    if why is not None:
        raise ValueError(f"output_dir: {why}; give a new or existing directory you can write to")
    for marker in (METADATA_FILE, MANIFEST_FILE):
        if fs.exists(posixpath.join(root, marker)):
            raise ValueError(
                f"output_dir: {output_dir} holds an lm checkpoint ({marker}); export to "
                "another directory"
            )
    if not fs.isdir(root):
        return
    for path in sorted(fs.ls(root, detail=False)):
        name = posixpath.basename(path.rstrip("/"))
        if not STEP_DIR_RE.match(name):
            continue
        for marker in (METADATA_FILE, MANIFEST_FILE):
            if fs.exists(posixpath.join(root, name, marker)):
                raise ValueError(
                    f"output_dir: {output_dir} is a run's checkpoint directory: it holds lm "
                    f"checkpoints ({name}/{marker}); export to another directory"
                )


_WEIGHT_FILE = re.compile(
    r"^(model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"
    r"|pytorch_model(-\d+-of-\d+)?\.bin|pytorch_model\.bin\.index\.json)$"
)


def _remove_stale_weights(fs, root: str, *, keep: set[str]) -> None:
    """Delete weight files an earlier export left in `root` that this one did not write.

    A single-file export over a sharded one would otherwise leave the old index beside the
    new `model.safetensors` (and the other way round), and HF and lm would each load a
    different model from the folder. `save_pretrained` in transformers does the same."""
    for path in fs.ls(root, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        if _WEIGHT_FILE.match(name) and name not in keep:
            fs.rm(path)
            logger.info("Removed %s, left by an earlier export to %s", name, root)


def special_token_ids(tokenizer: Any) -> dict[str, int | None]:
    """An HF tokenizer's BOS, EOS and PAD ids (None for a token it lacks), by config field."""
    ids: dict[str, int | None] = {}
    for name in SPECIAL_TOKEN_IDS:
        value = getattr(tokenizer, name, None)
        ids[name] = None if value is None else int(value)
    return ids


@dataclasses.dataclass(frozen=True)
class _SourceCheckpoint:
    """What an export carries over from the HF checkpoint a model was initialized from."""

    path: str | None = None
    hf_config: Any = None
    generation_config: bytes | None = None

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def read(path: str | None) -> _SourceCheckpoint:
        """The source's config and generation config, read once per process: a run that
        exports every hf_save_steps does not go back to the hub (or the store) each time."""
        if path is None:
            return _SourceCheckpoint()
        local = _resolve(path)
        generation = _join(local, GENERATION_CONFIG_FILE)
        fs, root = fsspec.core.url_to_fs(local)
        exists = fs.exists(posixpath.join(root, GENERATION_CONFIG_FILE))
        return _SourceCheckpoint(path, read_hf_config(local), _read(generation) if exists else None)

    def token_ids(self, name: str) -> int | list[int] | None:
        value = getattr(self.hf_config, name, None) if self.hf_config is not None else None
        if isinstance(value, (list, tuple)):
            return [int(v) for v in value]
        return None if value is None else int(value)

    def generation_config_for(self, vocab_size: int) -> bytes | None:
        """The source's generation_config.json, unless a token id in it lies outside the
        vocabulary (then it is left out, with a warning)."""
        if self.generation_config is None:
            return None
        try:
            data = json.loads(self.generation_config)
        except json.JSONDecodeError as e:
            logger.warning(
                "Not copying %s's %s: not valid JSON (%s)", self.path, GENERATION_CONFIG_FILE, e
            )
            return None
        outside = {
            k: v for k, v in data.items() if k.endswith("token_id") and not _inside(v, vocab_size)
        }
        if outside:
            logger.warning(
                "Not copying %s's %s: %s outside the exported vocabulary (0..%d)",
                self.path,
                GENERATION_CONFIG_FILE,
                ", ".join(f"{k}={v}" for k, v in outside.items()),
                vocab_size - 1,
            )
            return None
        return self.generation_config


def _inside(value: Any, vocab_size: int) -> bool:
    """Whether a token id (an int, a list of them, or None) lies inside the vocabulary."""
    if value is None:
        return True
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(isinstance(v, int) and 0 <= v < vocab_size for v in values)


def _hf_config(
    model: LmHeadModel,
    tokenizer: Any,
    config_overrides: Mapping[str, Any] | None,
    source: _SourceCheckpoint,
):
    """The model's HF config with the special-token ids of `tokenizer` and what the export
    keeps of `source` (see `save_pretrained`)."""
    vocab_size = model.Vocab.size
    overrides = dict(config_overrides or {})
    hf_config = model.config.to_hf_config(vocab_size, overrides)

    def outside(value: Any) -> bool:
        return isinstance(value, int) and not 0 <= value < vocab_size

    where = f"outside the vocabulary (0..{vocab_size - 1})"
    for name, value in overrides.items():
        if name.endswith("_token_id") and outside(value):
            raise ValueError(f"config_overrides[{name!r}] ({value}) is {where}")
    if tokenizer is None:
        ids = {n: getattr(hf_config, n, None) for n in SPECIAL_TOKEN_IDS}
        ids = {n: None if outside(v) else v for n, v in ids.items()}
    else:
        ids = special_token_ids(tokenizer)
        for name, value in ids.items():
            if name not in overrides and outside(value):
                raise ValueError(
                    f"the tokenizer's {name} ({value}) is {where}: export with the tokenizer "
                    "the model was trained with"
                )
    for name in SPECIAL_TOKEN_IDS:
        kept = source.token_ids(name)
        if kept is None or not _inside(kept, vocab_size):
            continue
        ours = ids[name]
        listed = kept if isinstance(kept, list) else [kept]
        if tokenizer is None or ours is None or ours in listed:
            ids[name] = kept
        elif kept != ours:
            logger.info(
                "%s: %s's %s %s does not hold the tokenizer's (%s); exporting the tokenizer's",
                name,
                source.path,
                CONFIG_FILE,
                kept,
                ours,
            )
    for name, value in ids.items():
        if name not in overrides:
            setattr(hf_config, name, value)
    if source.hf_config is not None and not model.config.hf_learned_positions:
        context = getattr(source.hf_config, "max_position_embeddings", None)
        ours = getattr(hf_config, "max_position_embeddings", None)
        keep = "max_position_embeddings" not in overrides
        if keep and isinstance(context, int) and isinstance(ours, int) and context > ours:
            hf_config.max_position_embeddings = context
    return hf_config


def _shard(state_dict: dict[str, np.ndarray], limit: int) -> list[dict[str, np.ndarray]]:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(state_dict, key=_natural_key):
        value = state_dict[key]
        if shards[-1] and size + value.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += value.nbytes
    return shards


def _natural_key(key: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    return safetensors_io.save_bytes(tensors, metadata={"format": "pt"})


class HfSaveError(RuntimeError):
    """Writing an HF checkpoint failed (a full disk, no permission): the message names the
    file; a local file being written is removed, never left cut short."""


def _write(fs, path: str, data: bytes) -> None:
    """Write one file of an HF checkpoint. A local file is written aside and renamed into
    place, so a failed write (a full disk) leaves no truncated file that `from_pretrained`
    would try to load; an object store's upload appears only once complete."""
    local = isinstance(fs, LocalFileSystem)
    target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if local else path
    try:
        with fs.open(target, "wb") as f:
            f.write(data)
        if local:
            os.replace(target, path)
    except OSError as e:
        if local:
            with contextlib.suppress(OSError):
                os.remove(target)
        raise HfSaveError(
            f"could not write {path}: {e.strerror or e}. The HF checkpoint in "
            f"{posixpath.dirname(path)} is incomplete (no file in it is cut short); write it "
            "again once this is fixed"
        ) from e


def _save_tokenizer(tokenizer: Any, fs, root: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                _write(fs, posixpath.join(root, name), f.read())
