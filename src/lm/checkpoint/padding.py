"""Loading across differently padded axes: `padded_axes` and the block reads it allows.

Named axes lm pads beyond their real size so that a mesh axis splits them evenly
(`lm.lm_run.vocab_axis`): the rows past the real size are padding, never read (no token id
reaches them) and given no probability by the loss. Under `padded_axes(vocab=<real size>)`
a checkpoint saved on a layout that padded differently (1004 rows on 4-way tensor
parallelism, 1001 on one device) loads on another: rows beyond the target's size are
dropped, missing ones are zeros, and the real rows must fit in both. Anything else (another
vocabulary, or no real size given) is a shape mismatch, as for every other axis. A
checkpoint records the real sizes it was saved with (metadata.json `real_axis_sizes`,
written by `Trainer.real_axis_sizes`): a smaller vocabulary than the saved one would
otherwise fit inside its rows and load cut down.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import haliax as hax
import jax.numpy as jnp
import numpy as np

from lm.checkpoint.storage import METADATA_FILE, read_json

# Part of loading a checkpoint: its warnings go to the loader's logger.
logger = logging.getLogger("lm.checkpoint.restore")

_REAL_SIZES: contextvars.ContextVar[Mapping[str, int]] = contextvars.ContextVar(
    "lm_checkpoint_padded_axes", default=types.MappingProxyType({})
)


@contextlib.contextmanager
def padded_axes(**real_sizes: int) -> Iterator[None]:
    """Within this block, loads accept a named axis of `real_sizes` padded differently in
    the checkpoint than in the target (`padded_axes(vocab=1001)`), as long as both hold at
    least the real size."""
    token = _REAL_SIZES.set({**_REAL_SIZES.get(), **real_sizes})
    try:
        yield
    finally:
        _REAL_SIZES.reset(token)


REAL_AXIS_SIZES_KEY = "real_axis_sizes"
"""metadata.json's record of the real (unpadded) sizes of a checkpoint's padded axes."""


def _check_real_sizes(path: str) -> None:
    """Under `padded_axes`, the real sizes the checkpoint was saved with (where it records
    them: older checkpoints do not) must be the target's: 8192 saved rows hold a 500-token
    vocabulary's rows too, but they are another vocabulary's embeddings."""
    real = _REAL_SIZES.get()
    if not real:
        return
    saved = (read_json(path, METADATA_FILE) or {}).get(REAL_AXIS_SIZES_KEY)
    if not isinstance(saved, dict):
        logger.warning(
            "Checkpoint %s does not record the real sizes of its padded axes (%s; saved "
            "before checkpoints recorded them): that it was saved with the same %s cannot be "
            "checked",
            path,
            REAL_AXIS_SIZES_KEY,
            ", ".join(f"{name} {size}" for name, size in real.items()),
        )
        return
    for name, size in real.items():
        if name in saved and saved[name] != size:
            what = "vocabulary" if name == "vocab" else f"{name!r} axis"
            raise ValueError(
                f"checkpoint {path} was saved with a {what} of {saved[name]} (metadata.json: "
                f"{REAL_AXIS_SIZES_KEY}.{name}), and what it is loaded into has {size}"
                + (
                    ": its embeddings belong to another tokenizer (data.tokenizer or "
                    "data.vocab_size differ from the saving run's; its run's config.yaml "
                    "holds them)"
                    if name == "vocab"
                    else ""
                )
            )


def _only_padding_differs(leaf: Any, record: dict[str, Any]) -> bool:
    """Whether the saved and target shapes of a named leaf differ only along axes padded
    past a known real size (`padded_axes`), both holding all of its real rows."""
    saved_axes = record.get("axes")
    if not isinstance(leaf, hax.NamedArray) or saved_axes is None:
        return False
    if list(saved_axes) != [a.name for a in leaf.axes]:
        return False
    real = _REAL_SIZES.get()
    return all(
        saved == axis.size or (axis.name in real and min(saved, axis.size) >= real[axis.name])
        for saved, axis in zip(record["shape"], leaf.axes, strict=True)
    )


class _Done:
    """A finished read: `.result()` is `value` (an empty block is not read at all)."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


def _read_block(store: Any, key: tuple, saved_shape: Sequence[int]) -> Any:
    """Start reading the block `key` ((start, stop, step) per dimension) of `store`, clipped
    to the saved shape: a target larger along a padded axis reads only the saved rows."""
    clipped = tuple((a, min(b, d), c) for (a, b, c), d in zip(key, saved_shape, strict=True))
    if any(a >= b for a, b, _ in clipped):
        return _Done(None)
    return store[tuple(slice(*k) for k in clipped)].read()


def _padded_block(value: np.ndarray | None, key: tuple, dtype: str) -> np.ndarray:
    """`value` (a block read clipped to the saved shape) zero-filled to the extent of `key`."""
    extent = tuple(len(range(*k)) for k in key)
    if value is not None and value.shape == extent:
        return value
    block = np.zeros(extent, dtype=value.dtype if value is not None else jnp.dtype(dtype))
    if value is not None:
        block[tuple(slice(0, n) for n in value.shape)] = value
    return block
