"""Parameter initialisers shared by the models (HF-style normal(0, std) weights)."""

from __future__ import annotations

import haliax as hax
import haliax.nn as hnn
from haliax import Axis
from haliax.axis import AxisSpec
from jaxtyping import PRNGKeyArray

from lm.models.layers.linear import Linear


def init_linear(
    In: AxisSpec,
    Out: AxisSpec,
    *,
    key: PRNGKeyArray,
    std: float,
    use_bias: bool,
    out_first: bool = True,
) -> Linear:
    """A Linear layer (lm's `Linear`, see `lm.models.layers.linear`) with normal(0, std)
    weights and zero bias.

    `out_first=True` stores the weight (Out, In) like `torch.nn.Linear`; `False` stores it
    (In, Out) like HF's GPT-2 `Conv1D`.
    """
    axes = hax.concat_axis_specs(Out, In) if out_first else hax.concat_axis_specs(In, Out)
    weight = hax.random.normal(key, axes) * std
    bias = hax.zeros(Out) if use_bias else None
    return Linear(weight, bias, In, Out)


def init_embedding(Vocab: Axis, Embed: Axis, *, key: PRNGKeyArray, std: float) -> hnn.Embedding:
    """An Embedding with normal(0, std) rows; weight axes (Vocab, Embed)."""
    return hnn.Embedding(hax.random.normal(key, (Vocab, Embed)) * std, Vocab, Embed)
