"""The physical device mesh: axes `replica`, `data`, `model` over ICI (within a slice) and
DCN (across slices).

Sizes follow PAR-05. Within a slice the devices form (replica_ici, data_ici, model); across
slices (replica_dcn, data_dcn, 1). Each physical mesh axis is the product of its ICI and DCN
parts, so `data` spans every device that is neither a replica nor a tensor-parallel peer.
A size of -1 means "fill": `replica_dcn_axis_size=-1` is the number of slices, and one of
`replica_ici_axis_size` / `model_axis_size` may be -1 to take the rest of a slice.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from lm.config.errors import SetupConfigError

logger = logging.getLogger(__name__)

REPLICA, DATA, MODEL = "replica", "data", "model"
MESH_AXES = (REPLICA, DATA, MODEL)


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """Resolved mesh sizes (all positive)."""

    num_slices: int
    replica_ici: int
    data_ici: int
    model: int
    replica_dcn: int
    data_dcn: int

    @property
    def replica(self) -> int:
        return self.replica_ici * self.replica_dcn

    @property
    def data(self) -> int:
        return self.data_ici * self.data_dcn

    @property
    def data_axis_size(self) -> int:
        """Batch-parallel size: every device that holds different examples (replicas included)."""
        return self.replica * self.data

    @property
    def num_devices(self) -> int:
        return self.replica * self.data * self.model


def resolve_mesh_shape(
    num_devices: int,
    num_slices: int = 1,
    *,
    replica_ici_axis_size: int = 1,
    model_axis_size: int = 1,
    replica_dcn_axis_size: int = 1,
) -> MeshShape:
    """Resolve -1 sizes and check divisibility; errors say which sizes do not fit."""
    if num_slices < 1 or num_devices % num_slices:
        raise SetupConfigError(
            f"{num_devices} devices cannot be split evenly into {num_slices} slices"
        )
    per_slice = num_devices // num_slices
    for name, value in [
        ("replica_ici_axis_size", replica_ici_axis_size),
        ("model_axis_size", model_axis_size),
        ("replica_dcn_axis_size", replica_dcn_axis_size),
    ]:
        if value == 0 or value < -1:
            raise SetupConfigError(
                f"trainer.{name} must be a positive integer or -1 (fill), got {value}"
            )
    if replica_ici_axis_size == -1 and model_axis_size == -1:
        raise SetupConfigError(
            "trainer.replica_ici_axis_size and trainer.model_axis_size cannot both be -1 (fill)"
        )
    replica_dcn = num_slices if replica_dcn_axis_size == -1 else replica_dcn_axis_size
    if num_slices % replica_dcn:
        raise SetupConfigError(
            f"trainer.replica_dcn_axis_size ({replica_dcn}) must divide the number of slices "
            f"({num_slices})"
        )
    fixed = model_axis_size if replica_ici_axis_size == -1 else replica_ici_axis_size
    if -1 in (model_axis_size, replica_ici_axis_size) and per_slice % fixed:
        name = "model_axis_size" if replica_ici_axis_size == -1 else "replica_ici_axis_size"
        raise SetupConfigError(
            f"trainer.{name} ({fixed}) must divide the number of devices per slice "
            f"({per_slice}) for the other size's -1 to fill the rest; choose one of "
            f"{_divisors(per_slice)}"
        )
    if model_axis_size == -1:
        model_axis_size = per_slice // replica_ici_axis_size
    if replica_ici_axis_size == -1:
        replica_ici_axis_size = per_slice // model_axis_size
    if per_slice % model_axis_size:
        raise SetupConfigError(
            f"trainer.model_axis_size ({model_axis_size}) must divide the number of devices per "
            f"slice ({per_slice}); choose one of {_divisors(per_slice)}"
        )
    if per_slice % (replica_ici_axis_size * model_axis_size):
        raise SetupConfigError(
            f"trainer.replica_ici_axis_size ({replica_ici_axis_size}) x trainer.model_axis_size "
            f"({model_axis_size}) must divide the number of devices per slice ({per_slice})"
        )
    return MeshShape(
        num_slices=num_slices,
        replica_ici=replica_ici_axis_size,
        data_ici=per_slice // (replica_ici_axis_size * model_axis_size),
        model=model_axis_size,
        replica_dcn=replica_dcn,
        data_dcn=num_slices // replica_dcn,
    )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def count_slices(devices: Sequence[jax.Device]) -> int:
    """Number of slices (TPU multislice); 1 when devices carry no slice index."""
    indices = {getattr(d, "slice_index", 0) or 0 for d in devices}
    return max(indices) + 1


def default_device() -> jax.Device:
    """The device unsharded arrays land on: `jax_default_device` when it names a device or a
    platform, else this process's first local device."""
    device = jax.config.jax_default_device
    if isinstance(device, jax.Device):
        return device
    return jax.local_devices(backend=device)[0] if device else jax.local_devices()[0]


def create_mesh(shape: MeshShape, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with axes ("replica", "data", "model"), laid out for the interconnect."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != shape.num_devices:
        raise ValueError(f"mesh needs {shape.num_devices} devices, got {len(devices)}")
    ici = (shape.replica_ici, shape.data_ici, shape.model)
    if shape.num_slices > 1:
        dcn = (shape.replica_dcn, shape.data_dcn, 1)
        array = mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices, allow_split_physical_axes=True
        )
    else:
        try:
            array = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
        except (AssertionError, NotImplementedError, ValueError):
            # Topology-aware layout is unavailable for some device kinds (e.g. fake CPU devices
            # in odd shapes); a plain reshape is correct, only possibly slower.
            array = np.asarray(devices).reshape(ici)
    return Mesh(array, MESH_AXES)
