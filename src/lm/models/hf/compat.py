"""Models that convert to and from Hugging Face `transformers` checkpoints.

An `HFCompatConfig` knows its HF config class (`to_hf_config` / `from_hf_config`); its
model class maps parameters to HF state-dict keys through Haliax's state-dict machinery
(`ModuleWithStateDictSerialization._state_dict_key_map`, Linear flattening, `Stacked`
unstacking into `<prefix>.<i>.`). This module turns a model into an HF state dict and back,
checking key sets and shapes with errors that name the offending keys.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
from haliax.partitioning import ResourceMapping
from haliax.state_dict import (
    flatten_modules_for_export,
    from_torch_compatible_state_dict,
    to_state_dict,
    to_torch_compatible_state_dict,
)
from jax.sharding import SingleDeviceSharding

from lm.models.layers.linear import dequantize
from lm.models.lm_model import LmConfig, LmHeadModel, LmT
from lm.partitioning.jit import with_shardings
from lm.partitioning.mesh import default_device

if TYPE_CHECKING:
    from lm.models.hf.converter import HFCheckpointConverter

ConfigT = TypeVar("ConfigT", bound="HFCompatConfig")


@dataclasses.dataclass(frozen=True)
class HFCompatConfig(LmConfig[LmT], abc.ABC):
    """An `LmConfig` with a Hugging Face counterpart."""

    hf_architecture: ClassVar[str]
    """The HF `architectures` entry written to config.json, e.g. "GPT2LMHeadModel"."""

    hf_model_type: ClassVar[str]
    """The HF `model_type`, e.g. "gpt2"."""

    hf_base_model_prefix: ClassVar[str]
    """HF's `base_model_prefix` ("transformer" for GPT-2, "model" for Llama); checkpoints of
    the bare base model omit it and get it added on load."""

    hf_learned_positions: ClassVar[bool] = False
    """Positions are a learned table of `seq_len` rows (GPT-2): a `seq_len` below a
    checkpoint's keeps the table's first rows, one above it cannot be loaded, and an export
    advertises the table's size. Rotary models compute every position, so `seq_len` is free
    and an export keeps a source checkpoint's larger `max_position_embeddings`."""

    @abc.abstractmethod
    def to_hf_config(self, vocab_size: int, config_overrides: Mapping[str, Any] | None = None):
        """The equivalent `transformers` config; `config_overrides` are set on top."""

    @classmethod
    @abc.abstractmethod
    def from_hf_config(cls, hf_config) -> HFCompatConfig:
        """The equivalent config from a `transformers` config object."""

    def hf_checkpoint_converter(self, ref_checkpoint: str | None = None) -> HFCheckpointConverter:
        """A converter that loads and saves HF checkpoint directories for this config."""
        from lm.models.hf.converter import HFCheckpointConverter

        reference = ref_checkpoint or getattr(self, "reference_checkpoint", None)
        return HFCheckpointConverter(type(self), reference_checkpoint=reference)

    def hf_ignored_keys(self) -> tuple[str, ...]:
        """Regexes of HF checkpoint keys that carry no parameters of ours (e.g. buffers)."""
        return ()

    def trim_hf_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """An HF state dict cut to this config's sizes where the architecture allows it
        (GPT-2: the first `seq_len` rows of the position table); by default unchanged."""
        return state_dict


def _comparable(config: LmConfig, name: str) -> Any:
    """A field's value in a form where equal means the same function (`swish` is `silu`,
    `head_dim: null` is hidden_dim / num_heads, RoPE configs by their HF parameters)."""
    from lm.models.layers.activations import ActivationFunctionEnum
    from lm.models.layers.rotary import RotaryEmbeddingsConfig

    if name == "head_dim" and hasattr(config, "actual_head_size"):
        return config.actual_head_size
    value = getattr(config, name)
    if isinstance(value, RotaryEmbeddingsConfig):
        params = value.to_hf_rope_parameters()
        if params.get("rope_type") == "yarn" and not (
            params.get("mscale") and params.get("mscale_all_dim")
        ):
            # YaRN's mscale takes effect only with mscale_all_dim (lm and HF alike): a config
            # with `mscale: 1.0` (lm's default) computes what one without it does
            params.pop("mscale", None)
            params.pop("mscale_all_dim", None)
        return params
    if isinstance(value, ActivationFunctionEnum):
        return value.to_fn()
    return value


def shown(value: Any) -> str:
    """A config value as a YAML user would write it."""
    import enum

    from lm.models.layers.rotary import RotaryEmbeddingsConfig

    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, RotaryEmbeddingsConfig):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return (
            "{type: "
            + value.get_choice_name(type(value))
            + ", "
            + ", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None)
            + "}"
        )
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def architecture_differences(
    given: LmConfig, checkpoint: LmConfig, *, set_only: bool = False
) -> list[str]:
    """The architecture fields in which `given` differs from a checkpoint's config, each as
    `"<field>: <given> (checkpoint: <value>)"`; empty when `given` computes the checkpoint's
    function. Runtime fields are free, except a `seq_len` beyond a learned position table.

    Args:
        given: the config a model is to be built from.
        checkpoint: `from_hf_config` of an HF checkpoint's config.json, or the architecture a
            `train_lm` checkpoint recorded (`lm.lm_run.check_checkpoint_architecture`).
        set_only: only fields `given` sets (see `_written_fields`; the rest are taken
            from the checkpoint, see `with_user_runtime_fields`).
    """
    if type(given) is not type(checkpoint):
        return [
            f"type: {LmConfig.get_choice_name(type(given))} (checkpoint: "
            f"{LmConfig.get_choice_name(type(checkpoint))})"
        ]
    written = _written_fields(given) if set_only else None
    out = []
    for field in dataclasses.fields(given):
        name = field.name
        if name in given.runtime_fields:
            continue
        value = getattr(given, name)
        if set_only and not written(name):
            continue
        if value != getattr(checkpoint, name) and (
            _comparable(given, name) != _comparable(checkpoint, name)
        ):
            out.append(
                f"{name}: {shown(getattr(given, name))} "
                f"(checkpoint: {shown(getattr(checkpoint, name))})"
            )
    if (
        isinstance(given, HFCompatConfig)
        and given.hf_learned_positions
        and (given.seq_len > checkpoint.seq_len)
    ):
        if not (set_only and not written("seq_len")):
            out.append(
                f"seq_len: {given.seq_len} (checkpoint: {checkpoint.seq_len} learned positions; "
                f"at most {checkpoint.seq_len})"
            )
    return out


def with_user_runtime_fields(checkpoint: ConfigT, user: LmConfig) -> ConfigT:
    """`checkpoint`'s config (from config.json) with the runtime fields `user` sets
    (`seq_len`, `attn_backend`, `gradient_checkpointing`, `scan_layers`, dropout, ...; see
    `_written_fields`). Architecture fields come from the checkpoint; check them first with
    `architecture_differences(user, checkpoint, set_only=True)`."""
    assert type(user) is type(checkpoint), (type(user), type(checkpoint))
    written = _written_fields(user)
    changes = {
        f.name: getattr(user, f.name)
        for f in dataclasses.fields(user)
        if f.name in user.runtime_fields and written(f.name)
    }
    return dataclasses.replace(checkpoint, **changes)


def _written_fields(user: LmConfig):
    """Whether the user set a field: written in the YAML or on the command line when the
    config was decoded by `lm.config` (also a value equal to the default), else (a config
    built in Python) set to a value other than its class default."""
    from lm.config import fields_set

    written = fields_set(user)
    if written is not None:
        return lambda name: name in written
    defaults = type(user)()
    return lambda name: getattr(user, name) != getattr(defaults, name)


def model_to_hf_state_dict(model: LmHeadModel) -> dict[str, np.ndarray]:
    """The model's parameters under HF keys, as host numpy arrays (Linear axes flattened,
    stacked layers unstacked; no quantization state)."""
    state_dict = to_torch_compatible_state_dict(dequantize(model))
    return {k: np.asarray(jax.device_get(v)) for k, v in state_dict.items()}


def expected_hf_state_dict(template: LmHeadModel) -> dict[str, jax.ShapeDtypeStruct]:
    """HF keys and shapes a checkpoint must provide for `template` (arrays or shapes)."""
    arrays = eqx.filter(template, _is_param)
    return jax.eval_shape(lambda t: to_state_dict(flatten_modules_for_export(t)), arrays)


def _is_param(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))


def check_hf_state_dict(
    template: LmHeadModel, state_dict: Mapping[str, Any], *, source: str = "checkpoint"
) -> dict[str, Any]:
    """`state_dict` with its base-model prefix added where it lacks one, after checking that
    its names and shapes are those `template` needs (values are not looked at: the stand-ins
    of `read_hf_weights(..., shapes_only=True)` do).

    Raises:
        ValueError: missing or unexpected keys, or shape mismatches, listed by name.
    """
    config = template.config
    state_dict = _add_base_prefix(dict(state_dict), config.hf_base_model_prefix)
    expected = expected_hf_state_dict(template)
    ignored = [re.compile(p) for p in config.hf_ignored_keys()]
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(
        k for k in state_dict if k not in expected and not any(p.fullmatch(k) for p in ignored)
    )
    mismatched = [
        f"{k}: {tuple(np.shape(state_dict[k]))} in {source}, expected {tuple(expected[k].shape)}"
        for k in sorted(expected)
        if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_abbreviate(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_abbreviate(unexpected)}")
    if mismatched:
        problems.append("shape mismatches: " + _abbreviate(mismatched))
    if problems:
        raise ValueError(
            f"{source} does not match {type(config).__name__} "
            f"({type(template).__name__}): " + "; ".join(problems)
        )
    return state_dict


def model_from_hf_state_dict(
    template: LmHeadModel,
    state_dict: Mapping[str, Any],
    *,
    dtype: jnp.dtype | None = jnp.float32,
    axis_mapping: ResourceMapping | None = None,
    source: str = "checkpoint",
    vocab_size: int | None = None,
    key: jax.Array | None = None,
) -> LmHeadModel:
    """Fill `template` (a model or `eqx.filter_eval_shape` of one) from an HF state dict.

    Args:
        template: the model structure; its values are ignored.
        state_dict: HF key -> array (numpy or jax).
        dtype: cast floating parameters to this dtype (None keeps the checkpoint's).
        axis_mapping: parameter axis mapping used to shard the result.
        source: where the state dict came from, for error messages.
        vocab_size: resize the vocabulary to this size (`LmHeadModel.resize_vocab`, new rows
            drawn with `key`) before the parameters are placed: a vocabulary padded for the
            mapping's shards, or grown for a tokenizer's extra tokens. A checkpoint's own size
            need not divide by the devices that shard it.

    Raises:
        ValueError: missing or unexpected keys, or shape mismatches, listed by name.
    """
    state_dict = check_hf_state_dict(template, state_dict, source=source)
    expected = expected_hf_state_dict(template)
    shapes = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if _is_param(x) else x, template
    )
    # Casting, unstacking and reshaping run on the host's CPU device: the whole checkpoint is
    # never put on one accelerator (device 0 would hold every full tensor before sharding).
    # Each parameter then goes to its place, every device receiving only its own shard.
    mesh = jax.sharding.get_mesh()
    # the caller's mesh need not include the host; the jit runs where its inputs are committed
    with jax.set_mesh(None), hax.axis_mapping({}):
        arrays = _on_host({k: state_dict[k] for k in expected}, dtype, _host_device())
        model = eqx.filter_jit(from_torch_compatible_state_dict)(shapes, arrays)
        if vocab_size is not None and model.Vocab.size != vocab_size:
            host_key = None if key is None else jax.device_put(key, _host_device())
            with warnings.catch_warnings():  # haliax's notice that it shards nothing here
                warnings.filterwarnings("ignore", "No mesh found", RuntimeWarning)
                model = model.resize_vocab(vocab_size, key=host_key)
    del arrays  # the staged copies, before placing adds the devices' ones
    params, static = eqx.partition(model, _is_param)
    placements = _placements(params, axis_mapping, mesh)
    return eqx.combine(jax.tree_util.tree_map(_place, params, placements), static)


def _place(array: jax.Array, sharding: jax.sharding.Sharding) -> jax.Array:
    """`array` (on the host) as a global array with `sharding`: each process hands over the
    shards its own devices hold (every process read the same checkpoint), so this also works
    when the mesh spans hosts."""
    host = np.asarray(array)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _host_device() -> jax.Device:
    """This process's first CPU device (`jax.devices("cpu")[0]` belongs to process 0); the
    first local device where the CPU backend is disabled (`JAX_PLATFORMS=cuda`)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return jax.local_devices()[0]


def _on_host(
    arrays: dict[str, Any], dtype: jnp.dtype | None, host: jax.Device
) -> dict[str, jax.Array]:
    """The checkpoint's tensors committed to `host`, floating ones cast to `dtype`."""

    def cast(x):
        x = jax.device_put(x, host)
        if dtype is not None and jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(dtype)
        return x

    return {k: cast(v) for k, v in arrays.items()}


def _placements(params: Any, axis_mapping: ResourceMapping | None, mesh: Any) -> Any:
    """Where each loaded parameter goes: sharded by `axis_mapping` on the current mesh, or
    the default device without a mapping."""
    if axis_mapping is None:
        device = default_device()
        return jax.tree_util.tree_map(lambda _: SingleDeviceSharding(device), params)
    if mesh is None or mesh.empty:
        raise ValueError(
            "load_pretrained got axis_mapping but no mesh: call it inside "
            "`with jax.set_mesh(mesh):` (a Trainer sets it up)"
        )
    return jax.tree_util.tree_map(lambda s: s.sharding, with_shardings(params, axis_mapping, mesh))


def _add_base_prefix(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    # Checkpoints of HF base models (e.g. the original `gpt2` upload) omit the prefix.
    if any(k.startswith(prefix + ".") for k in state_dict):
        return state_dict
    return {(k if k.startswith("lm_head.") else f"{prefix}.{k}"): v for k, v in state_dict.items()}


def _abbreviate(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown
