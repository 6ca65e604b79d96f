"""What `train_lm` prints when a run ends: the first and last training loss, each validation
set's last eval loss, and where the run's files and last checkpoint are; or, for an
interrupted run, how far it got and how to resume it.
"""

from __future__ import annotations

import logging
import os

from lm.trainer import Trainer, TrainerConfig

logger = logging.getLogger(__name__)


class RunSummary:
    """Collects what the user wants to know at the end: losses and where things are."""

    def __init__(self, trainer_config: TrainerConfig):
        self.config = trainer_config
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.last_step: int | None = None
        self.steps_taken: int | None = None
        self.eval_losses: dict[str, float] = {}  # the last eval loss of each validation set
        self.checkpoint: str | None = None
        self.tracker_failures: list[str] = []  # trackers dropped after failing

    def record(self, info, force: bool = False) -> None:
        self.last_step = info.step
        if force:  # the final hooks: the last step again, or no step at all (a finished run)
            return
        loss = float(info.loss)
        if self.first_loss is None:
            self.first_loss = loss
        self.last_loss = loss

    def finish(self, info, trainer: Trainer) -> None:
        from lm.checkpoint import discover_latest_checkpoint

        self.last_step = info.step
        self.steps_taken = int(info.state.step)
        self.tracker_failures = list(getattr(getattr(trainer, "tracker", None), "failures", []))
        # where this run saves (a load_checkpoint_path it started from may be elsewhere)
        self.checkpoint = discover_latest_checkpoint(
            self.config.checkpointer.expanded_path(self.config.run_id)
        )
        for hook in trainer._eval_hooks:
            loss = None if hook.last_result is None else hook.last_result.get(f"{hook.prefix}/loss")
            if loss is not None:
                self.eval_losses[hook.name or ""] = loss

    def interrupted(self) -> None:
        """Say (console and log) how far an interrupted run got and how to go on from there."""
        from lm.checkpoint import discover_latest_checkpoint

        run_id = self.config.run_id
        last = discover_latest_checkpoint(self.config.checkpointer.expanded_path(run_id))
        done = "before its first step" if self.last_step is None else f"after step {self.last_step}"
        if last is None:
            then = "no checkpoint was saved"
        else:
            then = f"last checkpoint: {last}; rerun with --trainer.id {run_id} to resume from it"
        message = f"Run {run_id} interrupted {done}; {then}."
        logger.warning("%s", message)
        print(message, flush=True)

    def print(self) -> None:
        run_dir = self.config.run_dir
        lines = [f"Run {self.config.run_id} finished at step {self.last_step}."]
        if self.first_loss is not None:
            lines.append(
                f"  train loss: {self.first_loss:.4f} (first step) -> {self.last_loss:.4f} (last)"
            )
        else:
            lines.append(
                f"  no steps run: its checkpoint has all {self.steps_taken} steps "
                f"(trainer.num_train_steps: {self.config.num_train_steps}; steps count from 0)"
            )
        if list(self.eval_losses) == [""]:  # the one unnamed validation set
            lines.append(f"  eval loss:  {self.eval_losses['']:.4f}")
        elif self.eval_losses:
            per_set = ", ".join(f"{name} {loss:.4f}" for name, loss in self.eval_losses.items())
            lines.append(f"  eval loss:  {per_set}")
        written = [
            label
            for name, label in [
                ("config.yaml", "config.yaml"),
                ("metrics.jsonl", "metrics"),
                ("curves.png", "plots"),
            ]
            if os.path.exists(os.path.join(run_dir, name))
        ]
        lines.append(f"  run dir:    {run_dir}/ ({', '.join(written) or 'empty'})")
        lines.append(
            f"  log file:   {os.path.join(str(self.config.log_dir), self.config.run_id)}.log"
        )
        lines.append(f"  checkpoint: {self.checkpoint or 'none'}")
        lines += [f"  tracker dropped: {failure}" for failure in self.tracker_failures]
        print("\n".join(lines), flush=True)
