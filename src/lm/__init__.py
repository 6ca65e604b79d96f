"""lm: language-model training on named-axis JAX arrays.

Importing `lm` (or any submodule) has no side effects: no jax flags, no logging setup,
no distributed initialisation. Entry points under `lm.main` do those things.
"""

__version__ = "0.1.0"
