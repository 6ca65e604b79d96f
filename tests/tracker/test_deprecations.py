"""`trainer.wandb` is deprecated: moved into `trainer.tracker` with a warning (CFG-07)."""

import pytest

from lm.config import FieldError
from lm.tracker import NoopConfig, TensorboardConfig, WandbConfig, move_deprecated_wandb


def test_no_deprecated_section_changes_nothing(recwarn):
    assert move_deprecated_wandb(None, NoopConfig()) == NoopConfig()
    assert move_deprecated_wandb(None, [NoopConfig()]) == (NoopConfig(),)
    assert len(recwarn) == 0


def test_wandb_section_replaces_the_default_tracker():
    old = WandbConfig(project="p", entity="e")
    with pytest.warns(DeprecationWarning, match="trainer.wandb is deprecated"):
        assert move_deprecated_wandb(old, WandbConfig()) == old
    with pytest.warns(DeprecationWarning):
        assert move_deprecated_wandb(old, old) == old


@pytest.mark.parametrize(
    "tracker, kinds",
    [
        (NoopConfig(), "type: noop"),
        (WandbConfig(project="other"), "type: wandb"),
        ((WandbConfig(), TensorboardConfig()), "type: wandb, type: tensorboard"),
    ],
)
def test_both_set_is_an_error_at_trainer_wandb_without_the_warning(tracker, kinds, recwarn):
    """The warning said the section "is used as trainer.tracker now" right before the error
    (reported at `trainer`, with a dataclass repr)."""
    with pytest.raises(FieldError) as info:
        move_deprecated_wandb(WandbConfig(project="p"), tracker)
    assert info.value.field == "wandb"
    assert info.value.message.startswith(
        f"is deprecated, and trainer.tracker is set too ({kinds}): remove trainer.wandb"
    )
    assert len(recwarn) == 0


def test_wrong_type_is_an_error():
    with pytest.raises(TypeError, match="trainer.wandb must be a W&B tracker config"):
        move_deprecated_wandb(NoopConfig(), WandbConfig())
