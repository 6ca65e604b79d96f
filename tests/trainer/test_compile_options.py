"""XLA compile options for the big jitted programs (lm.compile_options)."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import compile_options
from lm.compile_options import CPU_BACKEND_OPTIMIZATION_LEVEL, xla_compiler_options


@pytest.mark.parametrize("avx512", [False, True])
def test_cpu_gets_the_fast_compiling_level_other_backends_the_defaults(monkeypatch, avx512):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(compile_options, "host_has_avx512", lambda: avx512)
    options = xla_compiler_options("cpu")
    expected = {"xla_backend_optimization_level": CPU_BACKEND_OPTIMIZATION_LEVEL}
    if avx512:
        expected["xla_cpu_prefer_vector_width"] = 512
    assert options == expected
    assert hash(options) == hash(xla_compiler_options("cpu"))  # jit wrappers cache on it
    assert xla_compiler_options("gpu") is None
    assert xla_compiler_options("tpu") is None


def test_the_users_xla_flags_win(monkeypatch):
    monkeypatch.setattr(compile_options, "host_has_avx512", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    assert xla_compiler_options("cpu") == {"xla_cpu_prefer_vector_width": 512}
    monkeypatch.setenv(
        "XLA_FLAGS", "--xla_backend_optimization_level=3 --xla_cpu_prefer_vector_width=256"
    )
    assert xla_compiler_options("cpu") is None


def test_avx512_is_read_from_the_cpu_flags():
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    assert compile_options.host_has_avx512() == ("avx512f" in flags.split())


def test_the_options_compile_and_give_the_same_numbers():
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 64))

    def f(x):
        return jnp.tanh(x @ x.T).sum(axis=0) + jnp.exp(-x).mean()

    ours = jax.jit(f, compiler_options=xla_compiler_options("cpu"))(x)
    np.testing.assert_allclose(ours, jax.jit(f)(x), rtol=1e-6, atol=1e-6)
