"""The stateful checkpointer the trainer calls after every step, and its config."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import equinox as eqx
import jax
import numpy as np

from lm.checkpoint.policy import (
    CheckpointInterval,
    PolicyState,
    SaveKind,
    decide_save,
    keep_problems,
    parse_keep,
    permanent_to_delete,
    validate_step_policies,
)
from lm.checkpoint.restore import load_checkpoint, load_metadata
from lm.checkpoint.serialization import AsyncCheckpointManager, save_checkpoint
from lm.checkpoint.storage import (
    METADATA_FILE,
    delete_tree,
    join,
    list_checkpoints,
    read_status,
    write_json,
)
from lm.config.codecs import format_duration, parse_duration
from lm.config.errors import FieldError, field_problem, invalid, is_count, raise_problems
from lm.fs import TENSORSTORE_PROTOCOLS, check_url_protocol
from lm.trainer.state import StepInfo, TrainerState, saveable_state

logger = logging.getLogger(__name__)

M = TypeVar("M")


class Checkpointer:
    """Saves checkpoints under `base_path` by two overlapping policies, asynchronously.

    - Temporary checkpoints, by time: at most every `save_interval`. Once a newer
      checkpoint commits, the previous temporary one is deleted.
    - Permanent checkpoints, by step: per `step_policies`. Never deleted, unless
      `max_permanent_checkpoints` is set, in which case only the newest that many are kept.

    The checkpointer is stateful (last save time and step). Process 0 decides and
    broadcasts the decision, so processes with skewed clocks never disagree.

    Args:
        base_path: the run directory, e.g. `checkpoints/<run_id>`; local, `gs://`,
            `memory://` or anything TensorStore's kvstore opens.
        save_interval: minimum time between temporary checkpoints; None disables them.
        step_policies: the permanent-checkpoint intervals.
        keep_params: an equinox filter spec selecting the leaves to save (others are
            saved as None). The state's non-trainable parameters are never saved.
        dt_now_injection: the clock (tests replace it).
        delete_old_temp_checkpoints: on the first commit, delete temporary and torn
            (never committed) checkpoints left in `base_path` by earlier attempts (older
            than the new one). False keeps them. Damaged checkpoints (metadata.json
            present but unreadable) are always kept.
        max_permanent_checkpoints: keep only the newest N permanent checkpoints.
        manager: the async save manager (one per checkpointer by default).
        metadata_fn: more metadata.json fields for the checkpoint of a step, from its
            `StepInfo` (the trainer records how many examples the run has trained on).
    """

    def __init__(
        self,
        base_path: str,
        save_interval: datetime.timedelta | None,
        step_policies: Sequence[CheckpointInterval],
        *,
        keep_params: Any = True,
        dt_now_injection: Callable[[], datetime.datetime] | None = None,
        delete_old_temp_checkpoints: bool = True,
        max_permanent_checkpoints: int | None = None,
        manager: AsyncCheckpointManager | None = None,
        metadata_fn: Callable[[StepInfo], dict[str, Any]] | None = None,
    ):
        if max_permanent_checkpoints is not None and max_permanent_checkpoints < 1:
            raise ValueError(
                f"max_permanent_checkpoints ({max_permanent_checkpoints}) must be >= 1 or None"
            )
        if save_interval is not None and save_interval <= datetime.timedelta(0):
            raise ValueError(f"save_interval ({save_interval}) must be positive or None")
        self.base_path = str(base_path)
        self.save_interval = save_interval
        self.step_policies = validate_step_policies(step_policies, field="step_policies")
        self.keep_params = keep_params
        self.delete_old_temp_checkpoints = delete_old_temp_checkpoints
        self.max_permanent_checkpoints = max_permanent_checkpoints
        self._now = dt_now_injection or datetime.datetime.now
        self._manager = manager if manager is not None else AsyncCheckpointManager()
        self._metadata_fn = metadata_fn
        self._policy = PolicyState(last_save_time=self._now())
        self._last_temporary_checkpoint: str | None = None
        self._swept = not delete_old_temp_checkpoints

    # -- saving ------------------------------------------------------------------

    def on_step(self, info: StepInfo, force: bool = False, *, temporary: bool = False) -> None:
        """Save `info.state` if the policies (or `force`) say so.

        Args:
            info: the completed step; `info.step` names the checkpoint (`step-N`).
            force: save regardless of the policies (final step, preemption). A forced save
                at a step already saved temporarily promotes that checkpoint to permanent.
            temporary: make a forced save temporary (for a preemption save: the first
                save after the restart replaces it). Ignored without `force`.
        """
        self._manager.check_for_errors()
        step = info.step
        local_kind, new_state = decide_save(
            self._policy,
            step,
            self._now(),
            save_interval=self.save_interval,
            step_policies=self.step_policies,
            force=force,
            force_temporary=temporary,
        )
        kind = _broadcast_kind(local_kind)
        if kind != local_kind:
            # Process 0's decision wins; keep our clock consistent with it.
            new_state = (
                PolicyState(self._now(), step, kind)
                if kind in (SaveKind.TEMPORARY, SaveKind.PERMANENT)
                else self._policy
            )
        self._policy = new_state
        if kind == SaveKind.NONE:
            return
        destination = f"step-{step}"
        if kind == SaveKind.PROMOTE:
            self._promote(join(self.base_path, destination))
            return
        logger.info(
            "Saving %s checkpoint at step %d",
            "temporary" if kind == SaveKind.TEMPORARY else "permanent",
            step,
        )
        self.save_checkpoint(info, destination, is_temporary=kind == SaveKind.TEMPORARY)

    def save_checkpoint(
        self,
        info: StepInfo,
        destination: str,
        commit_callback: Callable[[], None] | None = None,
        *,
        is_temporary: bool = False,
    ) -> None:
        """Save `info.state` to `base_path/destination` now (asynchronously)."""
        path = join(self.base_path, destination)
        tree = info.state
        if isinstance(tree, TrainerState):
            tree = saveable_state(tree)
        if self.keep_params is not True:
            tree = eqx.filter(tree, self.keep_params)
        previous_temp = self._last_temporary_checkpoint
        if previous_temp == path:
            previous_temp = None
        self._last_temporary_checkpoint = path if is_temporary else None
        step = info.step

        def on_commit() -> None:
            if jax.process_index() == 0:
                self._after_commit(path, step, is_temporary, previous_temp)
            if commit_callback is not None:
                commit_callback()

        save_checkpoint(
            tree,
            step,
            path,
            is_temporary=is_temporary,
            commit_callback=on_commit,
            manager=self._manager,
            extra_metadata=None if self._metadata_fn is None else self._metadata_fn(info),
        )

    def wait_until_finished(self) -> None:
        """Block until the in-flight save has committed (and raise if it failed)."""
        self._manager.wait_until_finished()

    @property
    def is_saving(self) -> bool:
        return self._manager.is_saving

    # -- deletion (process 0, on the commit thread) -------------------------------

    def _after_commit(
        self, path: str, step: int, is_temporary: bool, previous_temp: str | None
    ) -> None:
        # Only provably disposable directories are deleted: a complete checkpoint whose
        # metadata says temporary, or one that never committed (no metadata.json). One
        # whose metadata.json exists but is unreadable did commit; it is kept.
        if previous_temp is not None:
            status = read_status(previous_temp)
            if status is not None and status.deletable_leftover:
                logger.info("Deleting previous temporary checkpoint %s", previous_temp)
                delete_tree(previous_temp)
            elif status is not None and status.damaged:
                logger.warning("Keeping damaged checkpoint %s: %s", status.path, status.problem)
        if not self._swept:
            self._swept = True
            for s in list_checkpoints(self.base_path):
                if s.path == path or s.step >= step:
                    continue
                if s.deletable_leftover:
                    logger.info(
                        "Deleting %s checkpoint %s left by an earlier attempt",
                        "temporary" if s.committed else "incomplete",
                        s.path,
                    )
                    delete_tree(s.path)
                elif s.damaged:
                    logger.warning("Keeping damaged checkpoint %s: %s", s.path, s.problem)
        if not is_temporary:
            self._enforce_retention(keep=path)

    def _enforce_retention(self, keep: str) -> None:
        if self.max_permanent_checkpoints is None:
            return
        permanent = [
            s for s in list_checkpoints(self.base_path) if s.complete and not s.is_temporary
        ]
        doomed = set(
            permanent_to_delete([s.step for s in permanent], self.max_permanent_checkpoints)
        )
        for s in permanent:
            if s.step in doomed and s.path != keep:
                logger.info(
                    "Deleting permanent checkpoint %s (max_permanent_checkpoints=%d)",
                    s.path,
                    self.max_permanent_checkpoints,
                )
                delete_tree(s.path)

    def keep_final(self, step: int) -> bool:
        """For a run resumed at its end (its final state is the checkpoint it restored):
        whether this run's `step-<step>` holds that checkpoint. A temporary one, a
        preemption save in the run's last step, is marked permanent, as the final save
        would have made it; left temporary, the next attempt's sweep would delete it."""
        path = join(self.base_path, f"step-{step}")
        status = read_status(path)
        if status is None or not status.complete or status.step != step:
            return False
        if status.is_temporary:
            self._promote(path)
        return True

    def _promote(self, path: str) -> None:
        self._manager.wait_until_finished()
        if self._last_temporary_checkpoint == path:
            self._last_temporary_checkpoint = None
        if jax.process_index() == 0:
            meta = load_metadata(path)
            meta["is_temporary"] = False
            write_json(path, METADATA_FILE, meta)
            logger.info("Marked checkpoint %s permanent", path)
            self._enforce_retention(keep=path)

    # -- loading -----------------------------------------------------------------

    def load_checkpoint(
        self,
        state: M,
        path: str | None = None,
        *,
        discover_latest: bool = True,
        axis_mapping: Any = None,
        mesh: Any = None,
    ) -> M | None:
        """Load the newest complete checkpoint under `path` (default `base_path`) into `state`.

        Returns None when there is no checkpoint at all. Raises `CheckpointLoadError`
        when checkpoints exist but none loads (a run never silently starts over).
        """
        try:
            return load_checkpoint(
                state,
                path if path is not None else self.base_path,
                discover_latest=discover_latest,
                axis_mapping=axis_mapping,
                mesh=mesh,
            )
        except FileNotFoundError:
            return None

    def load_model(
        self,
        model: M,
        path: str | None = None,
        *,
        discover_latest: bool = True,
        axis_mapping: Any = None,
        mesh: Any = None,
    ) -> M | None:
        """Load just the `model` subtree of the newest checkpoint (None when there is none)."""
        try:
            return load_checkpoint(
                model,
                path if path is not None else self.base_path,
                discover_latest=discover_latest,
                axis_mapping=axis_mapping,
                mesh=mesh,
                subpath="model",
            )
        except FileNotFoundError:
            return None


def _broadcast_kind(kind: SaveKind) -> SaveKind:
    """Process 0's decision, on every process (no collective on one process)."""
    if jax.process_count() == 1:
        return kind
    from jax.experimental import multihost_utils

    value = multihost_utils.broadcast_one_to_all(np.int32(kind.value))
    return SaveKind(int(value))


@dataclasses.dataclass(frozen=True)
class CheckpointerConfig:
    """Where and when checkpoints are saved (`trainer.checkpointer` in a run YAML)."""

    base_path: str = "checkpoints/"
    """Directory for checkpoints: local, `gs://...`, `s3://...` or `memory://...`."""
    save_interval: datetime.timedelta = datetime.timedelta(minutes=15)
    """How often to save a temporary checkpoint (time), e.g. `15m`."""
    keep: list[dict] = dataclasses.field(default_factory=lambda: [dict(every=10000)])
    """Permanent checkpoints by step: `[{every: 1000, until: 10000}, {every: 5000}]`.
    Only the last entry may omit `until`; `until` must strictly increase."""
    append_run_id_to_base_path: bool = True
    """Save under `base_path/<run_id>`."""
    delete_old_temp_checkpoints: bool = True
    """If True, delete temporary (and incomplete) checkpoints left by earlier attempts of
    this run once a new checkpoint commits. If False, keep them (e.g. to inspect them
    after preemptions)."""
    max_permanent_checkpoints: int | None = None
    """Keep only the newest N permanent checkpoints; None keeps all of them."""

    def __post_init__(self):
        raise_problems(
            [
                *self._keep_problems(),
                *field_problem(self._check_save_interval),
                *field_problem(self._check_max_permanent),
                *field_problem(self._check_base_path),
            ]
        )

    def _keep_problems(self) -> list[FieldError]:
        # each at its entry: reported at trainer.checkpointer.keep[1]
        return [FieldError(path, message) for path, message in keep_problems(self.keep)]

    def _check_save_interval(self) -> None:
        value = self.save_interval
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            # the YAML form, from Python: "15m", "1h30m" or a number of seconds
            try:
                object.__setattr__(self, "save_interval", parse_duration(value))
            except ValueError as e:
                raise FieldError(
                    "save_interval",
                    f"{e}; a datetime.timedelta works too",
                ) from None
        if not isinstance(self.save_interval, datetime.timedelta):
            raise invalid(
                "save_interval",
                self.save_interval,
                "a datetime.timedelta, or a duration string such as '15m' or '1h30m'",
            )
        if self.save_interval <= datetime.timedelta(0):
            raise FieldError(
                "save_interval",
                f"got {format_duration(self.save_interval)}, expected a positive duration",
            )

    def _check_max_permanent(self) -> None:
        n = self.max_permanent_checkpoints
        if n is not None and not is_count(n):
            raise invalid("max_permanent_checkpoints", n, "a positive integer, or null to keep all")

    def _check_base_path(self) -> None:
        if not self.base_path:
            raise FieldError("base_path", "must not be empty")
        # TensorStore writes checkpoints itself (gs:// and s3:// need no fsspec package), so
        # only the protocol is checked: a typo fails here, not at the first save.
        check_url_protocol(self.base_path, "base_path", allowed=TENSORSTORE_PROTOCOLS)

    @property
    def step_policies(self) -> list[CheckpointInterval]:
        return parse_keep(self.keep, field="checkpointer.keep")

    def expanded_path(self, run_id: str) -> str:
        """The run directory: `base_path/run_id` (or `base_path` when not appending)."""
        if self.append_run_id_to_base_path:
            return join(self.base_path, run_id)
        return self.base_path.rstrip("/") or self.base_path

    def create(self, run_id: str, **kwargs: Any) -> Checkpointer:
        """Build the Checkpointer for `run_id` (kwargs go to `Checkpointer`, e.g. a clock)."""
        return Checkpointer(
            self.expanded_path(run_id),
            self.save_interval,
            self.step_policies,
            delete_old_temp_checkpoints=self.delete_old_temp_checkpoints,
            max_permanent_checkpoints=self.max_permanent_checkpoints,
            **kwargs,
        )
