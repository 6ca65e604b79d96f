"""Loading checkpoints: into any sharding, skipping torn ones, or initializing what's missing.

Each array leaf is read straight into its target sharding: for every addressable device
the slice it holds is read from the zarr3 array (each distinct slice once), so a
process reads only what it keeps, and a checkpoint saved on one mesh loads onto any
other. Reads are all issued before any is awaited.

A checkpoint that exists but cannot be read (unreadable metadata.json, no manifest, a
missing or corrupted chunk) raises `CheckpointCorruptError`; with `discover_latest` the loader then warns and tries
the previous complete checkpoint. If none can be read it raises `CheckpointLoadError`
rather than letting a run start over from step 0.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import logging
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import tensorstore as ts
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from lm.checkpoint.serialization import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointCorruptError,
    CheckpointLoadError,
    _array_of,
    _dtype_name,
    _is_array_like,
    _is_key_array,
    named_leaves,
)
from lm.checkpoint.storage import (
    MANIFEST_FILE,
    METADATA_FILE,
    checkpoint_candidates,
    join,
    kvstore_url,
    read_json,
    read_status,
    ts_context,
)
from lm.compile_options import xla_compiler_options
from lm.partitioning.mesh import default_device

logger = logging.getLogger(__name__)

T = TypeVar("T")


QUANTIZATION_STATE = "/dot_general/"
"""Where a checkpoint holds a quantized `Linear`'s matmul state (Haliax's `Fp8DotGeneralOp`
is the layer's `dot_general` field): a leaf name with this part."""


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


# Named axes lm pads beyond their real size so that a mesh axis splits them evenly
# (`lm.lm_run.vocab_axis`): the rows past the real size are padding, never read (no token id
# reaches them) and given no probability by the loss. Under `padded_axes(vocab=<real size>)`
# a checkpoint saved on a layout that padded differently (1004 rows on 4-way tensor
# parallelism, 1001 on one device) loads on another: rows beyond the target's size are
# dropped, missing ones are zeros, and the real rows must fit in both. Anything else (another
# vocabulary, or no real size given) is a shape mismatch, as for every other axis. A
# checkpoint records the real sizes it was saved with (metadata.json `real_axis_sizes`,
# written by `Trainer.real_axis_sizes`): a smaller vocabulary than the saved one would
# otherwise fit inside its rows and load cut down.
_REAL_SIZES: contextvars.ContextVar[Mapping[str, int]] = contextvars.ContextVar(
    "lm_checkpoint_padded_axes", default=types.MappingProxyType({})
)


@contextlib.contextmanager
def padded_axes(**real_sizes: int) -> Iterator[None]:
    """Within this block, loads accept a named axis of `real_sizes` padded differently in
    the checkpoint than in the target (`padded_axes(vocab=1001)`), as long as both hold at
    least the real size."""
    token = _REAL_SIZES.set({**_REAL_SIZES.get(), **real_sizes})
    try:
        yield
    finally:
        _REAL_SIZES.reset(token)


REAL_AXIS_SIZES_KEY = "real_axis_sizes"
"""metadata.json's record of the real (unpadded) sizes of a checkpoint's padded axes."""


def _check_real_sizes(path: str) -> None:
    """Under `padded_axes`, the real sizes the checkpoint was saved with (where it records
    them: older checkpoints do not) must be the target's: 8192 saved rows hold a 500-token
    vocabulary's rows too, but they are another vocabulary's embeddings."""
    real = _REAL_SIZES.get()
    if not real:
        return
    saved = (read_json(path, METADATA_FILE) or {}).get(REAL_AXIS_SIZES_KEY)
    if not isinstance(saved, dict):
        logger.warning(
            "Checkpoint %s does not record the real sizes of its padded axes (%s; saved "
            "before checkpoints recorded them): that it was saved with the same %s cannot be "
            "checked",
            path,
            REAL_AXIS_SIZES_KEY,
            ", ".join(f"{name} {size}" for name, size in real.items()),
        )
        return
    for name, size in real.items():
        if name in saved and saved[name] != size:
            what = "vocabulary" if name == "vocab" else f"{name!r} axis"
            raise ValueError(
                f"checkpoint {path} was saved with a {what} of {saved[name]} (metadata.json: "
                f"{REAL_AXIS_SIZES_KEY}.{name}), and what it is loaded into has {size}"
                + (
                    ": its embeddings belong to another tokenizer (data.tokenizer or "
                    "data.vocab_size differ from the saving run's; its run's config.yaml "
                    "holds them)"
                    if name == "vocab"
                    else ""
                )
            )


def _only_padding_differs(leaf: Any, record: dict[str, Any]) -> bool:
    """Whether the saved and target shapes of a named leaf differ only along axes padded
    past a known real size (`padded_axes`), both holding all of its real rows."""
    saved_axes = record.get("axes")
    if not isinstance(leaf, hax.NamedArray) or saved_axes is None:
        return False
    if list(saved_axes) != [a.name for a in leaf.axes]:
        return False
    real = _REAL_SIZES.get()
    return all(
        saved == axis.size or (axis.name in real and min(saved, axis.size) >= real[axis.name])
        for saved, axis in zip(record["shape"], leaf.axes, strict=True)
    )


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


def _load_one(
    exemplar: Any,
    path: str,
    *,
    axis_mapping: Any,
    mesh: Any,
    subpath: str | None,
    allow_partial: bool,
    exact: bool = False,
) -> Any:
    try:
        manifest = read_json(path, MANIFEST_FILE)
    except ValueError as e:
        raise CheckpointCorruptError(str(e)) from e
    if manifest is None:
        raise CheckpointCorruptError(f"checkpoint {path} has no {MANIFEST_FILE}")
    if not isinstance(manifest, dict):
        raise CheckpointCorruptError(
            f"checkpoint {path}: {MANIFEST_FILE} holds a {type(manifest).__name__}, not the "
            "manifest's object (a damaged file)"
        )
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format {manifest.get('format')!r} version "
            f"{manifest.get('format_version')!r}; this code reads {FORMAT!r} version "
            f"{FORMAT_VERSION}"
        )
    records: dict[str, dict[str, Any]] = manifest.get("leaves")
    if not isinstance(records, dict) or not all(
        isinstance(r, dict) and "kind" in r for r in records.values()
    ):
        raise CheckpointCorruptError(
            f"checkpoint {path}: {MANIFEST_FILE} has no valid 'leaves' table (a damaged file)"
        )
    _check_real_sizes(path)
    prefix = subpath.strip("/") + "/" if subpath else ""
    leaves, treedef = named_leaves(exemplar)
    base_url = kvstore_url(path)

    out: list[Any] = []
    reads: list[tuple[int, _Read]] = []
    missing: list[str] = []
    unsaved: list[str] = []
    num_wanted = 0  # the leaves to load (not None)
    try:
        for name, leaf in leaves:
            full = prefix + name if name != "root" or not prefix else prefix.rstrip("/")
            record = records.get(full)
            if leaf is None or (isinstance(leaf, hax.NamedArray) and leaf.array is None):
                out.append(leaf)
                continue
            num_wanted += 1
            if record is None:
                missing.append(full)
                out.append(leaf)
                continue
            kind = record["kind"]
            if kind in ("none", "skipped"):
                # Not saved (e.g. a non-trainable parameter): the exemplar's value stays, and
                # an abstract one stays abstract for load_checkpoint_or_initialize to fill.
                if kind == "none":
                    unsaved.append(full)
                out.append(leaf)
            elif kind == "scalar":
                if _is_array_like(_array_of(leaf)):
                    raise _LeafMismatch(
                        f"checkpoint leaf {full!r} is a Python {record['type']} in the checkpoint "
                        f"but an array in the target"
                    )
                out.append(record["value"])
            elif kind == "array":
                arr = _array_of(leaf)
                if not _is_array_like(arr):
                    raise _LeafMismatch(
                        f"checkpoint leaf {full!r} is an array in the checkpoint but "
                        f"{type(leaf).__name__} in the target"
                    )
                _check_compatible(full, leaf, record)
                spec = {
                    "driver": "zarr3",
                    "kvstore": base_url + full + "/",
                    "fill_missing_data_reads": False,
                }
                future = ts.open(spec, open=True, read=True, context=ts_context())
                reads.append((len(out), _Read(full, leaf, record, future)))
                out.append(None)
            else:
                raise CheckpointCorruptError(f"checkpoint {path}: leaf {full!r} has kind {kind!r}")
    except _LeafMismatch as e:
        raise ValueError(
            f"checkpoint {path} does not fit what it is loaded into: {e}. It was saved with a "
            "different model or optimizer configuration (its run's config.yaml holds the one "
            "it was saved with)"
        ) from None

    if missing:
        relative = [n[len(prefix) :] for n in missing]
        subtree = _subpath_holding(relative, records)
        where = (
            f"; the checkpoint holds them under {subtree + '/'!r}: pass subpath={subtree!r} "
            "to load that part of it"
            if subtree is not None
            else ""
        )
        if len(missing) == num_wanted:
            # allow_partial would keep the target's values for every leaf: nothing loaded
            if not where:
                available = sorted(n for n in records if records[n].get("kind") == "array")
                where = f"; it holds e.g. {available[:5]}"
            raise ValueError(
                f"checkpoint {path} holds none of the {len(missing)} leaves the target needs "
                f"(e.g. {missing[:5]}){where}. Nothing would be loaded, so allow_partial does "
                "not apply: load it into a target with the checkpoint's structure"
            )
        if exact or not allow_partial:
            did_you_mean = ""
            if not where:
                available = sorted(n[len(prefix) :] for n in records if n.startswith(prefix))
                # a renamed leaf has a close match beside it; a missing module (the fp8 state
                # of a run trained unquantized) has none worth naming
                parent = relative[0].rpartition("/")[0] + "/" if "/" in relative[0] else ""
                beside = [n for n in available if n.startswith(parent)]
                hint = difflib.get_close_matches(relative[0], beside, n=1)
                did_you_mean = f"; did you mean {prefix + hint[0]!r}?" if hint else ""
            raise ValueError(
                f"checkpoint {path} lacks {len(missing)} leaves the target needs, e.g. "
                f"{missing[:5]}{where or did_you_mean}. If it was saved with another model "
                "or optimizer configuration, its run's config.yaml holds that one"
                + (
                    ""
                    if exact
                    else "; to keep the target's own values for the missing leaves instead (a "
                    "partial load), pass allow_partial=True (in a run config: "
                    "trainer.allow_partial_checkpoint: true)"
                )
            )
        logger.warning(
            "Checkpoint %s lacks %d leaves; they keep their initial values: %s%s",
            path,
            len(missing),
            missing[:10],
            where,
        )
    if unsaved:
        logger.info("%d leaves were saved as None and keep the target's values", len(unsaved))
    used = {r.name for _, r in reads} | set(unsaved)
    unused = [n for n in records if n.startswith(prefix) and n not in used]
    unused = [n for n in unused if records[n]["kind"] == "array"]
    if unused and exact:
        # fp8 scales and amax histories (a quantized Linear's `dot_general/` state) train the
        # model but are not part of it: a model loaded unquantized, to be evaluated or
        # exported, takes the plain weights (lm.trainer.quantization)
        state = [n for n in unused if QUANTIZATION_STATE in f"/{n}/"]
        if state:
            logger.info(
                "Checkpoint %s was trained with quantized matmuls: its %d fp8 scale and "
                "history leaves are left out, the weights are loaded as they are",
                path,
                len(state),
            )
            unused = [n for n in unused if n not in set(state)]
    if unused and exact:
        raise ValueError(
            f"checkpoint {path} holds {len(unused)} "
            f"{'leaf' if len(unused) == 1 else 'leaves'} that what it is loaded into does not "
            f"have, e.g. {unused[:5]}: it was saved with another model configuration (its "
            "run's config.yaml holds that one), and leaving them out would use a model that "
            "was never trained"
        )
    if unused:
        # The state loaded into lacks them: it was built from another config than the one
        # the checkpoint was saved with (another optimizer.type, say), and whatever they
        # share (Adam's mu as Lion's momentum) is loaded as if it meant the same.
        logger.warning(
            "Checkpoint %s holds %d %s that what it is loaded into does not have, e.g. %s: "
            "it was saved with a different model or optimizer configuration. They are ignored; "
            "the leaves both have are loaded as they are",
            path,
            len(unused),
            "leaf" if len(unused) == 1 else "leaves",
            unused[:5],
        )

    # Issue every read before waiting on any.
    for _, r in reads:
        try:
            r.store = r.store_future.result()
        except Exception as e:
            raise _ts_error(r.name, path, e) from e
        if list(r.store.shape) != list(r.record["shape"]):
            raise CheckpointCorruptError(
                f"checkpoint {path}: array {r.name!r} has shape {r.store.shape}, manifest "
                f"says {r.record['shape']}"
            )
        arr = _array_of(r.exemplar)
        saved_shape = tuple(r.record["shape"])
        if tuple(arr.shape) != saved_shape:  # only along a padded axis (_check_compatible)
            r.target_shape = tuple(arr.shape)
        shape = r.target_shape or saved_shape
        if isinstance(arr, np.ndarray | np.generic):
            r.host_only = True
            r.reads[()] = r.store.read()
            continue
        axes = r.exemplar.axes if isinstance(r.exemplar, hax.NamedArray) else None
        r.sharding = _target_sharding(arr, axes, axis_mapping, mesh)
        r.index_map = {}
        for device, index in r.sharding.addressable_devices_indices_map(shape).items():
            key = _index_key(index, shape)
            r.index_map[device] = key
            if key not in r.reads and r.target_shape is not None:
                r.reads[key] = _read_block(r.store, key, saved_shape)
            elif key not in r.reads:
                r.reads[key] = r.store[tuple(slice(*k) for k in key)].read()

    for i, r in reads:
        try:
            host = {k: f.result() for k, f in r.reads.items()}
        except Exception as e:
            raise _ts_error(r.name, path, e) from e
        if r.target_shape is not None:
            host = {k: _padded_block(v, k, r.record["dtype"]) for k, v in host.items()}
        out[i] = _assemble(r, host)
    return jax.tree_util.tree_unflatten(treedef, out)


def _subpath_holding(names: Sequence[str], records: dict[str, Any]) -> str | None:
    """The shortest subtree path `p` of the checkpoint with `p/<name>` saved for every
    name in `names` (a model's leaves inside a training state: "model"), or None."""
    common: set[str] | None = None
    for name in names:
        if name == "root":
            return None
        under = {r[: -len(name) - 1] for r in records if r.endswith("/" + name)}
        common = under if common is None else common & under
        if not common:
            return None
    return min(common, key=lambda p: (p.count("/"), p)) if common else None


class _Done:
    """A finished read: `.result()` is `value` (an empty block is not read at all)."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


def _read_block(store: Any, key: tuple, saved_shape: Sequence[int]) -> Any:
    """Start reading the block `key` ((start, stop, step) per dimension) of `store`, clipped
    to the saved shape: a target larger along a padded axis reads only the saved rows."""
    clipped = tuple((a, min(b, d), c) for (a, b, c), d in zip(key, saved_shape, strict=True))
    if any(a >= b for a, b, _ in clipped):
        return _Done(None)
    return store[tuple(slice(*k) for k in clipped)].read()


def _padded_block(value: np.ndarray | None, key: tuple, dtype: str) -> np.ndarray:
    """`value` (a block read clipped to the saved shape) zero-filled to the extent of `key`."""
    extent = tuple(len(range(*k)) for k in key)
    if value is not None and value.shape == extent:
        return value
    block = np.zeros(extent, dtype=value.dtype if value is not None else jnp.dtype(dtype))
    if value is not None:
        block[tuple(slice(0, n) for n in value.shape)] = value
    return block


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


def load_checkpoint(
    exemplar: T,
    checkpoint_path: str,
    *,
    discover_latest: bool = True,
    axis_mapping: Any = None,
    mesh: Any = None,
    subpath: str | None = None,
    allow_partial: bool = False,
    exact: bool = False,
) -> T:
    """Load a checkpoint into the structure (and shardings) of `exemplar`.

    Same as `load_checkpoint_with_path`, without the path of the checkpoint used.
    """
    return load_checkpoint_with_path(
        exemplar,
        checkpoint_path,
        discover_latest=discover_latest,
        axis_mapping=axis_mapping,
        mesh=mesh,
        subpath=subpath,
        allow_partial=allow_partial,
        exact=exact,
    )[0]


def load_checkpoint_with_path(
    exemplar: T,
    checkpoint_path: str,
    *,
    discover_latest: bool = True,
    axis_mapping: Any = None,
    mesh: Any = None,
    subpath: str | None = None,
    allow_partial: bool = False,
    exact: bool = False,
) -> tuple[T, str]:
    """Load a checkpoint into the structure (and shardings) of `exemplar`.

    Args:
        exemplar: a pytree like the saved one. Leaves may be concrete arrays or
            `jax.ShapeDtypeStruct`s (`eqx.filter_eval_shape(init_fn)` makes them without
            allocating); NamedArrays may wrap either. Each array is read straight into
            its target sharding, each process reading only its addressable shards;
            abstract leaves without a sharding (and no mapping) land on the default device
            (`jax.default_device`, else the first local one).
        checkpoint_path: a checkpoint directory, or with `discover_latest` a run
            directory whose newest complete checkpoint is used.
        discover_latest: search `checkpoint_path` for the newest complete checkpoint.
            If that one turns out unreadable it is skipped with a warning and the
            previous one is tried.
        axis_mapping: logical axis -> mesh axis mapping for NamedArray leaves (other
            arrays are replicated). With `mesh` (or the current `jax.set_mesh` mesh) it
            overrides the exemplar's own shardings.
        mesh: the mesh to load onto.
        subpath: load the subtree saved under this name, e.g. "model".
        allow_partial: leaves missing from the checkpoint keep the exemplar's values
            instead of raising.
        exact: the exemplar must take every array the checkpoint holds (under `subpath`):
            one it lacks is an error, not ignored with a warning (a model loaded to be
            evaluated or exported must be the model that was trained). Implies no
            `allow_partial`.

    Leaves saved as None (non-trainable parameters) keep the exemplar's value; an
    abstract one stays a `ShapeDtypeStruct` (`load_checkpoint_or_initialize` fills them).

    Returns:
        The loaded tree and the checkpoint directory it came from.

    Raises:
        FileNotFoundError: no checkpoint at or under `checkpoint_path`.
        CheckpointLoadError: complete checkpoints exist but none could be read.
        CheckpointCorruptError: `discover_latest=False` and the checkpoint is unreadable.
        ValueError: the checkpoint does not fit the exemplar (names, shapes, dtypes).
    """
    if discover_latest:
        committed, torn = checkpoint_candidates(checkpoint_path)
        newest = committed[0].step if committed else None
        for t in torn:
            if newest is None or t.step > newest:
                logger.warning("Skipping incomplete checkpoint %s: %s", t.path, t.problem)
        if not committed:
            # Directories without metadata.json never committed: they hold no state a run
            # could lose, so they count as "no checkpoint" (a run killed during its very
            # first save starts over, which loses nothing). A damaged metadata.json is
            # not this case: it is committed and fails below.
            where = f"no complete checkpoint at or under {checkpoint_path}"
            if torn:
                where += f" (incomplete, skipped: {', '.join(t.path for t in torn)})"
            raise FileNotFoundError(where)
        candidates = committed
    else:
        status = read_status(checkpoint_path)
        if status is None:
            raise FileNotFoundError(f"no checkpoint at {checkpoint_path}")
        if not status.complete:
            what = "damaged" if status.damaged else "incomplete"
            raise CheckpointCorruptError(
                f"checkpoint {checkpoint_path} is {what}: {status.problem}"
            )
        candidates = [status]

    failures: list[str] = []
    for status in candidates:
        path = status.path
        try:
            if status.damaged:
                raise CheckpointCorruptError(f"checkpoint {path} is damaged: {status.problem}")
            result = _load_one(
                exemplar,
                path,
                axis_mapping=axis_mapping,
                mesh=mesh,
                subpath=subpath,
                allow_partial=allow_partial,
                exact=exact,
            )
        except CheckpointCorruptError as e:
            if not discover_latest:
                raise
            failures.append(str(e))
            if len(failures) < len(candidates):
                logger.warning("Checkpoint %s is unreadable, trying an older one: %s", path, e)
            continue
        logger.info("Loaded checkpoint %s", path)
        return result, path
    raise CheckpointLoadError(
        f"none of the {len(candidates)} checkpoint(s) under {checkpoint_path} could be "
        "loaded. Errors: " + " | ".join(failures)
    )


def load_metadata(checkpoint_path: str) -> dict[str, Any]:
    """The metadata.json of a checkpoint directory.

    Raises:
        FileNotFoundError: the checkpoint has no metadata.json.
    """
    meta = read_json(checkpoint_path, METADATA_FILE)
    if meta is None:
        raise FileNotFoundError(f"no {METADATA_FILE} in {join(checkpoint_path)}")
    return meta


def load_checkpoint_or_initialize(
    init_fn: Callable[..., T],
    checkpoint_path: str,
    *,
    is_checkpointed: Any = True,
    allow_partial: bool = False,
    discover_latest: bool = True,
    axis_mapping: Any = None,
    mesh: Any = None,
    subpath: str | None = None,
) -> Callable[..., T]:
    """Wrap `init_fn` so it loads what the checkpoint has and initializes the rest.

    The returned function takes `init_fn`'s arguments. Shapes come from
    `eqx.filter_eval_shape(init_fn, ...)`; leaves selected by `is_checkpointed` (an
    equinox filter spec: bool, callable leaf -> bool, or a prefix tree of those) are
    read from the checkpoint into their target shardings, and only the remaining leaves
    are computed by `init_fn` under jit (the checkpointed ones are pruned from the
    computation). When no checkpoint exists everything comes from `init_fn`.

    Checkpoints that exist but cannot be read raise (`CheckpointLoadError`): a run
    never silently restarts from scratch.
    """

    def load_or_init(*args: Any, **kwargs: Any) -> T:
        return _load_or_init(
            init_fn,
            args,
            kwargs,
            checkpoint_path,
            is_checkpointed=is_checkpointed,
            allow_partial=allow_partial,
            discover_latest=discover_latest,
            axis_mapping=axis_mapping,
            mesh=mesh,
            subpath=subpath,
        )[0]

    return load_or_init


def _load_or_init(
    init_fn: Callable[..., T],
    args: tuple,
    kwargs: dict,
    checkpoint_path: str,
    *,
    is_checkpointed: Any,
    allow_partial: bool,
    discover_latest: bool,
    axis_mapping: Any,
    mesh: Any,
    subpath: str | None,
) -> tuple[T, str | None]:
    """`load_checkpoint_or_initialize`, also returning the checkpoint used (None: fresh)."""
    shapes = eqx.filter_eval_shape(init_fn, *args, **kwargs)
    wanted = eqx.filter(shapes, is_checkpointed)
    try:
        loaded, path = load_checkpoint_with_path(
            wanted,
            checkpoint_path,
            discover_latest=discover_latest,
            axis_mapping=axis_mapping,
            mesh=mesh,
            subpath=subpath,
            allow_partial=allow_partial,
        )
    except FileNotFoundError:
        logger.info("No checkpoint at %s; initializing from scratch", checkpoint_path)
        return _init_subset(init_fn, args, kwargs, True, axis_mapping, mesh), None

    # Leaves to initialize: those not selected, and those a partial checkpoint lacked.
    shape_leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=lambda x: x is None)
    loaded_leaves = jax.tree_util.tree_flatten(loaded, is_leaf=lambda x: x is None)[0]
    assert len(shape_leaves) == len(loaded_leaves)
    need = [
        s is not None and (lv is None or isinstance(lv, jax.ShapeDtypeStruct))
        for s, lv in zip(shape_leaves, loaded_leaves, strict=True)
    ]
    if not any(need):
        return loaded, path
    mask = jax.tree_util.tree_unflatten(treedef, need)
    fresh = _init_subset(init_fn, args, kwargs, mask, axis_mapping, mesh)
    kept = [None if isinstance(lv, jax.ShapeDtypeStruct) else lv for lv in loaded_leaves]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, kept), fresh), path


def _init_subset(init_fn, args, kwargs, mask, axis_mapping, mesh):
    """Run `init_fn` under jit keeping only the `mask`ed leaves (XLA prunes the rest).

    With `axis_mapping`/`mesh`, outputs are placed by the mapping (NamedArrays) or
    replicated (other arrays).
    """

    def init_part(*a, **k):
        return eqx.filter(init_fn(*a, **k), mask)

    dynamic, static = eqx.partition((args, kwargs), eqx.is_array)
    non_arrays = {}  # the output's non-array leaves, recorded while jit traces

    def arrays_only(dyn):
        a, k = eqx.combine(dyn, static)
        arrays, non_arrays["tree"] = eqx.partition(init_part(*a, **k), eqx.is_array)
        return arrays

    jit_kwargs: dict[str, Any] = {"compiler_options": xla_compiler_options()}
    if axis_mapping is not None or mesh is not None:
        resolved = mesh if mesh is not None else jax.sharding.get_mesh()
        if resolved is None or resolved.empty:
            raise ValueError("an axis_mapping needs a mesh: pass mesh=... or use jax.set_mesh")
        shapes = eqx.filter_eval_shape(init_part, *args, **kwargs)
        jit_kwargs["out_shardings"] = hax.partitioning.infer_resource_partitions(
            eqx.filter(shapes, lambda x: isinstance(x, jax.ShapeDtypeStruct)),
            axis_mapping,
            preserve_existing_shardings=False,
            mesh=resolved,
        )
    arrays = jax.jit(arrays_only, **jit_kwargs)(dynamic)  # a fresh jit: always traced
    return eqx.combine(arrays, non_arrays["tree"])
