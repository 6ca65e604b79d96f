"""Language-model contracts shared by data, models, losses and the trainer.

- `LmExample`: one causal-LM training example (or a batch of them).
- `LmConfig`: the registry of model configs (`model: {type: gpt2 | llama | ...}`); a config
  builds its model with `config.build(Vocab, key=...)`.
- `LmHeadModel`: the base class of every causal LM: token ids in, logits out.

`LmExample` is one causal-LM training example (or a batch of them, with a leading batch
axis): token ids over the position axis, a boolean loss mask and optional segment ids for
packed documents.

Conventions:
- Position `i` predicts token `i + 1`. `loss_mask[i]` says whether that prediction counts;
  the last position never counts (there is no next token in the window).
- `segment_ids[i]` names the document token `i` belongs to. Attention never crosses
  segments, and a prediction whose target lies in another segment does not count.
  Negative segment ids mark padding (never attended to, never predicted).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Generic, TypeVar

import draccus
import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
from haliax import Axis, NamedArray
from jaxtyping import PRNGKeyArray

from lm.config import FieldError, invalid, raise_problems


class LmExample(eqx.Module):
    tokens: NamedArray
    """int32 token ids, axes (..., Pos)."""
    loss_mask: NamedArray
    """bool, axes (..., Pos): whether predicting token i+1 from position i counts."""
    segment_ids: NamedArray | None = None
    """int32 document ids, axes (..., Pos), or None for one document per window."""

    @staticmethod
    def causal(
        tokens: NamedArray,
        *,
        Pos: Axis | str = "position",
        loss_mask: NamedArray | None = None,
        segment_ids: NamedArray | None = None,
        ignore_id: int | None = None,
    ) -> LmExample:
        """Build the loss mask for next-token prediction.

        Args:
            tokens: token ids, axes (..., Pos).
            Pos: the position axis (or its name).
            loss_mask: an extra boolean mask over (..., Pos) to AND in (e.g. prompt tokens).
            segment_ids: document ids over (..., Pos) for packed sequences.
            ignore_id: a token id whose prediction never counts (e.g. padding).
        """
        Pos = tokens.resolve_axis(Pos.name if isinstance(Pos, Axis) else Pos)
        not_last = hax.arange(Pos) < Pos.size - 1
        mask = hax.broadcast_to(not_last, tokens.axes)
        targets = hax.roll(tokens, -1, Pos)
        if ignore_id is not None:
            mask = mask & (targets != ignore_id)
        if segment_ids is not None:
            next_segment = hax.roll(segment_ids, -1, Pos)
            mask = mask & (segment_ids == next_segment) & (segment_ids >= 0)
        if loss_mask is not None:
            mask = mask & loss_mask.astype(jnp.bool_)
        return LmExample(tokens=tokens, loss_mask=mask, segment_ids=segment_ids)


LmT = TypeVar("LmT", bound="LmHeadModel")


@dataclasses.dataclass(frozen=True)
class LmConfig(draccus.ChoiceRegistry, abc.ABC, Generic[LmT]):
    """Base of every model config; the `type:` key picks the architecture.

    Implementations register themselves with `@LmConfig.register_subclass("<type>")` and are
    imported by `lm.models`. There is no default `type`: a model section must name one.
    """

    runtime_fields: ClassVar[frozenset[str]] = frozenset({"seq_len", "cross_entropy_block_size"})
    """Fields that do not change the function the model computes: how it runs (attention
    kernel, remat, layer scan, loss blocks), how it trains (dropout, init scale), its context
    length and bookkeeping. Every other field is architecture: a checkpoint records it
    (`lm.lm_run.model_architecture`) and a model loaded from an HF checkpoint must match it
    (`lm.models.hf.compat.architecture_differences`)."""

    cross_entropy_block_size: int | None = None
    """Vocabulary block size for the blockwise cross-entropy loss (None: dense logits).

    The loss then never materialises the full (tokens, vocab) logits: it walks the vocabulary
    in blocks of this many entries with a running log-sum-exp. Large blocks are faster."""

    def __post_init__(self):
        raise_problems(self._field_problems())

    def _field_problems(self) -> list[FieldError]:
        """Every invalid field, each a `FieldError` naming it, so that one run reports them all
        (the decoder shows each at `model.<field>`). Subclasses extend `super()`'s list; they
        also normalise their enum-valued fields here, as each parse is one of the checks."""
        problems: list[FieldError] = []
        if self.cross_entropy_block_size is not None and self.cross_entropy_block_size <= 0:
            problems.append(
                invalid(
                    "cross_entropy_block_size",
                    self.cross_entropy_block_size,
                    "a positive int or null",
                )
            )
        return problems

    @property
    @abc.abstractmethod
    def model_type(self) -> type[LmT]:
        """The `LmHeadModel` class this config builds."""

    @property
    @abc.abstractmethod
    def Pos(self) -> Axis:
        """The (query) position axis, named "position", sized `seq_len`."""

    @property
    @abc.abstractmethod
    def KeyPos(self) -> Axis:
        """The key position axis: `Pos.alias("key_position")`."""

    @property
    @abc.abstractmethod
    def Embed(self) -> Axis:
        """The hidden axis, named "embed"."""

    @abc.abstractmethod
    def flops_per_token(self, vocab_size: int) -> float | None:
        """Forward-pass FLOPs per token (a multiply-add counts 2), for MFU accounting.

        Counts every matrix multiply of the forward pass, including the attention scores and
        the weighted sum over all `seq_len` key positions (no causal discount) and the LM
        head; elementwise work (norms, softmax, activations) is not counted. Multiply by 3
        for a training step (forward + backward)."""

    @abc.abstractmethod
    def total_trainable_params(self, vocab_size: int) -> int:
        """The exact number of trainable scalars in `build(Vocab(vocab_size))`."""

    def build(self, Vocab: Axis, *, key: PRNGKeyArray) -> LmT:
        """Initialise a fresh model for vocabulary axis `Vocab` (named "vocab")."""
        from lm.compile_options import use_unrolled_threefry_on_cpu

        use_unrolled_threefry_on_cpu()  # same values; compiles and runs faster on CPU
        return self.model_type.init(Vocab, self, key=key)


class LmHeadModel(eqx.Module, Generic[LmT]):
    """A causal LM: token ids (..., Pos) -> logits (..., Pos, Vocab).

    Subclasses declare the fields `config` (their `LmConfig`, static) and `Vocab` (the
    vocabulary axis, possibly padded beyond the tokenizer's size, static), and implement
    `init`, `activations`, `get_lm_head` and `resize_vocab`.
    """

    @property
    def Pos(self) -> Axis:
        return self.config.Pos

    @property
    def KeyPos(self) -> Axis:
        return self.config.KeyPos

    @property
    def Embed(self) -> Axis:
        return self.config.Embed

    @classmethod
    @abc.abstractmethod
    def init(cls, Vocab: Axis, config: LmConfig, *, key: PRNGKeyArray) -> LmHeadModel:
        """Build a freshly initialised model."""

    @abc.abstractmethod
    def activations(
        self,
        input_ids: NamedArray,
        attn_mask=None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> NamedArray:
        """Final hidden states (after the last norm), axes (..., Pos, Embed).

        Args:
            input_ids: int token ids, axes (..., Pos).
            attn_mask: an `AttentionMask` (causal, segment ids, sliding window); None means
                plain causal attention.
            key: PRNG key for dropout; None runs in inference mode (no dropout).
        """

    @abc.abstractmethod
    def get_lm_head(self) -> NamedArray:
        """The unembedding matrix, axes (Vocab, Embed)."""

    @abc.abstractmethod
    def resize_vocab(self, new_size: int, key: PRNGKeyArray | None = None) -> LmHeadModel:
        """A copy with the vocabulary axis resized to `new_size`.

        Rows are truncated when shrinking; when growing, new rows are drawn from a normal
        distribution matching the existing rows' mean and std if `key` is given, else set to
        the mean row."""

    def __call__(
        self,
        input_ids: NamedArray,
        attn_mask=None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> NamedArray:
        """Logits over the vocabulary, axes (..., Pos, Vocab); same args as `activations`."""
        hidden = self.activations(input_ids, attn_mask, key=key)
        return hax.dot(hidden, self.get_lm_head(), axis=self.Embed)


def count_parameters(model: eqx.Module) -> int:
    """Number of scalars in the model's inexact (float) array leaves."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return int(sum(x.size for x in leaves))
