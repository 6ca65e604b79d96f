"""Deprecated tracker settings, moved to their new home with a DeprecationWarning.

`trainer.wandb` (CFG-07) predates `trainer.tracker`. `TrainerConfig.__post_init__` calls
`move_deprecated_wandb(self.wandb, self.tracker)` and stores the result in `tracker`:

| `trainer.wandb` | `trainer.tracker`               | result                                    |
|-----------------|---------------------------------|-------------------------------------------|
| unset           | anything                        | `tracker` unchanged, no warning           |
| set             | the default (`WandbConfig()`)   | warning; `tracker` becomes the `wandb` one |
| set             | the same `WandbConfig` as wandb | warning; unchanged                        |
| set             | anything else                   | `FieldError`: set only `trainer.tracker`  |
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from lm.config.errors import FieldError
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
        FieldError: both `trainer.wandb` and a non-default `trainer.tracker` are set (no
            deprecation warning then: it would say the section is used).
    """
    if wandb is None:
        return tracker if isinstance(tracker, TrackerConfig) else tuple(tracker)
    if not isinstance(wandb, WandbConfig):
        raise TypeError(
            f"trainer.wandb must be a W&B tracker config (WandbConfig), got "
            f"{type(wandb).__name__}; better, move it under trainer.tracker."
        )
    if not (isinstance(tracker, TrackerConfig) and tracker in (WandbConfig(), wandb)):
        trackers = [tracker] if isinstance(tracker, TrackerConfig) else list(tracker)
        kinds = ", ".join(f"type: {TrackerConfig.get_choice_name(type(t))}" for t in trackers)
        raise FieldError(
            "wandb",
            f"is deprecated, and trainer.tracker is set too ({kinds}): remove trainer.wandb "
            "and put its fields into trainer.tracker (a list if you want several trackers)",
        )
    warnings.warn(
        "trainer.wandb is deprecated: move its fields under trainer.tracker (W&B is the "
        "default tracker, so `type: wandb` is optional). It is used as trainer.tracker now.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return wandb
