"""`sharded_jit`: jit for functions of pytrees (models, trainer states, batches) whose
outputs are placed by an axis mapping, traced once per input signature.

Haliax's `named_jit` does the same job, but finds the output structure and shardings by
tracing the function a second time (`eval_shape`) before jit traces it: for a train step
that is a second trace of the whole forward and backward pass, about as long as the first
(0.4-0.7 s on the benchmark configs). Here the placement is written into the program
instead: the outputs pass through sharding constraints (NamedArrays by `out_mapping`, other
arrays replicated), so XLA gives them exactly those shardings, and the outputs' non-array
parts are recorded while jit traces. One trace serves the call, `trace()` (the jaxpr for
`log_jaxprs`) and `lower()` (HLO, memory analysis), since all three share jit's caches.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import haliax as hax
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class _Static:
    """The non-array parts of the arguments, as one hashable jit static argument."""

    __slots__ = ("_hash", "leaves", "treedef")

    def __init__(self, tree: Any):
        self.leaves, self.treedef = jax.tree_util.tree_flatten(tree)
        try:
            self._hash = hash((self.treedef, tuple(self.leaves)))
        except TypeError as e:
            bad = next(leaf for leaf in self.leaves if not _hashable(leaf))
            raise TypeError(
                f"sharded_jit: a non-array argument leaf of type {type(bad).__name__} is not "
                f"hashable ({bad!r:.80}); make it a pytree node, an array, or hashable"
            ) from e

    def tree(self) -> Any:
        return jax.tree_util.tree_unflatten(self.treedef, self.leaves)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Static)
            and self._hash == other._hash
            and self.treedef == other.treedef
            and all(_same(a, b) for a, b in zip(self.leaves, other.leaves, strict=True))
        )


def _name_of(fn: Any) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", "sharded_jit")


def _is_traced(x: Any) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _signature(static: _Static, dynamic: tuple) -> tuple:
    return (static, tuple((x.shape, x.dtype) for x in jax.tree_util.tree_leaves(dynamic)))


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and bool(a == b))


def constrain_outputs(tree: Any, mapping: Mapping[str, Any] | None, mesh: Any) -> Any:
    """Inside jit: NamedArrays sharded by `mapping` (unmapped axes replicated), every other
    array replicated over `mesh` (what `named_jit`'s output shardings do)."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(x):
        if isinstance(x, hax.NamedArray):
            if not eqx.is_array(x.array):
                return x
            return hax.shard(x, mapping if mapping is not None else {}, mesh=mesh)
        if eqx.is_array(x):
            return jax.lax.with_sharding_constraint(x, replicated)
        return x

    return jax.tree_util.tree_map(place, tree, is_leaf=lambda x: isinstance(x, hax.NamedArray))


def with_shardings(tree: Any, mapping: Mapping[str, Any], mesh: Mesh) -> Any:
    """`tree` (arrays or `ShapeDtypeStruct`s) as `ShapeDtypeStruct`s carrying the shardings
    `mapping` gives them on `mesh`: NamedArrays by their axes, other arrays replicated."""
    shardings = hax.partitioning.infer_resource_partitions(
        tree, mapping, preserve_existing_shardings=False, mesh=mesh
    )

    def attach(leaf, sharding):
        if isinstance(leaf, hax.NamedArray):
            return hax.NamedArray(attach(leaf.array, sharding), leaf.axes)
        if isinstance(leaf, jax.ShapeDtypeStruct | jax.Array | np.ndarray):
            if sharding is None:
                sharding = NamedSharding(mesh, PartitionSpec())
            weak = getattr(leaf, "weak_type", False)
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding, weak_type=weak)
        return leaf

    return hax.tree_util.tree_map(
        attach, tree, shardings, is_leaf=lambda x: isinstance(x, hax.NamedArray)
    )


class ShardedJit:
    """A function jitted by `sharded_jit`: call it, `trace(...)` or `lower(...)` it."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        axis_resources: Mapping[str, Any] | None,
        out_mapping: Mapping[str, Any] | None,
        mesh: Callable[[], Any],
        donate_argnums: Sequence[int],
        compiler_options: Mapping[str, Any] | None,
    ):
        self.__wrapped__ = fn
        self._axis_resources = axis_resources
        self._out_mapping = out_mapping
        self._mesh = mesh
        # the outputs' non-array parts (recorded while jit traces), by the static argument
        # and the array arguments' shapes and dtypes, which is what they can depend on
        self._static_outputs: dict[tuple, Any] = {}

        def run(static: _Static, *dynamic):
            args = eqx.combine(dynamic, static.tree())
            out = fn(*args)
            out = constrain_outputs(out, self._out_mapping, self._mesh())
            arrays, static_out = eqx.partition(out, eqx.is_array)
            self._static_outputs[_signature(static, dynamic)] = static_out
            return arrays

        run.__name__ = run.__qualname__ = _name_of(fn)  # jit(<name>) in logs, dumps, profiles

        self._jitted = jax.jit(
            run,
            static_argnums=0,
            donate_argnums=tuple(i + 1 for i in donate_argnums),
            compiler_options=dict(compiler_options) if compiler_options else None,
        )

    def _split(self, args: tuple) -> tuple[_Static, tuple]:
        dynamic, static = eqx.partition(args, _is_traced)
        return _Static(static), dynamic

    def _mapping(self):
        if self._axis_resources is None:
            return contextlib.nullcontext()
        return hax.axis_mapping(self._axis_resources)

    def __call__(self, *args: Any) -> Any:
        static, dynamic = self._split(args)
        with self._mapping():
            arrays = self._jitted(static, *dynamic)
        return eqx.combine(arrays, self._static_outputs[_signature(static, dynamic)])

    def trace(self, *args: Any) -> jax.stages.Traced:
        """Trace for these arguments (arrays or `jax.ShapeDtypeStruct`s with shardings); a
        later call with matching arguments reuses this trace."""
        static, dynamic = self._split(args)
        with self._mapping():
            return self._jitted.trace(static, *dynamic)

    def lower(self, *args: Any) -> jax.stages.Lowered:
        return self.trace(*args).lower()


def sharded_jit(
    fn: Callable[..., Any],
    *,
    axis_resources: Mapping[str, Any] | None = None,
    out_mapping: Mapping[str, Any] | None = None,
    mesh: Callable[[], Any] | Any = None,
    donate_argnums: Sequence[int] = (),
    compiler_options: Mapping[str, Any] | None = None,
) -> ShardedJit:
    """jit `fn(*args)` over pytree arguments; array leaves are traced, everything else is
    static (it must be hashable: a new value compiles anew).

    Args:
        fn: the function; positional arguments only.
        axis_resources: the axis mapping in effect while tracing (`hax.shard` calls inside
            `fn` without a mapping use it). Inputs keep the shardings they have.
        out_mapping: where output NamedArrays go (axes it does not map, and all other output
            arrays, are replicated); `{}` replicates everything.
        mesh: the mesh, or a zero-argument function returning it (read when tracing);
            default: the mesh set by `jax.set_mesh`.
        donate_argnums: positional arguments whose buffers the outputs may reuse.
        compiler_options: XLA compile options (see `lm.compile_options`).
    """
    if mesh is None:
        mesh_fn = jax.sharding.get_mesh
    elif isinstance(mesh, Mesh | jax.sharding.AbstractMesh):
        mesh_fn = lambda: mesh  # noqa: E731
    else:
        mesh_fn = mesh
    return ShardedJit(
        fn,
        axis_resources=axis_resources,
        out_mapping=out_mapping,
        mesh=mesh_fn,
        donate_argnums=donate_argnums,
        compiler_options=compiler_options,
    )
