"""Names that lm's pinned dependencies look up on `jax` and that newer JAX releases removed.

lm pins jax 0.10.2, but the GPU machines' image comes with jax 0.11.2 (Python 3.12,
CUDA 13), and lm's dependencies are not all ready for it: haliax 1.4.dev453 (the newest
release) calls `jax.core.is_constant_dim` in every `hax.dot`, a name JAX deprecated in 0.10
and removed in 0.11, so on jax 0.11 every model fails at its first matmul with
"AttributeError: jax.core.is_constant_dim was deprecated in JAX v0.10.0 and removed in JAX
v0.11.0". The function itself is still in `jax._src.core`.

`install()` puts each such name back on its public module when the public name is gone
(or only served through JAX's deprecation shim) and the private function still exists. The
subpackages that import jax anyway (`lm.models`, `lm.optim`, `lm.trainer`) call it on import:
lm's top-level package must not import jax (`lm.host_memory` tunes the allocator before
that), and haliax looks the name up when a matmul is traced, not when it is imported.
With jax 0.10.2 it changes nothing but the warning: the restored name is the same function.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger(__name__)

# (public module, name, private module that still defines it)
RESTORED = (("jax.core", "is_constant_dim", "jax._src.core"),)


def install() -> list[str]:
    """Restore the names in `RESTORED` that this JAX no longer has as plain module attributes.
    Returns the dotted names it set (empty when there was nothing to do). Idempotent."""
    restored = []
    for public, name, private in RESTORED:
        module = importlib.import_module(public)
        if name in vars(module):  # a real attribute (or restored already)
            continue
        source = importlib.import_module(private)
        value = getattr(source, name, None)
        if value is None:
            logger.debug("cannot restore %s.%s: %s has no %s", public, name, private, name)
            continue
        setattr(module, name, value)
        restored.append(f"{public}.{name}")
    return restored
