"""Deciding where a run's initial state comes from (CKP-05).

`restore_trainer_state` implements the trainer's loading fields in one place:

1. `load_checkpoint` (None / True / False) with `checkpoint_path` (the run's own
   checkpoints: `load_checkpoint_path`, or the checkpointer's expanded base path):
   None loads the newest complete checkpoint if there is one, True requires one
   (`FileNotFoundError` otherwise), False never loads.
2. Otherwise `initialize_from`: another run's checkpoint (a run dir or a step dir),
   full state (continued training) or, with `initialize_from_params_only`, just the
   trainable parameters (a warm start: fresh optimizer state, step 0).
3. Otherwise a fresh initialization.

Committed checkpoints that exist but are all unreadable (a damaged metadata.json
included) raise `CheckpointLoadError`: the run fails instead of restarting from step 0.
Directories whose save never committed (no metadata.json) hold nothing to lose and
count as no checkpoint. When the user named the path explicitly and nothing is there,
the fresh start is logged as a warning rather than passing silently.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

import equinox as eqx
import jax

from lm.checkpoint.restore import _init_subset, _load_or_init
from lm.checkpoint.serialization import CheckpointLoadError
from lm.checkpoint.storage import (
    STEP_DIR_RE,
    CheckpointStatus,
    checkpoint_candidates,
    exists,
    local_path,
)

logger = logging.getLogger(__name__)

S = TypeVar("S")

RestoreKind = Literal["resumed", "initialized_from", "warm_started", "fresh"]


@dataclasses.dataclass(frozen=True)
class RestoredState(Generic[S]):
    """The initial state and where it came from.

    Attributes:
        state: the trainer state.
        kind: "resumed" (this run's checkpoint), "initialized_from" (another run's full
            state), "warm_started" (another run's parameters only) or "fresh".
        checkpoint: the checkpoint directory loaded, or None when fresh.
    """

    state: S
    kind: RestoreKind
    checkpoint: str | None


def _params_only_spec(shapes: Any) -> Any:
    """A filter spec selecting just the `model` field of a TrainerState-like tree."""
    spec = jax.tree_util.tree_map(lambda _: False, shapes)
    return eqx.tree_at(lambda s: s.model, spec, True)


def no_checkpoint_to_load(checkpoint_path: str, checkpoint_path_field: str | None) -> str | None:
    """Why `load_checkpoint: true` would fail on `checkpoint_path` (no committed checkpoint
    there), e.g. "no checkpoint was found in ... : it does not exist. ..."; None when there is
    one to load. For train_lm to say so before anything is written; `restore_trainer_state`
    raises the same message."""
    committed, torn = checkpoint_candidates(checkpoint_path)
    return None if committed else _none_to_load(checkpoint_path, checkpoint_path_field, torn)


def _none_to_load(
    checkpoint_path: str, checkpoint_path_field: str | None, torn: list[CheckpointStatus]
) -> str:
    where = checkpoint_path_field or "the run's checkpoint directory"
    return (
        f"no checkpoint was found in {where} ({checkpoint_path}): it "
        f"{_why_none_found(checkpoint_path, torn)}. Point it at a run directory or a step-N "
        "checkpoint, or leave load_checkpoint unset (null) to start fresh when there is none"
    )


def _why_none_found(path: str, torn: list[CheckpointStatus]) -> str:
    """Why `path` yields no checkpoint, e.g. "does not exist"."""
    if torn:
        return "holds only incomplete checkpoints (saves that never committed: " + (
            ", ".join(t.path for t in torn) + ")"
        )
    local = local_path(path)
    if local is None:
        return "holds no step-N checkpoint" if exists(path) else "does not exist or is empty"
    # (a file is refused before this, by `checkpoint_candidates`)
    if not os.path.exists(local):
        return "does not exist"
    # the file store lists files: empty step-N folders (a save that made its folder and no
    # file) are not seen, but they are there to be seen by whoever looks
    empty = sorted(
        (name for name in os.listdir(local) if STEP_DIR_RE.match(name)),
        key=lambda name: int(name.split("-")[1]),
    )
    if empty:
        return f"holds no step-N checkpoint ({', '.join(empty)}: empty folders)"
    return "holds no step-N checkpoint"


def restore_trainer_state(
    init_fn: Callable[[], S],
    *,
    checkpoint_path: str | None,
    checkpoint_path_field: str | None = None,
    load_checkpoint: bool | None = None,
    initialize_from: str | None = None,
    initialize_from_params_only: bool = False,
    allow_partial: bool = False,
    axis_mapping: Any = None,
    mesh: Any = None,
    init_args: tuple = (),
) -> RestoredState[S]:
    """Build the initial trainer state from a checkpoint or from `init_fn`.

    `init_fn(*init_args)` builds a fresh state (e.g. `TrainerState` with model, optimizer
    state and key). It is traced with `eqx.filter_eval_shape` for the shapes, and run under jit
    only for the leaves no checkpoint provides: non-trainable parameters (never saved),
    leaves a partial checkpoint lacks, and for a warm start everything but the model.

    Args:
        init_fn: builds a fresh state; takes no arguments.
        checkpoint_path: this run's checkpoints (run dir or a specific `step-N`).
        checkpoint_path_field: the config field that named `checkpoint_path` explicitly
            (e.g. "trainer.load_checkpoint_path"), or None for the run's own directory.
            When set, finding no checkpoint there (with `load_checkpoint=None`) is logged
            as a warning naming the field, and errors name it.
        load_checkpoint: None: load if one exists; True: must load; False: never.
        initialize_from: another run's checkpoint, used when this run has none loaded.
        initialize_from_params_only: take only the `model` subtree from
            `initialize_from`; optimizer state, step and key come from `init_fn`.
        allow_partial: leaves missing from the checkpoint come from `init_fn`.
        axis_mapping: logical -> mesh axis mapping for the restored and initialized arrays.
        mesh: the mesh to place them on.
        init_args: arguments for `init_fn`; arrays among them are jit inputs, not constants
            (pass a concrete model this way instead of closing over it).

    Raises:
        FileNotFoundError: `load_checkpoint=True` and no checkpoint under `checkpoint_path`.
        ValueError: `initialize_from` holds no checkpoint.
        CheckpointLoadError: complete checkpoints exist but none can be read.
    """
    common: dict[str, Any] = dict(
        allow_partial=allow_partial, axis_mapping=axis_mapping, mesh=mesh, discover_latest=True
    )
    if load_checkpoint is not False and checkpoint_path is None and load_checkpoint:
        raise ValueError("load_checkpoint=True needs a checkpoint path to load from")
    if load_checkpoint is not False and checkpoint_path is not None:
        committed, torn = checkpoint_candidates(checkpoint_path)
        if committed:
            try:
                state, loaded = _load_or_init(
                    init_fn,
                    init_args,
                    {},
                    checkpoint_path,
                    is_checkpointed=True,
                    subpath=None,
                    **common,
                )
            except CheckpointLoadError as e:
                # Never start over when checkpoints exist but none can be read.
                raise CheckpointLoadError(f"refusing to start the run over: {e}") from None
            assert loaded is not None
            logger.info("Resuming from checkpoint %s", loaded)
            return RestoredState(state, "resumed", loaded)
        if load_checkpoint:
            raise FileNotFoundError(
                "load_checkpoint=True but "
                + _none_to_load(checkpoint_path, checkpoint_path_field, torn)
            )
        if checkpoint_path_field is None and torn:
            # e.g. the first save was cut short: starting over is right, but say why
            logger.warning(
                "No checkpoint to resume from: the run's checkpoint directory (%s) %s, so the "
                "run starts from %s",
                checkpoint_path,
                _why_none_found(checkpoint_path, torn),
                "scratch" if initialize_from is None else f"initialize_from ({initialize_from})",
            )
        if checkpoint_path_field is not None:
            then = (
                "the run starts from scratch"
                if initialize_from is None
                else f"the run starts from initialize_from ({initialize_from})"
            )
            logger.warning(
                "No checkpoint to resume from: %s (%s) %s, so %s. Set load_checkpoint: "
                "true to make a missing checkpoint an error",
                checkpoint_path_field,
                checkpoint_path,
                _why_none_found(checkpoint_path, torn),
                then,
            )

    if initialize_from is not None:
        committed, _ = checkpoint_candidates(initialize_from)
        if not committed:
            raise ValueError(
                f"initialize_from ({initialize_from!r}) is not a checkpoint path: no "
                f"complete checkpoint at or under it"
            )
        shapes = eqx.filter_eval_shape(init_fn, *init_args)
        spec = _params_only_spec(shapes) if initialize_from_params_only else True
        state, loaded = _load_or_init(
            init_fn, init_args, {}, initialize_from, is_checkpointed=spec, subpath=None, **common
        )
        assert loaded is not None
        kind: RestoreKind = "warm_started" if initialize_from_params_only else "initialized_from"
        logger.info("Initialized (%s) from checkpoint %s", kind, loaded)
        return RestoredState(state, kind, loaded)

    fresh = _init_subset(init_fn, init_args, {}, True, axis_mapping, mesh)
    return RestoredState(fresh, "fresh", None)
