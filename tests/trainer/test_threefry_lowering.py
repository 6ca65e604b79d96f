"""lm's CPU lowering of JAX's threefry PRNG (lm.compile_options.use_unrolled_threefry_on_cpu).

The written-out rounds must compute the same function as JAX's own CPU lowering (a loop):
known-answer vectors, bit equality with the loop on random keys and counters, and the same
`jax.random` draws. The structural tests check that no loop is left once it is installed and
that building a model installs it."""

import functools
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.random import threefry2x32 as tf

from lm.compile_options import use_unrolled_threefry_on_cpu

# Threefry-2x32 with 20 rounds: (key, counter) -> output, from the Random123 known-answer
# tests (Salmon et al., SC'11), the vectors JAX's own tests use.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.fixture(scope="module", autouse=True)
def installed():
    assert use_unrolled_threefry_on_cpu(), "this JAX lacks the private names lm relies on"
    assert use_unrolled_threefry_on_cpu()  # idempotent


def _u32(*values):
    return jnp.asarray(np.array(values, dtype=np.uint32))


@pytest.mark.parametrize("key, counter, expected", KNOWN_ANSWERS)
def test_known_answer_vectors(key, counter, expected):
    out = jax.jit(tf.threefry_2x32)(_u32(*key), _u32(*counter))
    assert [int(x) for x in out] == list(expected)


def test_same_bits_as_jaxs_loop_lowering():
    rng = np.random.default_rng(0)
    k1, k2 = (jnp.uint32(v) for v in rng.integers(0, 2**32, 2, dtype=np.uint64))
    x1, x2 = (
        jnp.asarray(rng.integers(0, 2**32, (37, 64), dtype=np.uint64).astype(np.uint32))
        for _ in range(2)
    )
    loop = jax.jit(functools.partial(tf._threefry2x32_lowering, use_rolled_loops=True))
    ours = jax.jit(lambda *a: tf.threefry2x32_p.bind(*a))
    for got, want in zip(ours(k1, k2, x1, x2), loop(k1, k2, x1, x2), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _compiled_text(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def test_draws_compile_without_a_loop_and_give_the_loops_bits():
    key = jax.random.PRNGKey(3)

    def draws(key):
        a, b = jax.random.split(key)
        return jax.random.normal(a, (48, 96)), jax.random.uniform(b, (7, 5, 3))

    assert " while(" not in _compiled_text(draws, key)
    # `jax.random.bits` against JAX's loop lowering applied to the same counters
    a = jax.random.split(key)[0]

    def loop_bits(key, shape):
        k1, k2 = jax.random.key_data(key) if key.dtype != jnp.uint32 else key
        c1 = jnp.zeros(shape, jnp.uint32)  # high words of the element counters
        c2 = jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)
        x1, x2 = tf._threefry2x32_lowering(k1, k2, c1, c2, use_rolled_loops=True)
        return x1 ^ x2

    bits = jax.jit(functools.partial(loop_bits, shape=(48, 96)))(a)
    np.testing.assert_array_equal(np.asarray(jax.random.bits(a, (48, 96))), np.asarray(bits))


def test_building_a_model_installs_it(subprocess_env):
    """A fresh process that only builds a model compiles its draws without a loop."""
    script = textwrap.dedent(
        """
        import haliax as hax, jax
        from lm.models.gpt2 import Gpt2Config

        def compiled(shape):  # a new shape each time: JAX caches lowerings per program
            draw = lambda k: jax.random.normal(k, shape)
            return jax.jit(draw).lower(jax.random.PRNGKey(0)).compile().as_text()

        before = compiled((16, 16))
        Gpt2Config(seq_len=8, hidden_dim=8, num_layers=1, num_heads=2).build(
            hax.Axis("vocab", 16), key=jax.random.PRNGKey(1)
        )
        print(" while(" in before, " while(" in compiled((16, 17)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[-2:] == ["True", "False"], out.stdout + out.stderr
