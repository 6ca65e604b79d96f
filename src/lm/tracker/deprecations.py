"""Deprecated tracker settings, moved to their new home with a DeprecationWarning.

`trainer.wandb` (CFG-07) predates `trainer.tracker`. `TrainerConfig.__post_init__` calls
`move_deprecated_wandb(self.wandb, self.tracker)` and stores the result in `tracker`:

| `trainer.wandb` | `trainer.tracker`               | result                                    |
|-----------------|---------------------------------|-------------------------------------------|
| unset           | anything                        | `tracker` unchanged, no warning           |
| set             | the default (`WandbConfig()`)   | warning; `tracker` becomes the `wandb` one |
| set             | the same `WandbConfig` as wandb | warning; unchanged                        |
| set             | anything else                   | `ValueError`: set only `trainer.tracker`  |
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from lm.tracker.base import TrackerConfig
from lm.tracker.wandb import WandbConfig


def move_deprecated_wandb(
    wandb: WandbConfig | None,
    tracker: TrackerConfig | Sequence[TrackerConfig],
    *,
    stacklevel: int = 3,
) -> TrackerConfig | tuple[TrackerConfig, ...]:
    """The `tracker` value to use given the deprecated `trainer.wandb` section.

    Args:
        wandb: the deprecated `trainer.wandb` value (None when absent).
        tracker: the `trainer.tracker` value (one config or a sequence of them).
        stacklevel: passed to `warnings.warn`, pointing at the caller's caller.

    Raises:
        TypeError: `wandb` is not a `WandbConfig`.
        ValueError: both `trainer.wandb` and a non-default `trainer.tracker` are set.
    """
    if wandb is None:
        return tracker if isinstance(tracker, TrackerConfig) else tuple(tracker)
    if not isinstance(wandb, WandbConfig):
        raise TypeError(
            f"trainer.wandb must be a W&B tracker config (WandbConfig), got "
            f"{type(wandb).__name__}; better, move it under trainer.tracker."
        )
    warnings.warn(
        "trainer.wandb is deprecated: move its fields under trainer.tracker (W&B is the "
        "default tracker, so `type: wandb` is optional). It is used as trainer.tracker now.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    if isinstance(tracker, TrackerConfig) and tracker in (WandbConfig(), wandb):
        return wandb
    raise ValueError(
        "Both the deprecated trainer.wandb and trainer.tracker are set "
        f"(trainer.tracker={tracker!r}). Remove trainer.wandb and put its fields "
        "into trainer.tracker (a list if you want several trackers)."
    )
