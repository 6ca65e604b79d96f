"""One saved array leaf and its target: the compatibility check, the read, the assembly.

`_check_compatible` refuses a leaf whose kind, shape, dtype or axes differ from the
target's (`_LeafMismatch`); a `_Read` tracks one leaf's store and the distinct slices its
target sharding needs (`_target_sharding`, `_index_key`); `_assemble` places the slices read
on their devices as one array. `lm.checkpoint.restore` walks a checkpoint's leaves with these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import haliax as hax
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from lm.checkpoint.padding import _only_padding_differs
from lm.checkpoint.serialization import (
    CheckpointCorruptError,
    _array_of,
    _dtype_name,
    _is_key_array,
)
from lm.partitioning.mesh import default_device


def _target_sharding(
    arr: Any, axes: Sequence[Any] | None, axis_mapping: Any, mesh: Any
) -> jax.sharding.Sharding:
    if axis_mapping is not None or mesh is not None:
        resolved = mesh if mesh is not None else jax.sharding.get_mesh()
        if resolved is None or resolved.empty:
            raise ValueError(
                "load_checkpoint got axis_mapping but no mesh: pass mesh=... or call it "
                "inside `with jax.set_mesh(mesh):`"
            )
        if axes is None:
            return NamedSharding(resolved, PartitionSpec())
        return NamedSharding(resolved, hax.partitioning.pspec_for_axis(axes, axis_mapping))
    sharding = getattr(arr, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding):
        return sharding
    return SingleDeviceSharding(default_device())


def _index_key(index: tuple[slice, ...], shape: Sequence[int]) -> tuple:
    return tuple(s.indices(d) for s, d in zip(index, shape, strict=True))


@dataclasses.dataclass
class _Read:
    name: str
    exemplar: Any
    record: dict[str, Any]
    store_future: Any
    store: Any = None
    sharding: jax.sharding.Sharding | None = None
    index_map: dict[Any, tuple] | None = None
    reads: dict[tuple, Any] = dataclasses.field(default_factory=dict)
    host_only: bool = False
    # the target's shape, when it differs from the saved one along a padded axis
    target_shape: tuple[int, ...] | None = None


class _LeafMismatch(ValueError):
    """A checkpoint leaf whose kind, shape, dtype or axes differ from the target's."""


def _check_compatible(name: str, leaf: Any, record: dict[str, Any]) -> None:
    arr = _array_of(leaf)
    shape = tuple(getattr(arr, "shape", ()))
    want_key = _is_key_array(arr)
    have_key = record.get("key_impl") is not None
    if want_key != have_key:
        raise _LeafMismatch(
            f"checkpoint leaf {name!r}: the checkpoint holds "
            f"{'a PRNG key array' if have_key else 'a plain array'} but the target expects "
            f"{'a PRNG key array' if want_key else 'a plain array'}"
        )
    if want_key:
        stored_shape = tuple(record["shape"])
        want_data = jax.eval_shape(jax.random.key_data, arr)
        impl = str(jax.random.key_impl(arr)) if isinstance(arr, jax.Array) else None
        if impl is not None and impl != record["key_impl"]:
            raise _LeafMismatch(
                f"checkpoint leaf {name!r}: PRNG impl {record['key_impl']} in the checkpoint, "
                f"{impl} in the target"
            )
        if stored_shape != tuple(want_data.shape):
            raise _LeafMismatch(
                f"checkpoint leaf {name!r}: key data shape {stored_shape} in the checkpoint, "
                f"{tuple(want_data.shape)} for the target's keys of shape {shape}"
            )
        return
    if tuple(record["shape"]) != shape and not _only_padding_differs(leaf, record):
        raise _LeafMismatch(
            f"checkpoint leaf {name!r}: shape {tuple(record['shape'])} in the checkpoint, "
            f"{shape} in the target"
        )
    dtype = _dtype_name(arr.dtype)
    if record["dtype"] != dtype:
        raise _LeafMismatch(
            f"checkpoint leaf {name!r}: dtype {record['dtype']} in the checkpoint, "
            f"{dtype} in the target"
        )
    saved_axes = record.get("axes")
    if isinstance(leaf, hax.NamedArray) and saved_axes is not None:
        want_axes = [a.name for a in leaf.axes]
        if list(saved_axes) != want_axes:
            raise _LeafMismatch(
                f"checkpoint leaf {name!r}: axes {tuple(saved_axes)} in the checkpoint, "
                f"{tuple(want_axes)} in the target"
            )


def _ts_error(name: str, path: str, e: BaseException) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"cannot read leaf {name!r} of checkpoint {path}: {e}")


def _assemble(r: _Read, host: dict[tuple, np.ndarray]) -> Any:
    shape = r.target_shape or tuple(r.record["shape"])
    if r.host_only:
        value = host[()]
        if isinstance(_array_of(r.exemplar), np.generic):
            value = value[()]
    else:
        assert r.sharding is not None and r.index_map is not None
        shards = [jax.device_put(host[key], device) for device, key in r.index_map.items()]
        value = jax.make_array_from_single_device_arrays(shape, r.sharding, shards)
        if r.record.get("key_impl") is not None:
            value = jax.random.wrap_key_data(value, impl=r.record["key_impl"])
    if isinstance(r.exemplar, hax.NamedArray):
        return hax.NamedArray(value, r.exemplar.axes)
    return value
