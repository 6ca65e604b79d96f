"""Embedding lookups laid out for the step's sharding.

Under FSDP an embedding table is stored split along `embed` over the data axis. Looked up as
stored, the gather's output comes out split along `embed` too, and its backward (the
scatter-add of the activations' gradient into the table, or for GPT-2's position embeddings a
sum over the batch) asks XLA's SPMD partitioner to turn a batch-split activation gradient
into an embed-split one. With replicas as well as data parallelism (`replica x data` for the
batch, `data` alone for `embed`) it found no efficient way and gathered the whole activation
gradient on every device ("Involuntary full rematerialization"). `lookup` lays the table out
like the activations first (the same all-gather a matmul weight gets): the gather's output is
split along the batch, each device scatter-adds its own examples, and the transpose of the
layout change returns the table's gradient to the parameter's layout in one reduce-scatter.
Without a mesh (or on one device) it changes nothing.
"""

from __future__ import annotations

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
from haliax import NamedArray


def lookup(embedding: hnn.Embedding, ids: NamedArray) -> NamedArray:
    """`embedding.embed(ids)` with the table first sharded by the current (compute) mapping."""
    table = eqx.tree_at(lambda e: e.weight, embedding, hax.auto_sharded(embedding.weight))
    return table.embed(ids)
