"""`trainer.wandb` is deprecated: moved into `trainer.tracker` with a warning (CFG-07)."""

import pytest

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
    "tracker",
    [NoopConfig(), WandbConfig(project="other"), (WandbConfig(), TensorboardConfig())],
)
def test_both_set_is_an_error(tracker):
    with pytest.warns(DeprecationWarning):
        with pytest.raises(
            ValueError, match="Both the deprecated trainer.wandb and trainer.tracker"
        ):
            move_deprecated_wandb(WandbConfig(project="p"), tracker)


def test_wrong_type_is_an_error():
    with pytest.raises(TypeError, match="trainer.wandb must be a W&B tracker config"):
        move_deprecated_wandb(NoopConfig(), WandbConfig())
