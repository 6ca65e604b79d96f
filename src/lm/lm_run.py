"""Pieces shared by the language-model entry points (train_lm, eval_lm, export_lm_to_hf):
the vocabulary axis for a tokenizer, and loading a model from a `train_lm` checkpoint."""

from __future__ import annotations

import logging
from typing import Any

import equinox as eqx
import haliax as hax
import jax
from haliax.partitioning import round_axis_for_partitioning

from lm.models import LmConfig

logger = logging.getLogger(__name__)


def vocab_axis(vocab_size: int, parameter_mapping) -> hax.Axis:
    """The `vocab` axis, rounded up so the parameter mapping can shard it evenly (the padding
    rows are trimmed again on HF export). Needs the device mesh to be set."""
    Vocab = round_axis_for_partitioning(hax.Axis("vocab", vocab_size), parameter_mapping)
    if Vocab.size != vocab_size:
        logger.info("Vocab padded from %d to %d for partitioning", vocab_size, Vocab.size)
    return Vocab


def load_lm_checkpoint(
    model_config: LmConfig,
    Vocab: hax.Axis,
    checkpoint_path: str,
    *,
    mp,
    model_averaging=None,
    axis_mapping=None,
    mesh=None,
) -> tuple[Any, str]:
    """The model saved by `train_lm` in `checkpoint_path` (a run's checkpoint directory, whose
    newest complete checkpoint is used, or one `step-N` directory), read straight into the
    parameter sharding. With model averaging it is the averaged model. Returns
    (model, checkpoint directory)."""
    from lm.checkpoint import load_checkpoint_with_path

    shapes = eqx.filter_eval_shape(
        lambda: mp.cast_to_param(model_config.build(Vocab, key=jax.random.PRNGKey(0)))
    )
    common = dict(axis_mapping=axis_mapping, mesh=mesh)
    try:
        if model_averaging is None:
            model, path = load_checkpoint_with_path(
                shapes, checkpoint_path, subpath="model", **common
            )
        else:
            abstract = eqx.filter_eval_shape(model_averaging.create, shapes)
            loaded, path = load_checkpoint_with_path(
                abstract, checkpoint_path, subpath="model_averaging", **common
            )
            model = loaded.model_params
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"checkpoint_path {checkpoint_path!r}: {e}. Give a run's checkpoint directory "
            "(trainer.checkpointer.base_path/<run_id>) or a step-N directory in it."
        ) from None
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
