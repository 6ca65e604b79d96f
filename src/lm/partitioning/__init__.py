"""Device mesh and logical -> physical axis mappings (the one sharding table)."""

from lm.partitioning.axis_rules import (
    ResourceMapping,
    abstract_shapes,
    batch_axis_clash,
    check_distinct_mesh_axes,
    check_divisible,
    check_mapped_axes_exist,
    compute_axis_mapping,
    parameter_axis_mapping,
    parameter_axis_names,
    validate_mapping,
)
from lm.partitioning.mesh import (
    DATA,
    MESH_AXES,
    MODEL,
    REPLICA,
    MeshShape,
    count_slices,
    create_mesh,
    resolve_mesh_shape,
)

__all__ = [
    "DATA",
    "MESH_AXES",
    "MODEL",
    "REPLICA",
    "MeshShape",
    "ResourceMapping",
    "abstract_shapes",
    "batch_axis_clash",
    "check_distinct_mesh_axes",
    "check_divisible",
    "check_mapped_axes_exist",
    "compute_axis_mapping",
    "count_slices",
    "create_mesh",
    "parameter_axis_mapping",
    "parameter_axis_names",
    "resolve_mesh_shape",
    "validate_mapping",
]
