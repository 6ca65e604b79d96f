"""lm.jax_compat: names newer JAX removed that haliax still calls (jax 0.11 on the GPU image)."""

import warnings

import haliax as hax
import jax
import jax.core
import jax.numpy as jnp
import pytest
from jax._src import core as jax_core

from lm import jax_compat


def _matmul():
    A, B, C = hax.Axis("a", 2), hax.Axis("b", 3), hax.Axis("c", 4)
    x = hax.ones((A, B))
    w = hax.ones((B, C))
    return jax.jit(lambda x, w: hax.dot(x, w, axis=B))(x, w)


@pytest.fixture
def jax_011(monkeypatch):
    """jax.core as JAX 0.11 has it: `is_constant_dim` gone, asking for it an AttributeError."""
    if "is_constant_dim" in vars(jax.core):  # restored by an earlier import of lm.models
        monkeypatch.delattr(jax.core, "is_constant_dim")
    original = getattr(jax.core, "__getattr__", None)

    def removed(name):
        if name == "is_constant_dim":
            raise AttributeError(
                "jax.core.is_constant_dim was deprecated in JAX v0.10.0 and removed in JAX v0.11.0."
            )
        if original is None:
            raise AttributeError(name)
        return original(name)

    monkeypatch.setattr(jax.core, "__getattr__", removed, raising=False)


def test_haliax_matmul_fails_on_jax_011_without_it_and_works_with_it(jax_011):
    with pytest.raises(AttributeError, match="is_constant_dim"):
        _matmul()
    assert jax_compat.install() == ["jax.core.is_constant_dim"]
    out = _matmul()
    assert jnp.all(out.array == 3.0)
    assert jax_compat.install() == []  # idempotent


def test_restored_name_is_jax_own_function_and_warns_no_more():
    jax_compat.install()  # lm.models already did on import; again is a no-op
    assert jax.core.is_constant_dim is jax_core.is_constant_dim
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _matmul()


def test_lm_subpackages_install_it_on_import():
    import lm.models  # noqa: F401

    assert "is_constant_dim" in vars(jax.core)
