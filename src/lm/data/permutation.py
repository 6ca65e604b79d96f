"""Deterministic permutations of an index space [0, n), computed on demand.

A shuffled dataset never materializes its order: index `i` maps to `perm(i)` with a
permutation that is a pure function of (n, seed), so any batch of any step can be
computed directly (resuming needs no saved state) and a dataset of 10^10 examples costs
no memory.

- `feistel` (default): a 6-round Feistel network over the smallest even-bit-width space
  covering n, with cycle-walking to stay inside [0, n). Good mixing.
- `linear`: `(a * i + b) mod n` with `gcd(a, n) = 1`. Cheap, but neighbours stay
  correlated (i and i+1 land exactly `a` apart); kept for Levanter compatibility.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import numpy as np

PermutationType = Literal["feistel", "linear"]
PERMUTATION_TYPES = ("feistel", "linear")

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective 64-bit hash (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def mix_seed(seed: int, *values: int) -> int:
    """A new 64-bit seed from a seed and some integers (e.g. an era or block index)."""
    z = np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    for v in values:
        z = _mix64(z ^ (np.array([v & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) * _GOLDEN))
    return int(_mix64(z)[0])


def seed_from_key(key) -> int:
    """A 64-bit integer seed from a JAX PRNG key (typed or raw uint32)."""
    if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = np.asarray(key, dtype=np.uint32).reshape(-1)
    seed = 0
    for w in words:
        seed = mix_seed(seed, int(w))
    return seed


class Permutation:
    """A bijection of [0, n) chosen by `seed`; `perm(indices)` works on arrays."""

    def __init__(self, n: int, seed: int, kind: PermutationType = "feistel"):
        if n <= 0:
            raise ValueError(f"cannot permute an empty index space (n={n})")
        if kind not in PERMUTATION_TYPES:
            raise ValueError(f"permutation_type must be one of {PERMUTATION_TYPES}, got {kind!r}")
        self.n = n
        self.kind = kind
        if kind == "linear":
            if n >= 1 << 32:
                raise ValueError(
                    f"permutation_type: linear supports up to 2^32 examples, got {n}; use feistel"
                )
            a = mix_seed(seed, 1) % n
            while math.gcd(a, n) != 1:
                a = (a + 1) % n
            self._a = np.uint64(a)
            self._b = np.uint64(mix_seed(seed, 2) % n)
        else:
            bits = max(2, (n - 1).bit_length())
            self._half = (bits + 1) // 2
            self._mask = np.uint64((1 << self._half) - 1)
            self._keys = [np.uint64(mix_seed(seed, 100 + r)) for r in range(6)]

    def __call__(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"index out of range for a permutation of {self.n}")
        flat = idx.reshape(-1).astype(np.uint64)
        if self.kind == "linear":
            out = (flat * self._a + self._b) % np.uint64(self.n)
        else:
            out = self._feistel(flat)
            outside = out >= np.uint64(self.n)
            # Cycle-walking: the space is at most 4n, so this ends after a few rounds.
            while outside.any():
                out[outside] = self._feistel(out[outside])
                outside = out >= np.uint64(self.n)
        return out.astype(np.int64).reshape(idx.shape)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self._half)
        left = x >> h
        right = x & self._mask
        for k in self._keys:
            left, right = right, left ^ (_mix64(right ^ k) & self._mask)
        return (left << h) | right
