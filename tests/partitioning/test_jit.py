"""`sharded_jit`: outputs placed by the axis mapping without a second trace, non-array parts of
arguments and results carried through, one trace and one compile shared by call, trace and
lower."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import haliax as hax
import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lm.partitioning import create_mesh, resolve_mesh_shape
from lm.partitioning.jit import sharded_jit, with_shardings

Batch = hax.Axis("batch", 8)
Embed = hax.Axis("embed", 16)
MAPPING = {"batch": "data", "embed": "model"}


@pytest.fixture(scope="module")
def mesh():
    return create_mesh(resolve_mesh_shape(8, model_axis_size=2))  # data 4 x model 2


class Scaled(eqx.Module):
    """A pytree with an array, a NamedArray and a static (non-array) field."""

    w: hax.NamedArray
    bias: jax.Array
    label: str = eqx.field(static=True)


def _count_compiles():
    names: list[str] = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kwargs.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listener)
    return names


def test_outputs_follow_the_mapping_and_keep_their_static_parts(mesh):
    def step(module: Scaled, x: hax.NamedArray, factor: float):
        w = module.w * factor + x.sum("batch")
        return dataclasses.replace(module, w=w, bias=module.bias + 1), {"tag": "done", "n": 3}

    fn = sharded_jit(step, out_mapping=MAPPING, mesh=mesh)
    module = Scaled(hax.ones(Embed), jnp.zeros(3), "layer")
    x = hax.ones((Batch, Embed))
    with jax.set_mesh(mesh):
        out, extras = fn(module, x, 2.0)
    assert out.label == "layer" and extras == {"tag": "done", "n": 3}
    np.testing.assert_allclose(np.asarray(out.w.array), np.full(16, 10.0))
    np.testing.assert_allclose(np.asarray(out.bias), np.ones(3))
    # NamedArrays by the mapping, every other array replicated
    assert out.w.array.sharding.is_equivalent_to(
        NamedSharding(mesh, PartitionSpec("model")), ndim=1
    )
    assert out.bias.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec()), ndim=1)


def test_static_outputs_follow_plain_array_shapes(mesh):
    """A result whose axes depend on a plain array's shape gets the axes of that call."""

    def wrap(x):
        return hax.named(x * 2, (hax.Axis("n", x.shape[0]),))

    fn = sharded_jit(wrap, out_mapping={}, mesh=mesh)
    with jax.set_mesh(mesh):
        assert fn(jnp.ones(3)).axes == (hax.Axis("n", 3),)
        assert fn(jnp.ones(5)).axes == (hax.Axis("n", 5),)
        assert fn(jnp.ones(3)).axes == (hax.Axis("n", 3),)


def test_call_trace_and_lower_share_one_trace_and_one_compile(mesh):
    traces = []

    def f(module: Scaled, x: hax.NamedArray):
        traces.append(1)
        return dataclasses.replace(module, w=module.w + x.sum("batch"))

    compiles = _count_compiles()
    fn = sharded_jit(f, out_mapping=MAPPING, mesh=mesh, donate_argnums=(0,))
    module = Scaled(hax.ones(Embed), jnp.zeros(3), "a")
    x = hax.ones((Batch, Embed))
    # abstract inputs with the shardings the real ones will have
    abstract = with_shardings(module, MAPPING, mesh)
    with jax.set_mesh(mesh):
        module = jax.tree_util.tree_map(
            lambda a, s: jax.device_put(a, s.sharding) if eqx.is_array(a) else a,
            module,
            abstract,
        )
        traced = fn.trace(abstract, x)
        assert "add" in str(traced.jaxpr)
        before = len(compiles)
        fn.lower(abstract, x).compile()
        out = fn(module, x)
        out = fn(out, x)
    assert len(traces) == 1
    assert [n for n in compiles[before:] if n == "jit(f)"] == ["jit(f)"]
    np.testing.assert_allclose(np.asarray(out.w.array), np.full(16, 17.0))
    assert module.w.array.is_deleted()  # donated


def test_an_unhashable_static_argument_is_a_clear_error(mesh):
    fn = sharded_jit(lambda x, opts: x, mesh=mesh)
    with pytest.raises(TypeError, match="of type bytearray is not hashable"):
        fn(jnp.ones(2), {"opts": bytearray(b"x")})
