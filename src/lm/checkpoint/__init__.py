"""TensorStore checkpoints: policies, async saves, sharding-aware restore, resume logic.

See docs/checkpointing.md. Importing this package has no side effects.
"""

from lm.checkpoint.checkpointer import Checkpointer, CheckpointerConfig
from lm.checkpoint.policy import (
    CheckpointInterval,
    PolicyState,
    SaveKind,
    decide_save,
    is_permanent_step,
    parse_keep,
    permanent_to_delete,
    step_policy_for,
    validate_step_policies,
)
from lm.checkpoint.preemption import PreemptionSignal
from lm.checkpoint.restore import (
    load_checkpoint,
    load_checkpoint_or_initialize,
    load_checkpoint_with_path,
    load_metadata,
    padded_axes,
)
from lm.checkpoint.resume import RestoredState, restore_trainer_state
from lm.checkpoint.serialization import (
    AsyncCheckpointManager,
    CheckpointCorruptError,
    CheckpointLoadError,
    CheckpointSaveError,
    leaf_name,
    save_checkpoint,
    wait_until_finished,
)
from lm.checkpoint.storage import (
    CheckpointStatus,
    discover_latest_checkpoint,
    list_checkpoints,
)

__all__ = [
    "AsyncCheckpointManager",
    "CheckpointCorruptError",
    "CheckpointSaveError",
    "CheckpointInterval",
    "CheckpointLoadError",
    "CheckpointStatus",
    "Checkpointer",
    "CheckpointerConfig",
    "PolicyState",
    "PreemptionSignal",
    "RestoredState",
    "SaveKind",
    "decide_save",
    "discover_latest_checkpoint",
    "is_permanent_step",
    "leaf_name",
    "list_checkpoints",
    "load_checkpoint",
    "padded_axes",
    "load_checkpoint_or_initialize",
    "load_checkpoint_with_path",
    "load_metadata",
    "parse_keep",
    "permanent_to_delete",
    "restore_trainer_state",
    "save_checkpoint",
    "step_policy_for",
    "validate_step_policies",
    "wait_until_finished",
]
