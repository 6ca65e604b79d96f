"""The language-model example type shared by data, models and losses.

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

import equinox as eqx
import haliax as hax
import jax.numpy as jnp
from haliax import Axis, NamedArray


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
