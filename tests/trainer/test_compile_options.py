"""XLA compile options for the big jitted programs (lm.compile_options)."""

import jax
import jax.numpy as jnp
import numpy as np

from lm.compile_options import CPU_BACKEND_OPTIMIZATION_LEVEL, xla_compiler_options


def test_cpu_gets_the_fast_compiling_level_other_backends_the_defaults(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    options = xla_compiler_options("cpu")
    assert options == {"xla_backend_optimization_level": CPU_BACKEND_OPTIMIZATION_LEVEL}
    assert hash(options) == hash(xla_compiler_options("cpu"))  # jit wrappers cache on it
    assert xla_compiler_options("gpu") is None
    assert xla_compiler_options("tpu") is None


def test_the_users_xla_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    assert xla_compiler_options("cpu") is None


def test_the_options_compile_and_give_the_same_numbers():
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 64))

    def f(x):
        return jnp.tanh(x @ x.T).sum(axis=0) + jnp.exp(-x).mean()

    ours = jax.jit(f, compiler_options=xla_compiler_options("cpu"))(x)
    np.testing.assert_allclose(ours, jax.jit(f)(x), rtol=1e-6, atol=1e-6)
