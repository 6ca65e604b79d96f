"""The logical -> physical axis table: one mapping for compute, one for parameters.

Basic mode (PAR-02): `batch_axis` -> (replica, data); `tensor_parallel_axes` -> model;
`fsdp_axis` -> data for parameters. Advanced mode (PAR-03): `axis_resources` is shared by
both mappings and `parameter_axis_resources` overrides it for parameters. Derivation (PAR-04):

    compute   = axis_resources + {tp axis: "model"} + {batch_axis: ("replica", "data")}
    parameter = compute + parameter_axis_resources + {fsdp axis: "data"}

The checks on what the user wrote come before that derivation hides anything:
`mapping_entry_problem` (each entry's mesh axes), `overridden_entries` (entries a later rule
would replace so that they can never take effect: errors), `fsdp_override_warnings` (entries
`fsdp_axis` replaces for parameters only), and `unused_mesh_axes` (a mesh axis of several
devices that nothing is split over).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from lm.config.errors import SetupConfigError, did_you_mean
from lm.partitioning.mesh import DATA, MESH_AXES, MODEL, REPLICA

logger = logging.getLogger(__name__)

ResourceMapping = dict[str, str | tuple[str, ...]]
T = TypeVar("T")

# The trainer fields that put logical axes on each mesh axis (for error messages).
_FIELDS_FOR_MESH_AXIS = {
    DATA: "trainer.fsdp_axis (parameter axes on 'data')",
    MODEL: "trainer.tensor_parallel_axes (axes on 'model')",
}


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
        # an entry that already says `model` loses nothing
        overridden = sorted(
            axis
            for axis in set(tensor_parallel_axes) & set(mapping)
            if _mesh_axes(mapping[axis]) != (MODEL,)
        )
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
    for axis in fsdp_axes(fsdp_axis):
        mapping[axis] = DATA
    return mapping


def fsdp_axes(fsdp_axis: str | Sequence[str] | None) -> list[str]:
    """`fsdp_axis` as a list of logical axis names (empty when FSDP is off)."""
    if fsdp_axis is None:
        return []
    return [fsdp_axis] if isinstance(fsdp_axis, str) else list(fsdp_axis)


def _show(physical: Any) -> str:
    """A mapping value for a message: `'data'`, `[replica, data]` (as YAML writes a list)."""
    if isinstance(physical, str):
        return repr(physical)
    return "[" + ", ".join(str(name) for name in physical) + "]"


def _target(physical: str | Sequence[str]) -> str:
    """A mapping value as the right side of `embed -> data`, `batch -> (replica, data)`."""
    names = _mesh_axes(physical)
    return names[0] if len(names) == 1 else "(" + ", ".join(names) + ")"


def mapping_entry_problem(physical: Any) -> str | None:
    """What is wrong with the value of one entry of a user's mapping (`axis_resources`,
    `parameter_axis_resources`), or None: it must be a mesh axis name or a list of distinct
    ones. The message reads after the entry's YAML path and has a did-you-mean."""
    allowed = "a mesh axis ('replica', 'data' or 'model') or a list of them"
    if isinstance(physical, str):
        names: tuple[Any, ...] = (physical,)
    elif isinstance(physical, Sequence):
        names = tuple(physical)
    else:
        return f"got {physical!r}, expected {allowed}"
    for name in names:
        if name in MESH_AXES:
            continue
        hint = did_you_mean(str(name), MESH_AXES, cutoff=0.5)
        which = "" if isinstance(physical, str) else f", where {name!r} is not a mesh axis"
        return f"got {_show(physical)}{which}, expected {allowed}{hint}"
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return (
            f"got {_show(physical)}, which lists mesh axis {repeated[0]!r} twice: expected "
            "distinct mesh axes"
        )
    return None


def overridden_entries(
    *,
    batch_axis: str = "batch",
    fsdp_axis: str | Sequence[str] | None = "embed",
    axis_resources: Mapping[str, Any] | None = None,
    parameter_axis_resources: Mapping[str, Any] | None = None,
) -> list[tuple[str, str, str]]:
    """The user's mapping entries the derivation would replace in every mapping they are part
    of, so that they could never take effect: `(field, logical axis, message)` per entry
    (`("axis_resources", "batch", ...)`). Entries with invalid values are skipped
    (see `mapping_entry_problem`).

    - `axis_resources.<batch_axis>`: the batch axis is always split over (replica, data).
    - `parameter_axis_resources.<axis>` for an axis of `fsdp_axis`: FSDP puts it on `data`,
      and `parameter_axis_resources` maps parameters only.

    An entry that equals what replaces it is fine.
    """
    problems = []
    batch = (axis_resources or {}).get(batch_axis)
    if batch is not None and mapping_entry_problem(batch) is None:
        if _mesh_axes(batch) != (REPLICA, DATA):
            problems.append(
                (
                    "axis_resources",
                    batch_axis,
                    f"got {_show(batch)}, but the batch axis ({batch_axis!r}, "
                    "trainer.batch_axis) is always split over [replica, data], the "
                    "batch-parallel devices, so this entry would be replaced and never take "
                    "effect. Remove it (trainer.replica_ici_axis_size and model_axis_size size "
                    "the batch-parallel devices), or set trainer.batch_axis if "
                    f"{batch_axis!r} is not the batch axis",
                )
            )
    fsdp = fsdp_axes(fsdp_axis)
    for axis, physical in (parameter_axis_resources or {}).items():
        if axis not in fsdp or mapping_entry_problem(physical) is not None:
            continue
        if _mesh_axes(physical) == (DATA,):
            continue
        default = "; 'embed' is the default" if fsdp_axis == "embed" else ""
        problems.append(
            (
                "parameter_axis_resources",
                axis,
                f"got {_show(physical)}, but trainer.fsdp_axis ({fsdp_axis!r}{default}) "
                f"also maps {axis!r} for parameters, to 'data', and comes last: parameters "
                f"would map {axis} -> data and this entry would never take effect. To use it, "
                f"set trainer.fsdp_axis: null (or leave {axis!r} out of it); otherwise remove "
                "the entry",
            )
        )
    return problems


def fsdp_override_warnings(
    *,
    fsdp_axis: str | Sequence[str] | None = "embed",
    tensor_parallel_axes: Sequence[str] | None = None,
    axis_resources: Mapping[str, Any] | None = None,
    parameter_axis_resources: Mapping[str, Any] | None = None,
) -> list[str]:
    """A warning per axis of `fsdp_axis` that `tensor_parallel_axes` or `axis_resources` maps
    elsewhere: FSDP replaces that entry for parameters (and optimizer state), so they are laid
    out otherwise than the activations the entry still maps. Saying the parameters' layout in
    `parameter_axis_resources` (`{embed: data}`) states it is meant, and silences it."""
    warnings = []
    tensor_parallel = list(tensor_parallel_axes or [])
    for axis in fsdp_axes(fsdp_axis):
        if axis in (parameter_axis_resources or {}):
            continue
        if axis in tensor_parallel:
            field, physical = "trainer.tensor_parallel_axes", MODEL
        elif axis in (axis_resources or {}):
            field, physical = "trainer.axis_resources", axis_resources[axis]
        else:
            continue
        if _mesh_axes(physical) == (DATA,):
            continue
        warnings.append(
            f"trainer.fsdp_axis overrides {field} for {axis!r} in the parameter mapping: "
            f"parameters and optimizer state map {axis} -> data, activations {axis} -> "
            f"{_target(physical)}. To store parameters as {field} says, leave {axis!r} out of "
            "trainer.fsdp_axis (or set it to null); to keep this layout without this warning, "
            f"add it to trainer.parameter_axis_resources ({{{axis}: data}})"
        )
    return warnings


# Where the size of each mesh axis comes from (for the unused-axis warning).
_SIZE_FIELDS = {
    REPLICA: "trainer.replica_ici_axis_size x replica_dcn_axis_size",
    DATA: "the devices left over by trainer.replica_*_axis_size and model_axis_size",
    MODEL: "trainer.model_axis_size",
}
_HOW_TO_USE = {
    REPLICA: "set trainer.replica_ici_axis_size and replica_dcn_axis_size to 1",
    DATA: "map an axis to 'data' (trainer.fsdp_axis for parameters)",
    MODEL: (
        "set trainer.tensor_parallel_axes (e.g. [heads, mlp]; Llama: [kv_head, mlp]) or map "
        "axes to 'model' in trainer.axis_resources, or set trainer.model_axis_size: 1 to use "
        "those devices for data parallelism"
    ),
}


def unused_mesh_axes(
    mesh_shape: Mapping[str, int], *mappings: Mapping[str, str | tuple[str, ...]]
) -> list[str]:
    """A warning per mesh axis of more than one device that no logical axis of any of
    `mappings` (the compute and the parameter mapping) is split over: every parameter and
    activation is then replicated along it, and its devices repeat each other's work."""
    used = {
        name for mapping in mappings for value in mapping.values() for name in _mesh_axes(value)
    }
    warnings = []
    for mesh_axis, size in mesh_shape.items():
        if size <= 1 or mesh_axis in used:
            continue
        sized_by = _SIZE_FIELDS.get(mesh_axis, "the mesh")
        fix = _HOW_TO_USE.get(mesh_axis, "map an axis to it")
        warnings.append(
            f"mesh axis {mesh_axis!r} has {size} devices ({sized_by} = {size}), but no logical "
            "axis is mapped to it by trainer.tensor_parallel_axes, trainer.axis_resources, "
            "trainer.parameter_axis_resources or trainer.fsdp_axis: every parameter and "
            f"activation is replicated over those {size} devices, which repeat each other's "
            f"work. To use them, {fix}"
        )
    return warnings


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


def batch_axis_clash(
    mapping: Mapping[str, str | tuple[str, ...]], *, batch_axis: str
) -> tuple[str, str] | None:
    """The first logical axis of a compute mapping that shares a mesh axis with the batch axis,
    and what to tell the user about it; None if there is none.

    Every activation of a training step carries the batch axis (`[batch, position, embed]`,
    `[batch, position, mlp]`, ...), and a mesh axis can split only one axis of an array, so a
    compute-mapping entry on `replica` or `data` (where the batch always goes) would make jax
    raise `DuplicateSpecError` on the first batch. Parameter-only sharding belongs in
    `parameter_axis_resources` / `fsdp_axis`, which the compute mapping does not see.
    """
    batch_mesh = _mesh_axes(mapping.get(batch_axis, ()))
    for logical, physical in mapping.items():
        shared = [name for name in _mesh_axes(physical) if name in batch_mesh]
        if logical == batch_axis or not shared:
            continue
        return logical, (
            f"got {physical!r}, but the batch axis {batch_axis!r} is always split over "
            f"{list(batch_mesh)} in compute and every activation has both axes: a mesh axis can "
            f"split only one axis of an array ({shared[0]!r} here). Map {logical!r} to 'model' "
            "(tensor or sequence parallelism), or shard it for parameters only with "
            f"trainer.parameter_axis_resources ({{{logical}: {shared[0]}}}) or trainer.fsdp_axis"
        )
    return None


def check_divisible(
    tree: Any,
    mapping: Mapping[str, str | tuple[str, ...]],
    mesh_shape: Mapping[str, int],
    *,
    padded: Sequence[str] = (),
) -> None:
    """Every named axis of every NamedArray in `tree` (concrete or from `eval_shape`) must
    divide by the number of devices the mapping splits it over, except `padded` axes (the
    vocabulary, which a run pads to fit). Raises a `SetupConfigError` (a ValueError: a
    configuration problem, exit status 2 from the command line) naming the first parameter,
    axis and mesh axes that do not fit (jax would only report an array dimension)."""
    import haliax as hax
    import jax

    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=hax.is_named_array)
    for path, leaf in leaves:
        if not hax.is_named_array(leaf):
            continue
        for axis in leaf.axes:
            physical = mapping.get(axis.name)
            if physical is None or axis.name in padded:
                continue
            names = _mesh_axes(physical)
            parts = math.prod(mesh_shape[name] for name in names)
            if axis.size % parts:
                raise SetupConfigError(
                    f"parameter {_path_name(path)} has axis {axis.name!r} of size "
                    f"{axis.size}, which the trainer's parameter axis mapping splits over mesh "
                    f"axes {list(names)} ({parts} devices), and {parts} does not divide "
                    f"{axis.size}. Change the model so {axis.name!r} divides by {parts}, or "
                    f"stop sharding {axis.name!r} that way (trainer.tensor_parallel_axes / "
                    "model_axis_size, fsdp_axis, axis_resources, parameter_axis_resources)"
                )


def _mesh_axes(physical: str | Sequence[str]) -> tuple[str, ...]:
    return (physical,) if isinstance(physical, str) else tuple(physical)


def abstract_shapes(init: Callable[[], T]) -> T:
    """`eqx.filter_eval_shape(init)` with no axis mapping active.

    Model builders shard every new array by the current axis mapping, so tracing a model
    under a mapping that puts two of a parameter's axes on one mesh axis fails inside jax
    (`DuplicateSpecError`) before `check_distinct_mesh_axes` can say which ones. Shapes alone
    need no mapping.
    """
    import equinox as eqx
    import haliax as hax

    with hax.axis_mapping({}):
        return eqx.filter_eval_shape(init)


def check_distinct_mesh_axes(
    tree: Any,
    mapping: Mapping[str, str | tuple[str, ...]],
    *,
    mapping_name: str = "parameter axis mapping",
) -> None:
    """No NamedArray in `tree` (concrete or abstract) may have two axes that `mapping` puts
    on the same mesh axis: a mesh axis can split only one dimension of an array.

    `validate_mapping` checks each logical axis on its own; this needs the parameters, since
    `fsdp_axis: [embed, mlp]` is fine for a model with no (embed, mlp) weight. Raises a
    `SetupConfigError` (a ValueError) naming the first parameter, its two logical axes, the mesh axis and the
    trainer fields to change (jax would raise `DuplicateSpecError` on a bare PartitionSpec).
    """
    import haliax as hax
    import jax

    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=hax.is_named_array)
    for path, leaf in leaves:
        if not hax.is_named_array(leaf):
            continue
        owner: dict[str, str] = {}  # mesh axis -> the logical axis of `leaf` it splits
        for axis in leaf.axes:
            physical = mapping.get(axis.name)
            if physical is None:
                continue
            for mesh_axis in _mesh_axes(physical):
                first = owner.setdefault(mesh_axis, axis.name)
                if first == axis.name:
                    continue
                fields = (
                    [_FIELDS_FOR_MESH_AXIS[mesh_axis]] if mesh_axis in _FIELDS_FOR_MESH_AXIS else []
                )
                fields += ["trainer.axis_resources", "trainer.parameter_axis_resources"]
                raise SetupConfigError(
                    f"parameter {_path_name(path)} has axes {first!r} "
                    f"({mapping.get(first)!r}) and {axis.name!r} ({physical!r}), which the "
                    f"trainer's {mapping_name} both shards over mesh axis {mesh_axis!r}; a mesh "
                    "axis can split only one axis of an array. Map at most one of "
                    f"{first!r} and {axis.name!r} to {mesh_axis!r}: change "
                    + ", ".join(fields[:-1])
                    + f" or {fields[-1]}"
                )


def _path_name(path) -> str:
    """A pytree key path as `transformer.blocks.stacked.mlp.c_fc.weight`."""
    import jax

    return jax.tree_util.keystr(path, simple=True, separator=".")


def parameter_axis_names(tree: Any) -> set[str]:
    """The names of the axes of every NamedArray in `tree` (concrete or abstract)."""
    import haliax as hax
    import jax

    leaves = jax.tree_util.tree_leaves(tree, is_leaf=hax.is_named_array)
    return {axis.name for leaf in leaves if hax.is_named_array(leaf) for axis in leaf.axes}


def check_mapped_axes_exist(
    tree: Any,
    *,
    batch_axis: str = "batch",
    fsdp_axis: str | Sequence[str] | None = None,
    tensor_parallel_axes: Sequence[str] | None = None,
    axis_resources: Mapping[str, Any] | None = None,
    parameter_axis_resources: Mapping[str, Any] | None = None,
) -> list[str]:
    """The logical axes the trainer's sharding fields name that no parameter in `tree` has:
    they shard nothing, so a typo (or the default `fsdp_axis: embed` on a model without an
    `embed` axis) would leave every parameter replicated in silence.

    Returns a warning per axis named by `fsdp_axis` (parameters only), `tensor_parallel_axes`
    or `axis_resources` (these also map activations, which may have axes no parameter has:
    sequence parallelism over `position`). A `parameter_axis_resources` entry maps
    parameters only, so an axis no parameter has is an error. A tree without NamedArrays
    (a model of plain arrays, which no logical axis shards) is not checked.

    Raises:
        ValueError: a `parameter_axis_resources` axis that no parameter has, or a `batch_axis`
            that is a parameter axis (batches would need that axis's size).
    """
    present = parameter_axis_names(tree)
    if not present:
        return []
    listed = ", ".join(sorted(present))

    def unknown(axis: str) -> str | None:
        if axis in present or axis == batch_axis:
            return None
        hint = did_you_mean(axis, sorted(present))
        return f"{axis!r} names no axis of the model's parameters (they have: {listed}){hint}"

    if batch_axis in present:
        raise ValueError(
            f"trainer.batch_axis: {batch_axis!r} is an axis of the model's parameters (they "
            f"have: {listed}); the batch axis needs a name of its own, such as 'batch' (the "
            "default)"
        )
    errors = [
        f"trainer.parameter_axis_resources: {why}"
        for axis in (parameter_axis_resources or {})
        if (why := unknown(axis)) is not None
    ]
    if errors:
        raise ValueError(
            "; ".join(errors)
            + ". (parameter_axis_resources maps parameter axes only: use the model's axis names)"
        )
    parameters_only = (
        "so it shards no parameter and no optimizer state (they are replicated on every "
        "data-parallel device). Set fsdp_axis to an axis of the model (a large one every big "
        "parameter has), or null to turn FSDP off"
    )
    activations_too = (
        "so it shards no parameter, only activations that have it (if any: e.g. sequence "
        "parallelism over 'position'). If you meant a parameter axis, fix the name"
    )
    warnings = []
    for field, axes, consequence in (
        ("fsdp_axis", fsdp_axes(fsdp_axis), parameters_only),
        ("tensor_parallel_axes", list(tensor_parallel_axes or []), activations_too),
        ("axis_resources", list(axis_resources or {}), activations_too),
    ):
        for axis in axes:
            if (why := unknown(axis)) is not None:
                warnings.append(f"trainer.{field}: {why}, {consequence}")
    return warnings
