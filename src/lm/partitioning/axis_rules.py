"""The logical -> physical axis table: one mapping for compute, one for parameters.

Basic mode (PAR-02): `batch_axis` -> (replica, data); `tensor_parallel_axes` -> model;
`fsdp_axis` -> data for parameters. Advanced mode (PAR-03): `axis_resources` is shared by
both mappings and `parameter_axis_resources` overrides it for parameters. Derivation (PAR-04):

    compute   = axis_resources + {tp axis: "model"} + {batch_axis: ("replica", "data")}
    parameter = compute + parameter_axis_resources + {fsdp axis: "data"}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from lm.partitioning.mesh import DATA, MODEL, REPLICA

logger = logging.getLogger(__name__)

ResourceMapping = dict[str, str | tuple[str, ...]]


def _normalize(value: str | Sequence[str]) -> str | tuple[str, ...]:
    return value if isinstance(value, str) else tuple(value)


def compute_axis_mapping(
    *,
    batch_axis: str = "batch",
    tensor_parallel_axes: Sequence[str] | None = None,
    axis_resources: Mapping[str, str | Sequence[str]] | None = None,
) -> ResourceMapping:
    mapping: ResourceMapping = {k: _normalize(v) for k, v in (axis_resources or {}).items()}
    if tensor_parallel_axes:
        overridden = sorted(set(tensor_parallel_axes) & set(mapping))
        if overridden:
            logger.warning(
                "tensor_parallel_axes overrides axis_resources for %s (both were set)", overridden
            )
        for axis in tensor_parallel_axes:
            mapping[axis] = MODEL
    mapping[batch_axis] = (REPLICA, DATA)
    return mapping


def parameter_axis_mapping(
    compute: Mapping[str, str | tuple[str, ...]],
    *,
    fsdp_axis: str | Sequence[str] | None = "embed",
    parameter_axis_resources: Mapping[str, str | Sequence[str]] | None = None,
) -> ResourceMapping:
    mapping: ResourceMapping = dict(compute)
    mapping.update({k: _normalize(v) for k, v in (parameter_axis_resources or {}).items()})
    if fsdp_axis is not None:
        for axis in [fsdp_axis] if isinstance(fsdp_axis, str) else fsdp_axis:
            mapping[axis] = DATA
    return mapping


def validate_mapping(mapping: Mapping[str, str | tuple[str, ...]], *, field: str) -> None:
    """Every physical name must be a mesh axis, and no physical axis may appear twice."""
    allowed = (REPLICA, DATA, MODEL)
    for logical, physical in mapping.items():
        names = (physical,) if isinstance(physical, str) else physical
        for name in names:
            if name not in allowed:
                raise ValueError(
                    f"{field}: logical axis {logical!r} maps to unknown mesh axis {name!r}; "
                    f"mesh axes are {list(allowed)}"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"{field}: logical axis {logical!r} lists a mesh axis twice: {names}")


def check_divisible(
    tree: Any, mapping: Mapping[str, str | tuple[str, ...]], mesh_shape: Mapping[str, int]
) -> None:
    """Every named axis of every NamedArray in `tree` (concrete or from `eval_shape`) must
    divide by the number of devices the mapping splits it over. Raises a ValueError naming
    the first parameter, axis and mesh axes that do not fit (jax would only report an
    array dimension)."""
    import haliax as hax
    import jax

    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=hax.is_named_array)
    for path, leaf in leaves:
        if not hax.is_named_array(leaf):
            continue
        for axis in leaf.axes:
            physical = mapping.get(axis.name)
            if physical is None:
                continue
            names = (physical,) if isinstance(physical, str) else tuple(physical)
            parts = math.prod(mesh_shape[name] for name in names)
            if axis.size % parts:
                raise ValueError(
                    f"parameter {jax.tree_util.keystr(path)} has axis {axis.name!r} of size "
                    f"{axis.size}, which the trainer's parameter axis mapping splits over mesh "
                    f"axes {list(names)} ({parts} devices), and {parts} does not divide "
                    f"{axis.size}. Change the model so {axis.name!r} divides by {parts}, or "
                    f"stop sharding {axis.name!r} that way (trainer.tensor_parallel_axes / "
                    "model_axis_size, fsdp_axis, axis_resources, parameter_axis_resources)"
                )
