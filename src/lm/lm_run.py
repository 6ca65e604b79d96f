"""Pieces shared by the language-model entry points (train_lm, eval_lm, export_lm_to_hf):
the model a run trains (its config and vocabulary, from the YAML or an HF checkpoint), the
vocabulary axis for a tokenizer, and loading a model from a `train_lm` checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import equinox as eqx
import haliax as hax
import jax
from haliax.partitioning import round_axis_for_partitioning

from lm.config import ConfigError, FieldError, SetupConfigError
from lm.fs import local_path
from lm.models import Gpt2Config, LmConfig
from lm.models.hf.compat import (
    HFCompatConfig,
    architecture_differences,
    shown,
    with_user_runtime_fields,
)
from lm.models.hf.converter import HFCheckpointConverter, ModelTypeMismatch

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunModel:
    """The model a run trains, resolved the same way by train_lm, eval_lm and
    export_lm_to_hf (`resolve_run_model`)."""

    config: LmConfig
    """The model config: the YAML's, or with `use_hf_model_config` the HF checkpoint's
    architecture plus the YAML's runtime fields."""
    tokenizer_size: int
    """`len(tokenizer)`."""
    hf_checkpoint: str | None = None
    """The HF checkpoint the run is initialized from (`initialize_from_hf`)."""
    hf_vocab_size: int | None = None
    """That checkpoint's `vocab_size`."""
    converter: HFCheckpointConverter | None = None
    """Loads `hf_checkpoint` into `config`."""

    @property
    def vocab_size(self) -> int:
        """Rows of the vocabulary before partition padding: the tokenizer's size, or an HF
        checkpoint's when that is larger (its extra rows are kept)."""
        return max(self.tokenizer_size, self.hf_vocab_size or 0)


def resolve_run_model(
    model: LmConfig,
    *,
    tokenizer_size: int,
    hf_checkpoint: str | None = None,
    use_hf_model_config: bool = False,
) -> RunModel:
    """The model config and vocabulary size of a run (the `train_lm` fields `model`,
    `initialize_from_hf` resolved to `hf_checkpoint`, `use_hf_model_config`).

    Without an HF checkpoint the model is `model` and the vocabulary the tokenizer's. From an
    HF checkpoint, the vocabulary is the larger of the tokenizer's and the checkpoint's (rows
    are never dropped: HF models pad theirs, e.g. 50304 for 50257 tokens). With
    `use_hf_model_config` the architecture is the checkpoint's and every runtime field `model`
    sets (written in its YAML or command line: `lm.config.fields_set`) (`seq_len`, `attn_backend`,
    `gradient_checkpointing`, `scan_layers`, `flash_attention_block_size`,
    `cross_entropy_block_size`, dropout, ...) is applied on top.

    Raises:
        SetupConfigError: the checkpoint's architecture differs from `model`'s (without
            `use_hf_model_config`: in any field; with it: in a field `model` sets, or its
            type), or `seq_len` lies beyond a learned position table; every differing field
            is named with both values.
    """
    if hf_checkpoint is None:
        return RunModel(model, tokenizer_size)
    if not use_hf_model_config and not isinstance(model, HFCompatConfig):
        raise SetupConfigError(
            f"initialize_from_hf: model type {type(model).__name__} has no HF form"
        )
    try:
        if use_hf_model_config:
            converter = HFCheckpointConverter.for_checkpoint(hf_checkpoint)
        else:
            converter = model.hf_checkpoint_converter(hf_checkpoint)
        hf_config = converter.hf_config_from_checkpoint(hf_checkpoint)
        checkpoint = converter.config_class.from_hf_config(hf_config)
    except ValueError as e:  # what the checkpoint's config.json holds: the user's input
        hint = ""
        if isinstance(e, ModelTypeMismatch):
            try:
                found = HFCheckpointConverter.for_checkpoint(hf_checkpoint).config_class
                name = LmConfig.get_choice_name(found)
                hint = (
                    f". It is a checkpoint of lm's `type: {name}`: set model.type: {name} (with "
                    "its architecture), or use_hf_model_config: true to take the architecture "
                    "from the checkpoint"
                )
            except ValueError:
                pass
        raise SetupConfigError(
            f"initialize_from_hf: {hf_checkpoint} cannot be used: {e}{hint}"
        ) from None
    if use_hf_model_config:
        model = _with_checkpoint_architecture(model, checkpoint, hf_checkpoint)
    else:
        differences = architecture_differences(model, checkpoint)
        if differences:
            raise SetupConfigError(
                f"model: differs from the architecture of {hf_checkpoint} "
                "(initialize_from_hf), whose weights would then compute other logits: "
                + "; ".join(differences)
                + ". Set use_hf_model_config: true to take the architecture from the "
                "checkpoint, or set these model fields to the checkpoint's values"
            )
    hf_vocab_size = int(hf_config.vocab_size)
    return RunModel(
        model,
        tokenizer_size,
        hf_checkpoint=hf_checkpoint,
        hf_vocab_size=hf_vocab_size,
        converter=converter,
    )


def _with_checkpoint_architecture(
    model: LmConfig, checkpoint: HFCompatConfig, source: str
) -> HFCompatConfig:
    """`use_hf_model_config: true`: the checkpoint's architecture with the user's runtime
    fields (see `resolve_run_model`)."""
    hint = (
        "with use_hf_model_config: true the architecture comes from the checkpoint: remove "
        "these fields from model: (or set them to the checkpoint's values), or set "
        "use_hf_model_config: false to train the YAML's model"
    )
    if type(model) is not type(checkpoint):
        if model != type(model)():
            raise SetupConfigError(
                f"model.type: {LmConfig.get_choice_name(type(model))}, but {source} is a "
                f"{LmConfig.get_choice_name(type(checkpoint))} checkpoint and "
                "use_hf_model_config: true takes the architecture from it: set model.type: "
                f"{LmConfig.get_choice_name(type(checkpoint))} (keeping only runtime fields "
                "such as seq_len), or leave the model section out"
            )
        if model != Gpt2Config():  # the default of an omitted model section says nothing
            logger.warning(
                "use_hf_model_config: model.type %s ignored: %s is a %s checkpoint",
                LmConfig.get_choice_name(type(model)),
                source,
                LmConfig.get_choice_name(type(checkpoint)),
            )
        return checkpoint
    conflicts = architecture_differences(model, checkpoint, set_only=True)
    if conflicts:
        raise SetupConfigError(
            f"model: sets architecture fields that differ from {source}: "
            + "; ".join(conflicts)
            + f"; {hint}"
        )
    merged = with_user_runtime_fields(checkpoint, model)
    if merged.seq_len > checkpoint.seq_len:
        logger.warning(
            "model.seq_len %d is beyond %s's max_position_embeddings (%d): the checkpoint was "
            "not trained on positions that far",
            merged.seq_len,
            source,
            checkpoint.seq_len,
        )
    kept = {
        f.name: getattr(merged, f.name)
        for f in dataclasses.fields(merged)
        if f.name in merged.runtime_fields
        and getattr(merged, f.name) != getattr(checkpoint, f.name)
    }
    logger.info(
        "Model architecture from %s (%s); from model: %s",
        source,
        type(merged).__name__,
        ", ".join(f"{k}: {shown(v)}" for k, v in kept.items()) or "nothing",
    )
    return merged


def describe_vocab_change(run: RunModel) -> str | None:
    """A warning for a tokenizer whose size differs from the HF checkpoint's vocabulary (None
    when they agree or there is no checkpoint)."""
    tokens, rows = run.tokenizer_size, run.hf_vocab_size
    if rows is None or rows == tokens:
        return None
    if tokens > rows:
        return (
            f"The tokenizer has {tokens} tokens but {run.hf_checkpoint}'s vocabulary {rows}: "
            f"rows {rows}..{tokens - 1} of the embeddings (and of an untied LM head) are new, "
            "drawn at random from the existing rows' mean and std, and exports have "
            f"vocab_size {tokens}. Use the checkpoint's own tokenizer (data.tokenizer) unless "
            "you mean to add tokens"
        )
    return (
        f"The tokenizer has {tokens} tokens but {run.hf_checkpoint}'s vocabulary {rows}: "
        f"keeping all {rows} rows (ids {tokens}..{rows - 1} never occur in the data; exports "
        f"keep vocab_size {rows}). Expected for a checkpoint whose vocabulary is padded (e.g. "
        "to a multiple of 64); otherwise check that data.tokenizer is the checkpoint's own"
    )


def vocab_axis(vocab_size: int, parameter_mapping) -> hax.Axis:
    """The `vocab` axis, rounded up so the parameter mapping can shard it evenly (the padding
    rows are trimmed again on HF export). Needs the device mesh to be set."""
    Vocab = round_axis_for_partitioning(hax.Axis("vocab", vocab_size), parameter_mapping)
    if Vocab.size != vocab_size:
        logger.info("Vocab padded from %d to %d for partitioning", vocab_size, Vocab.size)
    return Vocab


AVERAGED_SUBPATH = "model_averaging"
"""Where a `train_lm` checkpoint holds the averaged model (with `trainer.model_averaging`)."""


def checkpoint_has_averaged_model(checkpoint_dir: str) -> bool:
    """Whether the checkpoint (one `step-N` directory) holds an averaged model: its run
    trained with `trainer.model_averaging`."""
    from lm.checkpoint.storage import holds_subtree

    return holds_subtree(checkpoint_dir, AVERAGED_SUBPATH)


def weights_used(checkpoint_dir: str, model_averaging) -> str:
    """Which of the checkpoint's weights `load_lm_checkpoint(..., model_averaging=...)` loads,
    for what eval_lm and export_lm_to_hf print: `averaged weights`, `raw weights` or, when
    an averaged model is left unused, `raw weights, not the checkpoint's averaged model`."""
    if model_averaging is not None:
        return "averaged weights"
    if checkpoint_has_averaged_model(checkpoint_dir):
        return "raw weights, not the checkpoint's averaged model"
    return "raw weights"


def _averaging_yaml(model_averaging) -> str:
    """`{type: ema, beta: 0.9}`: the config as a YAML flow mapping."""
    from lm.tracker.base import plain_value

    fields = plain_value(model_averaging)
    return "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


MODEL_METADATA_KEY = "model"
"""metadata.json key of the model architecture a checkpoint was trained with
(`model_architecture`; train_lm records it through `Trainer.checkpoint_metadata`)."""


def model_architecture(model_config: LmConfig) -> dict[str, Any]:
    """The fields of `model_config` that define the function its weights compute (its `type`
    and every field but the runtime ones: sequence length, remat, attention backend, ...), as
    plain data for a checkpoint's metadata.json."""
    from lm.config.encoding import to_data

    data = to_data(model_config, LmConfig)
    return {k: v for k, v in data.items() if k not in model_config.runtime_fields}


def check_checkpoint_architecture(model_config: LmConfig, checkpoint: str, *, refuse: bool) -> None:
    """Compare `model_config` with the architecture checkpoint `checkpoint` recorded. Weights
    of the right shapes load into any config, so a run config edited since training (another
    activation, norm epsilon or RoPE) would evaluate or export a function nobody trained.
    `refuse`: a difference is a `SetupConfigError` (eval_lm, export); else a warning (a
    resumed run may change a field on purpose). A checkpoint saved before the architecture
    was recorded cannot be checked (logged)."""
    from lm.checkpoint import load_metadata

    try:
        saved = load_metadata(checkpoint).get(MODEL_METADATA_KEY)
    except FileNotFoundError:
        saved = None
    if not isinstance(saved, dict):
        logger.info(
            "Checkpoint %s records no model architecture (saved by an older lm or by your own "
            "code): the model config cannot be checked against it",
            checkpoint,
        )
        return
    differences = _recorded_architecture_differences(model_config, saved, checkpoint)
    if not differences:
        return
    listed = "; ".join(differences)
    if not refuse:
        logger.warning(
            "The model config differs from the one checkpoint %s was trained with (%s); the "
            "run goes on with the new settings",
            checkpoint,
            listed,
        )
        return
    raise SetupConfigError(
        f"the model config does not match checkpoint {checkpoint}, whose weights were trained "
        f"as another function: {listed}. Use the run's own config (config.yaml in "
        "<log_dir>/<run_id>/), or set these fields as the run did"
    )


def _recorded_architecture_differences(
    model_config: LmConfig, saved: dict[str, Any], checkpoint: str
) -> list[str]:
    """`model.<field>: given (checkpoint: saved)` for each architecture field where
    `model_config` differs from the architecture a checkpoint recorded, compared as
    `architecture_differences` compares an HF checkpoint's (`swish` is `silu`, `head_dim:
    null` is hidden_dim / num_heads). A field only one side has (added to or removed from lm
    since the checkpoint was saved) is not compared; a record this lm cannot decode is logged
    and not compared."""
    from lm.config.decoding import decode
    from lm.config.encoding import to_data

    given = to_data(model_config, LmConfig)
    if saved.get("type") != given.get("type"):
        return [f"model.type: {given.get('type')} (checkpoint: {saved.get('type')})"]
    # the record with this config's runtime fields and the fields lm added since
    data = {
        key: saved[key] if key in saved and key not in model_config.runtime_fields else value
        for key, value in given.items()
    }
    try:
        recorded = decode(LmConfig, data, path="model")
    except (ConfigError, ValueError) as e:
        logger.warning(
            "Checkpoint %s records a model architecture this lm cannot read (%s): the model "
            "config cannot be checked against it",
            checkpoint,
            e,
        )
        return []
    return ["model." + d for d in architecture_differences(model_config, recorded)]


CHECKPOINT_PATH_HELP = (
    "give a run's checkpoint directory (trainer.checkpointer.base_path/<run_id>) or a step-N "
    "directory in it"
)


def check_checkpoint_path(checkpoint_path: str) -> None:
    """A local `checkpoint_path` (eval_lm, export_lm_to_hf) must be a directory: checked
    before the config's tokenizer and model are set up. Remote URLs are checked when read."""
    path = local_path(checkpoint_path)
    if path is None or os.path.isdir(path):
        return
    what = "is a file" if os.path.exists(path) else "does not exist"
    raise FieldError("checkpoint_path", f"{checkpoint_path} {what}; {CHECKPOINT_PATH_HELP}")


def load_lm_checkpoint(
    model_config: LmConfig,
    Vocab: hax.Axis,
    checkpoint_path: str,
    *,
    mp,
    model_averaging=None,
    axis_mapping=None,
    mesh=None,
    valid_vocab: int | None = None,
) -> tuple[Any, str]:
    """The model saved by `train_lm` in `checkpoint_path` (a run's checkpoint directory, whose
    newest complete checkpoint is used, or one `step-N` directory), read straight into the
    parameter sharding. With model averaging it is the averaged model; a checkpoint without
    one is then an error. Without it, the raw weights, with a warning when the checkpoint
    also holds an averaged model (see `weights_used`). `valid_vocab`, the vocabulary's real
    size, lets a checkpoint saved on a layout that padded `Vocab` differently load (see
    `lm.checkpoint.padded_axes`). Returns (model, checkpoint directory)."""
    from lm.checkpoint import padded_axes

    with padded_axes(**({} if valid_vocab is None else {"vocab": valid_vocab})):
        return _load_lm_checkpoint(
            model_config, Vocab, checkpoint_path, mp, model_averaging, axis_mapping, mesh
        )


def _load_lm_checkpoint(
    model_config, Vocab, checkpoint_path, mp, model_averaging, axis_mapping, mesh
) -> tuple[Any, str]:
    from lm.checkpoint import discover_latest_checkpoint, load_checkpoint_with_path

    shapes = eqx.filter_eval_shape(
        lambda: mp.cast_to_param(model_config.build(Vocab, key=jax.random.PRNGKey(0)))
    )
    # the model evaluated or exported is the one trained: a checkpoint leaf the config's
    # model lacks (its biases, with use_bias: false) is an error, not dropped
    common = dict(axis_mapping=axis_mapping, mesh=mesh, exact=True)
    try:
        if model_averaging is None:
            model, path = load_checkpoint_with_path(
                shapes, checkpoint_path, subpath="model", **common
            )
        else:
            abstract = eqx.filter_eval_shape(model_averaging.create, shapes)
            try:
                loaded, path = load_checkpoint_with_path(
                    abstract, checkpoint_path, subpath=AVERAGED_SUBPATH, **common
                )
            except ValueError:
                newest = discover_latest_checkpoint(checkpoint_path)
                if newest is None or checkpoint_has_averaged_model(newest):
                    raise
                raise SetupConfigError(
                    f"trainer.model_averaging is set ({_averaging_yaml(model_averaging)}), but "
                    f"checkpoint {newest} holds no averaged model: its run trained without "
                    "model averaging. Remove trainer.model_averaging (or pass "
                    "--trainer.model_averaging null) to use the checkpoint's weights"
                ) from None
            model = loaded.model_params
    except SetupConfigError:
        raise
    except ValueError:
        # a leaf of another shape (`--model.hidden_dim 64` against a run trained with 32): the
        # model fields that differ from the recorded architecture, as a configuration error
        newest = discover_latest_checkpoint(checkpoint_path)
        if newest is not None:
            check_checkpoint_architecture(model_config, newest, refuse=True)
        raise
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"checkpoint_path {checkpoint_path!r}: {e}; {CHECKPOINT_PATH_HELP}"
        ) from None
    check_checkpoint_architecture(model_config, path, refuse=True)
    if model_averaging is None and checkpoint_has_averaged_model(path):
        logger.warning(
            "Checkpoint %s holds an averaged model (%s/), but trainer.model_averaging is not "
            "set: using its raw weights (model/). To use the averaged model, set "
            "trainer.model_averaging as its run did (the run's config.yaml in "
            "<log_dir>/<run_id>/ records it)",
            path,
            AVERAGED_SUBPATH,
        )
    missing = [
        leaf_path
        for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(model)
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if missing:
        raise ValueError(
            f"checkpoint {path} holds no values for {len(missing)} parameter(s) (e.g. "
            f"{jax.tree_util.keystr(missing[0][0])}): they were frozen during training and "
            "are not checkpointed"
        )
    return model, path
