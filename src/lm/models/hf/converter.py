"""Load and save Hugging Face checkpoint directories.

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

import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import equinox as eqx
import fsspec
import haliax as hax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from haliax.partitioning import ResourceMapping

from lm.hf_files import TOKENIZER_FILES
from lm.models.hf import safetensors_io
from lm.models.hf.compat import (
    HFCompatConfig,
    architecture_differences,
    model_from_hf_state_dict,
    model_to_hf_state_dict,
)
from lm.models.lm_model import LmConfig, LmHeadModel
from lm.units import parse_size

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
DEFAULT_MAX_SHARD_SIZE = 5 * 1000**3
"""5 GB, as HF `save_pretrained` writes shards."""
SPECIAL_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
"""The config.json fields an export takes from the tokenizer."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

ConfigT = TypeVar("ConfigT", bound=HFCompatConfig)


class HFCheckpointConverter(Generic[ConfigT]):
    """Converts between `lm` models of one architecture and HF checkpoint directories.

    Args:
        config_class: the `HFCompatConfig` subclass (e.g. `LlamaConfig`).
        reference_checkpoint: default directory/URL/repo id for `load_pretrained`,
            `config_from_hf_checkpoint` and `load_tokenizer` when no path is given.
    """

    def __init__(self, config_class: type[ConfigT], *, reference_checkpoint: str | None = None):
        self.config_class = config_class
        self.reference_checkpoint = reference_checkpoint

    @staticmethod
    def for_checkpoint(path: str) -> HFCheckpointConverter:
        """A converter for whichever registered architecture `path`'s config.json names."""
        hf_config = read_hf_config(path)
        for config_class in set(LmConfig.get_known_choices().values()):
            if (
                issubclass(config_class, HFCompatConfig)
                and config_class.hf_model_type == hf_config.model_type
            ):
                return HFCheckpointConverter(config_class, reference_checkpoint=path)
        known = sorted(
            c.hf_model_type
            for c in LmConfig.get_known_choices().values()
            if issubclass(c, HFCompatConfig)
        )
        raise ValueError(
            f"{_join(path, CONFIG_FILE)}: model_type {hf_config.model_type!r} is not supported; "
            f"supported: {', '.join(known)}"
        )

    def _path(self, path: str | None) -> str:
        path = path or self.reference_checkpoint
        if path is None:
            raise ValueError(
                "no checkpoint path given and the converter has no reference_checkpoint"
            )
        return path

    def hf_config_from_checkpoint(self, path: str | None = None):
        """The `transformers` config object of a checkpoint (checked to be this architecture)."""
        path = self._path(path)
        hf_config = read_hf_config(path)
        expected = self.config_class.hf_model_type
        if hf_config.model_type != expected:
            raise ModelTypeMismatch(
                f"{_join(path, CONFIG_FILE)}: model_type is {hf_config.model_type!r} but this converter "
                f"is for {expected!r} ({self.config_class.__name__})"
            )
        return hf_config

    def config_from_hf_checkpoint(self, path: str | None = None) -> ConfigT:
        """The `lm` config equivalent to a checkpoint's config.json."""
        return self.config_class.from_hf_config(self.hf_config_from_checkpoint(path))

    def load_pretrained(
        self,
        path_or_dir: str | None = None,
        *,
        config: ConfigT | None = None,
        dtype: jnp.dtype | None = jnp.float32,
        axis_mapping: ResourceMapping | None = None,
    ) -> LmHeadModel:
        """Load a checkpoint's weights into a model.

        Args:
            path_or_dir: checkpoint directory, fsspec URL or hub repo id (default: the
                reference checkpoint).
            config: the `lm` config to build (default: derived from config.json). Its
                architecture must be the checkpoint's; its runtime fields (`seq_len`,
                `attn_backend`, remat, ...) are free, except that a learned position table
                (GPT-2) can only be cut to a shorter `seq_len`.
            dtype: dtype for floating parameters (None keeps the checkpoint's).
            axis_mapping: parameter axis mapping to shard the loaded model with (under the
                caller's mesh).

        Raises:
            ValueError: `config`'s architecture differs from config.json's (every differing
                field is listed with both values), or the weights do not match it.
        """
        path = self._path(path_or_dir)
        local = _resolve(path)
        hf_config = self.hf_config_from_checkpoint(local)
        if config is None:
            config = self.config_class.from_hf_config(hf_config)
        else:
            check_same_architecture(config, self.config_class.from_hf_config(hf_config), path)
        Vocab = hax.Axis("vocab", hf_config.vocab_size)
        template = eqx.filter_eval_shape(config.build, Vocab, key=jax.random.PRNGKey(0))
        state_dict, source = read_hf_weights(local)
        state_dict = config.trim_hf_state_dict(state_dict)
        return model_from_hf_state_dict(
            template, state_dict, dtype=dtype, axis_mapping=axis_mapping, source=source
        )

    def save_pretrained(
        self,
        model: LmHeadModel,
        output_dir: str,
        *,
        tokenizer: Any = None,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
        vocab_size: int | None = None,
        dtype: jnp.dtype | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        source_checkpoint: str | None = None,
    ) -> None:
        """Write config.json, safetensors weights (sharded above `max_shard_size`) and the
        tokenizer to `output_dir` (local or fsspec URL).

        Args:
            model: the model; its config must be of this converter's class.
            tokenizer: an HF tokenizer object or a local tokenizer directory, saved alongside.
            max_shard_size: bytes per safetensors shard (int, or a string like "2GB"/"500MB").
            vocab_size: the tokenizer's vocabulary size; a vocabulary padded beyond it (for
                partitioning) is trimmed to it.
            dtype: store floating weights in this dtype (default: as they are).
            config_overrides: extra attributes set on the HF config (they win over the
                tokenizer's special-token ids).
            source_checkpoint: the HF checkpoint the model was initialized from (directory,
                URL or hub id), whose metadata the export carries over (below).

        config.json's `bos_token_id`, `eos_token_id` and `pad_token_id` are the tokenizer's
        (None for a token it lacks). Without a tokenizer they are the architecture's
        defaults where those lie inside the vocabulary, else None.

        With a `source_checkpoint`: a special-token id of its config.json (an int or a list,
        e.g. `eos_token_id: [2, 0]`) is kept when every id lies inside the vocabulary and
        it agrees with the tokenizer (the list holds the tokenizer's id, or the tokenizer has
        no such token); its `max_position_embeddings` is kept when larger than `seq_len`
        (rotary models: a fine-tune at a shorter context still serves the source's); and
        its `generation_config.json` is copied when its token ids lie inside the vocabulary.

        Raises:
            ValueError: `output_dir` is a file; a special-token id (the tokenizer's or in
                `config_overrides`) lies outside the vocabulary; bad `vocab_size`.
        """
        check_output_dir(output_dir)
        if not isinstance(model.config, self.config_class):
            raise ValueError(
                f"model config is {type(model.config).__name__}, converter is for {self.config_class.__name__}"
            )
        if vocab_size is not None and vocab_size != model.Vocab.size:
            if vocab_size > model.Vocab.size:
                raise ValueError(
                    f"vocab_size ({vocab_size}) is larger than the model's vocabulary ({model.Vocab.size})"
                )
            model = model.resize_vocab(vocab_size)
        shard_limit = parse_size(max_shard_size)
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        source = _SourceCheckpoint.read(source_checkpoint)
        hf_config = _hf_config(model, tokenizer, config_overrides, source)
        # Every process takes part in gathering sharded parameters; only process 0 writes.
        state_dict = model_to_hf_state_dict(model)
        if jax.process_index() != 0:
            return
        if dtype is not None:
            np_dtype = np.dtype(jnp.dtype(dtype))
            state_dict = {
                k: v.astype(np_dtype)
                if np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16
                else v
                for k, v in state_dict.items()
            }
        first = next(iter(state_dict.values()))
        hf_config.dtype = str(first.dtype) if first.dtype != ml_dtypes.bfloat16 else "bfloat16"

        fs, root = fsspec.core.url_to_fs(output_dir)
        fs.makedirs(root, exist_ok=True)
        shards = _shard(state_dict, shard_limit)
        written = {SAFETENSORS_FILE} if len(shards) == 1 else {SAFETENSORS_INDEX}
        if len(shards) == 1:
            _write(fs, posixpath.join(root, SAFETENSORS_FILE), _safetensors(shards[0]))
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                _write(fs, posixpath.join(root, name), _safetensors(shard))
                weight_map.update({k: name for k in shard})
                written.add(name)
            total = sum(v.nbytes for v in state_dict.values())
            index = {
                "metadata": {"total_size": total},
                "weight_map": dict(sorted(weight_map.items())),
            }
            _write(
                fs, posixpath.join(root, SAFETENSORS_INDEX), json.dumps(index, indent=2).encode()
            )
        _remove_stale_weights(fs, root, keep=written)
        _write(fs, posixpath.join(root, CONFIG_FILE), hf_config.to_json_string().encode())
        generation_config = source.generation_config_for(hf_config.vocab_size)
        if generation_config is not None:
            _write(fs, posixpath.join(root, GENERATION_CONFIG_FILE), generation_config)
        if tokenizer is not None:
            _save_tokenizer(tokenizer, fs, root)
        logger.info(
            "Saved %s (%d weight file(s)) to %s", type(model).__name__, len(shards), output_dir
        )

    def load_tokenizer(self, path: str | None = None):
        """The HF tokenizer stored with a checkpoint (local dir, URL or hub id)."""
        from transformers import AutoTokenizer

        local = _resolve(self._path(path))
        fs, root = fsspec.core.url_to_fs(local)
        if isinstance(fs, LocalFileSystem):
            return AutoTokenizer.from_pretrained(root)
        with tempfile.TemporaryDirectory() as tmp:
            for name in TOKENIZER_FILES:
                if fs.exists(posixpath.join(root, name)):
                    fs.get(posixpath.join(root, name), os.path.join(tmp, name))
            return AutoTokenizer.from_pretrained(tmp)


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


def special_token_ids(tokenizer: Any) -> dict[str, int | None]:
    """An HF tokenizer's BOS, EOS and PAD ids (None for a token it lacks), by config field."""
    ids: dict[str, int | None] = {}
    for name in SPECIAL_TOKEN_IDS:
        value = getattr(tokenizer, name, None)
        ids[name] = None if value is None else int(value)
    return ids


def check_same_architecture(config: HFCompatConfig, checkpoint: HFCompatConfig, path: str):
    """Raise a `ValueError` listing every architecture field in which `config` differs from
    the checkpoint's (`checkpoint`, from its config.json): loading its weights into `config`
    would compute other logits than the checkpoint (a different RoPE, norm epsilon,
    activation, tying, bias, window or qk-norm keeps every tensor's shape)."""
    differences = architecture_differences(config, checkpoint)
    if differences:
        raise ValueError(
            f"{_join(path, CONFIG_FILE)} describes another model than the given "
            f"{type(config).__name__}: " + "; ".join(differences) + ". Loading it would "
            "compute other logits than the checkpoint: take the architecture from the "
            "checkpoint (train_lm: use_hf_model_config: true; in Python: config=None), or set "
            "these model fields to the checkpoint's values"
        )


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


def read_hf_weights(path: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a checkpoint directory, and a description of where they came from."""
    path = _resolve(path)
    fs, root = fsspec.core.url_to_fs(path)
    for index_name, reader in ((SAFETENSORS_INDEX, _read_safetensors), (TORCH_INDEX, _read_torch)):
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
    for file_name, reader in ((SAFETENSORS_FILE, _read_safetensors), (TORCH_FILE, _read_torch)):
        if fs.exists(posixpath.join(root, file_name)):
            return reader(_join(path, file_name)), _join(path, file_name)
    raise FileNotFoundError(
        f"no weights in {path}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {TORCH_FILE} or {TORCH_INDEX}"
    )


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


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    return safetensors_io.load_bytes(_read(path), source=path)


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path} is a torch pickle; reading it needs torch installed") from None
    try:
        state = torch.load(io.BytesIO(_read(path)), map_location="cpu", weights_only=True)
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


class ModelTypeMismatch(ValueError):
    """A checkpoint's config.json names another `model_type` than the converter's."""


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
