"""Export a `train_lm` checkpoint as a Hugging Face checkpoint (sharded safetensors,
config.json, tokenizer):

    python -m lm.main.export_lm_to_hf --config_path run.yaml \\
        --checkpoint_path checkpoints/<run_id> --output_dir hf/my-model

`--config_path` is the run's YAML (the model architecture, tokenizer and model averaging
come from it; `logs/<run_id>/config.yaml` is the resolved copy every run writes). The model
is resolved as `train_lm` resolves it: with `initialize_from_hf` and `use_hf_model_config`
the architecture is the HF checkpoint's (which must still be readable), plus the YAML's
runtime fields. The vocabulary padded for partitioning is trimmed back to the tokenizer's
size (or the HF checkpoint's, when that was larger), and config.json's bos/eos/pad token ids
are the tokenizer's; a run initialized from an HF checkpoint keeps that checkpoint's
special-token id lists, larger `max_position_embeddings` and generation_config.json. With
model averaging (`trainer.model_averaging`) the averaged model is exported; without it the
raw weights, with a warning when the checkpoint holds an averaged model. The printed line
says which (`Exported <checkpoint> (averaged weights) to <output_dir>`). An `--output_dir`
that is an existing file is an error before any work.
"""

from __future__ import annotations

import dataclasses
import logging

import jax

import lm.config
from lm.lm_run import check_checkpoint_path, load_lm_checkpoint, vocab_axis, weights_used
from lm.main.train_lm import TrainLmConfig, check_hf_checkpoint_path
from lm.models.hf.converter import check_output_dir
from lm.partitioning import create_mesh, resolve_mesh_shape
from lm.tracker.logs import configure_logging
from lm.units import parse_size

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportLmToHfConfig(TrainLmConfig):
    checkpoint_path: str | None = None
    """A run's checkpoint directory (its newest complete checkpoint) or one step-N directory."""
    output_dir: str | None = None
    """Where to write the HF checkpoint (local path or fsspec URL)."""
    max_shard_size: str = "5GB"
    """Largest safetensors file, e.g. 5GB or 500MB."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("checkpoint_path", "output_dir"):
            if not getattr(self, name):
                raise lm.config.FieldError(name, "is required")
        try:
            parse_size(self.max_shard_size)
        except ValueError as e:
            raise lm.config.FieldError("max_shard_size", str(e)) from None


def main(config: ExportLmToHfConfig) -> str:
    configure_logging(None)
    try:
        check_output_dir(config.output_dir)  # before loading anything
    except ValueError as e:  # "output_dir: ...": a configuration error (exit 2), as when parsing
        raise lm.config.SetupConfigError(str(e)) from None
    check_hf_checkpoint_path(config)
    check_checkpoint_path(config.checkpoint_path)
    tokenizer = config.data.the_tokenizer
    run_model = config.run_model()
    trainer = config.trainer
    # Read the checkpoint into one process's devices (all of them, data-parallel layout).
    mesh = create_mesh(resolve_mesh_shape(len(jax.devices())))
    with jax.set_mesh(mesh):
        Vocab = vocab_axis(run_model.vocab_size, trainer.parameter_axis_mapping)
        model, path = load_lm_checkpoint(
            run_model.config,
            Vocab,
            config.checkpoint_path,
            mp=trainer.mp,
            model_averaging=trainer.model_averaging,
            axis_mapping=trainer.parameter_axis_mapping,
            mesh=mesh,
            valid_vocab=run_model.vocab_size,
        )
        run_model.config.hf_checkpoint_converter().save_pretrained(
            model,
            config.output_dir,
            tokenizer=tokenizer,
            vocab_size=run_model.vocab_size,
            max_shard_size=config.max_shard_size,
            source_checkpoint=run_model.hf_checkpoint,
        )
    weights = weights_used(path, trainer.model_averaging)
    print(f"Exported {path} ({weights}) to {config.output_dir}", flush=True)
    return config.output_dir


if __name__ == "__main__":
    lm.config.main(main)()
