"""Parameter paths on Equinox/Haliax module trees, and weight-decay masks built from them.

Every array leaf of a model has two names:

- its **path from the root**, the attribute path joined with dots, e.g.
  `transformer.blocks.stacked.attn.c_attn.weight` (a NamedArray is one leaf; list items
  and dict keys appear as `.0` / `.key`);
- its **class path**, the class of the module that owns it plus the path inside that
  module, e.g. `Linear.weight`, `Embedding.weight`, `LayerNorm.bias`.

`map_params(fn, tree)` walks a tree and calls `fn(leaf, info)` with both, plus the owning
module and the `Block` axes of enclosing `hnn.Stacked` modules (the "layers" axes a scanned
weight carries in front of its own axes). Weight-decay masks, Muon's parameter split and
per-layer RMS clipping are all built on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
import numpy as np


@dataclass(frozen=True)
class ParamInfo:
    """Where an array leaf sits in a module tree."""

    path: str
    """Path from the root, e.g. `transformer.blocks.stacked.attn.c_attn.weight`."""
    class_path: str
    """Owning module's class name + path inside it, e.g. `Linear.weight`."""
    owner: Any
    """The innermost `eqx.Module` holding the leaf (None for a bare array or container)."""
    layer_axes: tuple[str, ...]
    """Names of the `Block` axes of enclosing `hnn.Stacked` modules, outermost first."""


def is_param_leaf(x: Any) -> bool:
    return hax.is_named_array(x) or isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct)


def _key_str(k: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def map_params(fn: Callable[[Any, ParamInfo], Any], tree: Any, *, default: Any = None) -> Any:
    """Replace every array leaf `x` of `tree` by `fn(x, info)`, keeping the tree's structure.

    NamedArrays count as single leaves. Non-array leaves become `default` when it is given,
    and stay as they are otherwise. `None` and empty nodes (e.g. optax `MaskedNode`) stay.
    """

    def walk(node, parts, owner, owner_cls, rel, layer_axes):
        if node is None:
            return None
        if hax.is_named_array(node) and node.array is None:
            # A filtered-out parameter (e.g. `eqx.filter` on a NamedArray): nothing to map.
            return node
        if is_param_leaf(node):
            class_path = ".".join([owner_cls, *rel]) if owner_cls else ".".join(parts)
            info = ParamInfo(".".join(parts), class_path, owner, layer_axes)
            return fn(node, info)
        if isinstance(node, eqx.Module):
            owner, owner_cls, rel = node, type(node).__name__, []
            if isinstance(node, hnn.Stacked):
                layer_axes = (*layer_axes, node.Block.name)
        children, treedef = jax.tree_util.tree_flatten_with_path(
            node, is_leaf=lambda x: x is not node
        )
        if treedef.num_nodes == 1 and treedef.num_leaves == 1:
            # `node` itself is a leaf of another kind (a Python scalar, a string, ...).
            return node if default is None else default
        out = []
        for path, child in children:
            (k,) = path
            name = _key_str(k)
            out.append(walk(child, [*parts, name], owner, owner_cls, [*rel, name], layer_axes))
        return jax.tree_util.tree_unflatten(treedef, out)

    return walk(tree, [], None, "", [], ())


def param_infos(tree: Any) -> list[ParamInfo]:
    """`ParamInfo` of every array leaf, in tree order."""
    infos: list[ParamInfo] = []

    def record(x, info):
        infos.append(info)
        return x

    map_params(record, tree)
    return infos


# --- weight decay ------------------------------------------------------------------------

_DEFAULT_EXCLUDED = ("LayerNorm", "RMSNorm", "RmsNorm", "Embedding")


def excluded_by_default(path: str) -> bool:
    """The default mask's rule: no decay for norms, embeddings and biases."""
    return any(name in path for name in _DEFAULT_EXCLUDED) or path.endswith("bias")


@dataclass(frozen=True)
class WeightDecayMask:
    """Decides which parameters get weight decay (see `OptimizerConfig.weight_decay_modules`).

    A callable `params -> mask tree` (bool per array leaf) for `optax.add_decayed_weights`.
    """

    modules: tuple[str, ...] | str | None
    """A regex (matched with `re.match` against both paths) or substrings (either path)."""
    use_default: bool
    """Apply the default rule (`excluded_by_default`) to leaves `modules` does not select."""

    def decays(self, info: ParamInfo) -> bool:
        paths = (info.path, info.class_path)
        if isinstance(self.modules, str):
            regex = re.compile(self.modules)
            if any(regex.match(p) for p in paths):
                return True
        elif self.modules is not None:
            if any(target in p for p in paths for target in self.modules):
                return True
        if self.use_default:
            return not any(excluded_by_default(p) for p in paths)
        return False

    def __call__(self, params: Any) -> Any:
        return map_params(lambda x, info: self.decays(info), params, default=False)

    def decayed_paths(self, params: Any) -> list[str]:
        return sorted(info.path for info in param_infos(params) if self.decays(info))


def build_weight_decay_mask(
    weight_decay_modules: list[str] | str | None, default_weight_decay_mask: bool | None
) -> WeightDecayMask | None:
    """The mask for these two config fields; None means every parameter is decayed."""
    if weight_decay_modules is None and default_weight_decay_mask is False:
        return None
    use_default = default_weight_decay_mask is True or (
        default_weight_decay_mask is None and weight_decay_modules is None
    )
    modules = (
        tuple(weight_decay_modules)
        if isinstance(weight_decay_modules, list | tuple)
        else weight_decay_modules
    )
    return WeightDecayMask(modules, use_default)
