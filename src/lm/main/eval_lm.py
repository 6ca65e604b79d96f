"""Evaluate a checkpoint on the validation sets: `python -m lm.main.eval_lm --config_path
run.yaml --checkpoint_path checkpoints/<run_id>`.

Takes the run's own config (model, data, trainer) plus `checkpoint_path` (a run's
checkpoint directory, whose newest complete checkpoint is used, or one `step-N`
checkpoint), resolves the model as `train_lm` does (with `initialize_from_hf` and
`use_hf_model_config`, the HF checkpoint's architecture plus the YAML's runtime fields), loads it (the averaged model when `trainer.model_averaging` is set,
as the trainer's own evaluation does; without it the raw weights, with a warning when the
checkpoint holds an averaged model; the printed result says which) and reports, for every
validation set of `data`:

- `loss`: mean next-token cross-entropy (nats) over every predicted token, all batches
  pooled (token-weighted, not a mean of batch means);
- `perplexity`: `exp(loss)`;
- `bpb` (bits per byte): total cross-entropy in bits / UTF-8 bytes of the predicted
  tokens. A token's bytes are the bytes of its text; special tokens (EOS) have none but
  their loss counts. Exact for byte-level BPE tokenizers (GPT-2, Llama 3, the builtin
  one); for others the bytes come from decoding each token alone (approximate, logged).
  Not reported for the passthrough tokenizer (token ids carry no text).

The numbers are printed and logged to `trainer.tracker` as `eval/<set>/loss`,
`eval/<set>/perplexity`, `eval/<set>/bpb`, `eval/<set>/tokens` and `eval/<set>/bytes`
(`eval/...` for an unnamed set) at the checkpoint's step, and the same for each data `tags`
entry over the sets carrying it (`eval/<tag>/...`, tokens and bytes pooled).
`trainer.max_eval_batches` caps the batches per set; the batch is the trainer's eval batch
(`per_device_eval_parallelism`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lm.config
from lm.compile_options import xla_compiler_options
from lm.lm_run import (
    RunModel,
    check_checkpoint_path,
    load_lm_checkpoint,
    vocab_axis,
    weights_used,
)
from lm.main.train_lm import TrainLmConfig
from lm.models.lm_model import LmExample
from lm.models.loss import compute_next_token_loss
from lm.partitioning.jit import sharded_jit
from lm.trainer import Trainer
from lm.trainer.evaluation import group_by_tag

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalLmConfig(TrainLmConfig):
    """A `train_lm` run config plus the checkpoint to evaluate."""

    checkpoint_path: str | None = None
    """A run's checkpoint directory (its newest complete checkpoint is used) or one
    `step-N` checkpoint directory. Local path or fsspec URL. Required."""

    def __post_init__(self):
        super().__post_init__()
        if not self.checkpoint_path:
            raise lm.config.FieldError(
                "checkpoint_path",
                "is required: a run's checkpoint directory (e.g. checkpoints/<run_id>) or one "
                "step-N checkpoint directory",
            )


def eval_batch_cap(max_eval_batches: int | None) -> int | None:
    """The batches to evaluate per set. `trainer.max_eval_batches: 0` turns train_lm's
    evaluation off; a run config that trained that way evaluates every batch here (it used
    to fail, blaming the validation set's size)."""
    if max_eval_batches == 0:
        logger.info(
            "trainer.max_eval_batches is 0 (train_lm's evaluation off): evaluating every batch "
            "of each validation set; set it to a positive number to cap them"
        )
        return None
    return max_eval_batches


# ---------------------------------------------------------------------------- bytes per token


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet: one printable character per byte value, char -> byte.

    Printable Latin-1 bytes stand for themselves; the other 68 byte values (controls,
    space, NBSP, soft hyphen) are shifted to code points 256 and up, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _is_byte_level(tokenizer: Any) -> bool:
    import tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    return isinstance(getattr(backend, "decoder", None), tokenizers.decoders.ByteLevel)


def token_byte_lengths(tokenizer: Any, size: int | None = None) -> np.ndarray:
    """UTF-8 bytes of each token id's text, as an int32 array of length `size`
    (default `len(tokenizer)`; ids past the tokenizer, e.g. vocab padding, get 0).

    Special tokens have 0 bytes. For byte-level BPE each token's characters map one to
    one onto bytes, so summing over an encoding gives exactly the text's UTF-8 length;
    other tokenizers decode each id alone, which is approximate (e.g. a SentencePiece
    word-initial space may be dropped)."""
    n = len(tokenizer)
    size = n if size is None else size
    if size < n:
        raise ValueError(f"size ({size}) is smaller than the tokenizer ({n} tokens)")
    lengths = np.zeros(size, dtype=np.int32)
    special = set(tokenizer.all_special_ids)
    added = {i: tok for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if i < n}
    if _is_byte_level(tokenizer):
        alphabet = _byte_level_alphabet()
        for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(n)))):
            if i in special or token is None:
                continue
            if i in added:
                lengths[i] = len(str(added[i]).encode("utf-8"))
            elif all(ch in alphabet for ch in token):
                lengths[i] = len(token)
            else:  # a vocabulary entry outside the byte alphabet: count its text
                lengths[i] = len(token.encode("utf-8"))
        return lengths
    logger.warning(
        "%s is not a byte-level BPE tokenizer: bits per byte use each token decoded alone "
        "(approximate)",
        type(tokenizer).__name__,
    )
    for i in range(n):
        if i not in special:
            text = tokenizer.decode([i], clean_up_tokenization_spaces=False)
            lengths[i] = len(text.encode("utf-8"))
    return lengths


# ---------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Pooled next-token statistics of one model on one dataset."""

    name: str
    total_loss: float
    """Sum of the per-token cross-entropy (nats) over every predicted token."""
    num_tokens: int
    num_bytes: int | None
    num_batches: int
    seconds: float

    @property
    def loss(self) -> float:
        return self.total_loss / self.num_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float | None:
        if not self.num_bytes:
            return None
        return self.total_loss / (math.log(2) * self.num_bytes)

    @property
    def prefix(self) -> str:
        return f"eval/{self.name}" if self.name else "eval"

    def metrics(self) -> dict[str, float]:
        out = {
            f"{self.prefix}/loss": self.loss,
            f"{self.prefix}/perplexity": self.perplexity,
            f"{self.prefix}/tokens": float(self.num_tokens),
            f"{self.prefix}/batches": float(self.num_batches),
            f"{self.prefix}/time": self.seconds,
        }
        if self.bits_per_byte is not None:
            out[f"{self.prefix}/bpb"] = self.bits_per_byte
            out[f"{self.prefix}/bytes"] = float(self.num_bytes or 0)
        return out


def pool_by_tag(
    results: Mapping[str, EvalResult], tags: Mapping[str, Sequence[str]]
) -> dict[str, EvalResult]:
    """`{tag: result}` over the sets carrying each tag (`tags`: set name -> its data tags):
    losses, tokens and bytes summed, so a tag's loss is the token-weighted mean of its sets'
    (and its bits per byte the byte-weighted one, when every set has bytes)."""
    pooled = {}
    for tag, parts in group_by_tag(results, tags).items():
        counts = [p.num_bytes for p in parts]
        pooled[tag] = EvalResult(
            name=tag,
            total_loss=sum(p.total_loss for p in parts),
            num_tokens=sum(p.num_tokens for p in parts),
            num_bytes=None if any(c is None for c in counts) else sum(counts),
            num_batches=sum(p.num_batches for p in parts),
            seconds=sum(p.seconds for p in parts),
        )
    return pooled


def _eval_sums(
    model, example: LmExample, byte_lengths: jax.Array, mp, *, valid_vocab: int | None = None
) -> dict[str, jax.Array]:
    model = mp.cast_to_compute(eqx.nn.inference_mode(model))
    per_token = compute_next_token_loss(
        model, example, key=None, reduction=None, valid_vocab=valid_vocab
    )
    Pos = example.tokens.resolve_axis(model.Pos.name)
    mask = example.loss_mask.astype(jnp.bool_) & (hax.arange(Pos) < Pos.size - 1)
    targets = hax.roll(example.tokens, -1, Pos)
    target_bytes = hax.named(byte_lengths[targets.array], targets.axes)
    return {
        "loss": per_token.sum().array.astype(jnp.float32),
        "tokens": mask.sum().array.astype(jnp.int32),
        "bytes": hax.where(mask, target_bytes, 0).sum().array.astype(jnp.int32),
    }


def evaluate_lm(
    trainer: Trainer,
    model: Any,
    dataset: Any,
    *,
    name: str = "",
    byte_lengths: np.ndarray | None = None,
    max_batches: int | None = None,
    valid_vocab: int | None = None,
) -> EvalResult:
    """Pooled cross-entropy (and bytes) of an `LmHeadModel` over an `LmExample` dataset.

    Runs in the trainer's compute precision and sharding, on batches of `trainer.EvalBatch`.

    Args:
        trainer: gives the mesh, axis mappings, precision policy and eval batch size.
        model: the model (parameters as loaded or trained).
        dataset: `LmExample`s (e.g. a value of `data.validation_sets(Pos)`).
        name: the set's name, for metric keys (`eval/<name>/...`).
        byte_lengths: `token_byte_lengths(...)` padded to the model's vocabulary, for bits
            per byte; None to skip them.
        max_batches: evaluate at most this many batches (None: the whole set).
        valid_vocab: the vocabulary's real size when `model.Vocab` is padded for the mesh
            (the padding rows get no probability, as in training).
    """
    vocab = model.Vocab.size
    have_bytes = byte_lengths is not None
    if have_bytes and len(byte_lengths) != vocab:
        raise ValueError(f"byte_lengths has {len(byte_lengths)} entries, the model's vocab {vocab}")
    table = jnp.asarray(byte_lengths if have_bytes else np.zeros(vocab, np.int32), jnp.int32)
    step = sharded_jit(
        functools.partial(_eval_sums, valid_vocab=valid_vocab),
        axis_resources=trainer.compute_axis_mapping,
        out_mapping={},
        mesh=lambda: trainer.device_mesh,
        compiler_options=xla_compiler_options(),
    )
    loss = 0.0
    tokens = num_bytes = batches = 0
    start = time.perf_counter()
    loader = trainer.data_loader(dataset, trainer.EvalBatch)
    with trainer.config.use_device_mesh(), contextlib.closing(iter(loader)) as loaded:
        for batch in loaded:
            if max_batches is not None and batches >= max_batches:
                break
            sums = jax.device_get(step(model, batch, table, trainer.mp))
            loss += float(sums["loss"])
            tokens += int(sums["tokens"])
            num_bytes += int(sums["bytes"])
            batches += 1
    if batches == 0:
        raise ValueError(
            f"validation set {name or '(unnamed)'!r} has fewer than one eval batch "
            f"({trainer.EvalBatch.size} examples); lower trainer.per_device_eval_parallelism "
            "or use more validation data"
        )
    if tokens == 0:
        raise ValueError(f"validation set {name or '(unnamed)'!r} has no predicted tokens")
    return EvalResult(
        name=name,
        total_loss=loss,
        num_tokens=tokens,
        num_bytes=num_bytes if have_bytes else None,
        num_batches=batches,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------- loading


def load_model_for_eval(
    config: EvalLmConfig, trainer: Trainer, Vocab: hax.Axis, run_model: RunModel | None = None
) -> tuple[Any, str]:
    """The model saved in `config.checkpoint_path` (the averaged one with model averaging),
    read straight into the parameter sharding. `run_model` is the run's model, as
    `config.run_model()` resolves it (pass it when already resolved: an HF-initialized run
    reads the checkpoint's config.json for it). Returns (model, checkpoint directory)."""
    if run_model is None:
        run_model = config.run_model()
    return load_lm_checkpoint(
        run_model.config,
        Vocab,
        config.checkpoint_path,
        mp=trainer.mp,
        model_averaging=config.trainer.model_averaging,
        axis_mapping=trainer.parameter_axis_mapping,
        mesh=trainer.device_mesh,
        valid_vocab=run_model.vocab_size,
    )


def main(config: EvalLmConfig) -> dict[str, EvalResult]:
    check_checkpoint_path(config.checkpoint_path)
    trainer_config = config.trainer
    trainer_config.initialize()
    tokenizer = config.data.the_tokenizer
    run_model = config.run_model()
    trainer = Trainer(
        trainer_config, optax.identity(), compute_next_token_loss, add_default_hooks=False
    )
    results: dict[str, EvalResult] = {}
    with trainer:
        Vocab = vocab_axis(run_model.vocab_size, trainer.parameter_axis_mapping)
        model, checkpoint = load_model_for_eval(config, trainer, Vocab, run_model)
        from lm.checkpoint import load_metadata

        step = int(load_metadata(checkpoint)["step"])
        byte_lengths = None
        if not config.data.encoder.is_passthrough:
            byte_lengths = token_byte_lengths(tokenizer, Vocab.size)
        datasets = config.data.validation_sets(run_model.config.Pos)
        if not datasets:
            raise ValueError(
                "data has no validation set: set data.validation_urls (or a source with a "
                "validation split) to evaluate"
            )
        for name, dataset in datasets.items():
            result = evaluate_lm(
                trainer,
                model,
                dataset,
                name=name,
                byte_lengths=byte_lengths,
                max_batches=eval_batch_cap(trainer_config.max_eval_batches),
                valid_vocab=run_model.vocab_size,
            )
            results[name] = result
            trainer.tracker.log(result.metrics(), step=step)
        tagged = pool_by_tag(results, config.data.validation_tags())
        for result in tagged.values():
            trainer.tracker.log(result.metrics(), step=step)
        results.update(tagged)
        trainer.tracker.log_summary(
            {k: v for r in results.values() for k, v in r.metrics().items()}
        )
    weights = weights_used(checkpoint, trainer_config.model_averaging)
    print(format_results(results, checkpoint, step, weights=weights), flush=True)
    return results


def format_results(
    results: dict[str, EvalResult], checkpoint: str, step: int, *, weights: str | None = None
) -> str:
    """The table eval_lm prints; `weights` (`lm_run.weights_used`) says which weights of the
    checkpoint were evaluated."""
    rows = [("set", "loss", "perplexity", "bits/byte", "tokens", "batches")]
    for name, r in results.items():
        bpb = f"{r.bits_per_byte:.4f}" if r.bits_per_byte is not None else "n/a"
        rows.append(
            (
                name or "(default)",
                f"{r.loss:.4f}",
                f"{r.perplexity:.2f}",
                bpb,
                f"{r.num_tokens:,}",
                str(r.num_batches),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    what = f"step {step}, {weights}" if weights else f"step {step}"
    lines = [f"Evaluated {checkpoint} ({what}):"]
    for row in rows:
        lines.append(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    lm.config.main(main)()
