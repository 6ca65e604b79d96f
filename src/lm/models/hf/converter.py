"""Load and save Hugging Face checkpoint directories: `HFCheckpointConverter` converts
between `lm` models of one architecture and HF checkpoints (a local directory, an fsspec URL
or a Hub repo id).

What a checkpoint directory holds and how a path or repo id is found is
`lm.models.hf.loading`'s to say; how an export writes one, `lm.models.hf.saving`'s.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
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
from lm.models.hf.compat import (
    HFCompatConfig,
    architecture_differences,
    check_hf_state_dict,
    model_from_hf_state_dict,
    model_to_hf_state_dict,
)
from lm.models.hf.loading import CONFIG_FILE as CONFIG_FILE
from lm.models.hf.loading import GENERATION_CONFIG_FILE as GENERATION_CONFIG_FILE
from lm.models.hf.loading import SAFETENSORS_FILE as SAFETENSORS_FILE
from lm.models.hf.loading import SAFETENSORS_INDEX as SAFETENSORS_INDEX
from lm.models.hf.loading import TORCH_FILE as TORCH_FILE
from lm.models.hf.loading import TORCH_INDEX as TORCH_INDEX
from lm.models.hf.loading import _join, _resolve
from lm.models.hf.loading import read_hf_config as read_hf_config
from lm.models.hf.loading import read_hf_weights as read_hf_weights
from lm.models.hf.saving import DEFAULT_MAX_SHARD_SIZE as DEFAULT_MAX_SHARD_SIZE
from lm.models.hf.saving import SPECIAL_TOKEN_IDS as SPECIAL_TOKEN_IDS
from lm.models.hf.saving import HfSaveError as HfSaveError
from lm.models.hf.saving import (
    _hf_config,
    _remove_stale_weights,
    _safetensors,
    _save_tokenizer,
    _shard,
    _SourceCheckpoint,
)
from lm.models.hf.saving import _write as _write
from lm.models.hf.saving import check_output_dir as check_output_dir
from lm.models.hf.saving import special_token_ids as special_token_ids
from lm.models.lm_model import LmConfig, LmHeadModel
from lm.units import parse_size

logger = logging.getLogger(__name__)

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
        vocab_size: int | None = None,
        key: jax.Array | None = None,
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
            vocab_size: the vocabulary size of the model to return, if not the checkpoint's:
                resized on the host before sharding (see `model_from_hf_state_dict`), with new
                rows drawn with `key`.

        Raises:
            ValueError: `config`'s architecture differs from config.json's (every differing
                field is listed with both values), or the weights do not match it.
        """
        template, state_dict, source = self._read(path_or_dir, config)
        return model_from_hf_state_dict(
            template,
            state_dict,
            dtype=dtype,
            axis_mapping=axis_mapping,
            source=source,
            vocab_size=vocab_size,
            key=key,
        )

    def check_pretrained(self, path_or_dir: str | None = None, *, config: ConfigT) -> None:
        """What `load_pretrained(path_or_dir, config=config)` checks, without reading the
        weights: the architecture, and the tensors' names and shapes from the safetensors
        headers (a truncated or malformed file fails too). Cheap, so a run checks its
        checkpoint before it starts.

        Raises:
            ValueError: as `load_pretrained` would.
        """
        template, state_dict, source = self._read(path_or_dir, config, shapes_only=True)
        check_hf_state_dict(template, state_dict, source=source)

    def _read(self, path_or_dir: str | None, config: ConfigT | None, *, shapes_only=False):
        """The model template `config` (or config.json) builds, and the checkpoint's state dict
        cut to it, and where it came from."""
        path = self._path(path_or_dir)
        local = _resolve(path)
        hf_config = self.hf_config_from_checkpoint(local)
        if config is None:
            config = self.config_class.from_hf_config(hf_config)
        else:
            check_same_architecture(config, self.config_class.from_hf_config(hf_config), path)
        Vocab = hax.Axis("vocab", hf_config.vocab_size)
        template = eqx.filter_eval_shape(config.build, Vocab, key=jax.random.PRNGKey(0))
        state_dict, source = read_hf_weights(local, shapes_only=shapes_only)
        return template, config.trim_hf_state_dict(state_dict), source

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


class ModelTypeMismatch(ValueError):
    """A checkpoint's config.json names another `model_type` than the converter's."""
