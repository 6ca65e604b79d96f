"""Loading checkpoints: into any sharding, skipping torn ones, or initializing what's missing.

Each array leaf is read straight into its target sharding: for every addressable device
the slice it holds is read from the zarr3 array (each distinct slice once), so a
process reads only what it keeps, and a checkpoint saved on one mesh loads onto any
other. Reads are all issued before any is awaited.

A checkpoint that exists but cannot be read (unreadable metadata.json, no manifest, a
missing or corrupted chunk) raises `CheckpointCorruptError`; with `discover_latest` the loader then warns and tries
the previous complete checkpoint. If none can be read it raises `CheckpointLoadError`
rather than letting a run start over from step 0.

A leaf's checks, reads and assembly live in `lm.checkpoint.leaf_reads`; loading across
differently padded axes (`padded_axes`) in `lm.checkpoint.padding`.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import equinox as eqx
import haliax as hax
import jax
import numpy as np
import tensorstore as ts

from lm.checkpoint.leaf_reads import (
    _assemble,
    _check_compatible,
    _index_key,
    _LeafMismatch,
    _Read,
    _target_sharding,
    _ts_error,
)
from lm.checkpoint.padding import REAL_AXIS_SIZES_KEY as REAL_AXIS_SIZES_KEY
from lm.checkpoint.padding import _check_real_sizes, _padded_block, _read_block
from lm.checkpoint.padding import padded_axes as padded_axes
from lm.checkpoint.serialization import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointCorruptError,
    CheckpointLoadError,
    _array_of,
    _is_array_like,
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

logger = logging.getLogger(__name__)

T = TypeVar("T")


QUANTIZATION_STATE = "/dot_general/"
"""Where a checkpoint holds a quantized `Linear`'s matmul state (Haliax's `Fp8DotGeneralOp`
is the layer's `dot_general` field): a leaf name with this part."""


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
