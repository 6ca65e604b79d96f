"""A run's `config.yaml`: written once the run's state is there, and compared with the one an
earlier run left, so that a resume with another configuration names every changed field (a
warning) and a checkpoint that no longer fits the state names the changes that are why (an
error).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import jax

import lm.config

if TYPE_CHECKING:
    from lm.main.train_lm import TrainLmConfig

logger = logging.getLogger(__name__)


def save_run_config(config: TrainLmConfig, run_dir: str, restored_step: int | None) -> None:
    """Write the resolved config to `<run_dir>/config.yaml`. A resumed run whose config differs
    from the one there keeps that one as `config.before-step-<N>.yaml` and warns, naming every
    changed field (and what another `num_train_steps` does to the LR schedule). Process 0
    writes it, as it writes the run's metrics."""
    if jax.process_index() != 0:
        return
    path = os.path.join(run_dir, "config.yaml")
    if restored_step is not None and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            previous = f.read()
        changes = config_changes(previous, lm.config.to_yaml(config))
        if changes.get("trainer.id", ("x",))[0] is None:
            del changes["trainer.id"]  # a random id, given to resume the run: the same run
        if changes:
            kept = os.path.join(run_dir, f"config.before-step-{restored_step}.yaml")
            os.replace(path, kept)
            message = (
                f"Resuming at step {restored_step} with a changed configuration: "
                + "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
                + f" (the previous config is kept as {kept})"
            )
            steps = changes.get("trainer.num_train_steps")
            if steps is not None and getattr(config.optimizer, "schedule_steps", None) is None:
                message += _schedule_note(*steps)
            logger.warning("%s", message)
    lm.config.save_config(config, path)


def with_config_changes(error: ValueError, config: TrainLmConfig, run_dir: str) -> ValueError:
    """A checkpoint that does not fit the state (the restore's `ValueError`), with the model
    and optimizer fields that changed since the run's `config.yaml` was written, which are
    why (`optimizer.type: 'muon' -> 'adam'`): the restore itself can only name leaves."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path) or isinstance(error, lm.config.SetupConfigError):
        return error
    with open(path, encoding="utf-8") as f:
        changes = config_changes(f.read(), lm.config.to_yaml(config))
    relevant = {
        key: change
        for key, change in changes.items()
        if key.split(".")[0] in ("model", "optimizer")
        or key.startswith(("trainer.model_averaging", "trainer.quantization"))
    }
    if not relevant:
        return error
    for key in [k for k in relevant if k.endswith(".type")]:  # another choice: its fields follow
        section = key.removesuffix("type")
        relevant = {k: v for k, v in relevant.items() if k == key or not k.startswith(section)}
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in relevant.items())
    return lm.config.SetupConfigError(
        f"this run's checkpoints were saved with another configuration ({listed}, against "
        f"{path}), so they cannot be restored into this one: {error}. Resume with the run's "
        "settings, or start a new run (another trainer.id) from its weights with "
        "trainer.initialize_from: <its checkpoint> and trainer.initialize_from_params_only: true"
    )


def _schedule_note(old_steps: Any, new_steps: Any) -> str:
    """What another num_train_steps does to an LR schedule that follows it."""
    note = (
        ". The learning-rate schedule follows trainer.num_train_steps, so it is recomputed "
        f"over {new_steps} steps instead of {old_steps} and the LR changes from this step on"
    )
    if isinstance(old_steps, int) and isinstance(new_steps, int) and new_steps < old_steps:
        note += f"; set optimizer.schedule_steps: {old_steps} to stop early on the old schedule"
    return note


def config_changes(previous_yaml: str, current_yaml: str) -> dict[str, tuple[Any, Any]]:
    """`{field: (old, new)}` for every leaf that differs between two resolved configs (a
    field only one of them has is `(absent)` in the other). A section set on one side only
    (`trainer.model_averaging: null` against `{type: ema, beta: 0.5}`) is one entry, shown as
    a YAML mapping, not its fields one by one."""
    import yaml

    try:
        old = yaml.safe_load(previous_yaml) or {}
    except yaml.YAMLError:
        return {"config.yaml": ("(unreadable)", "(this run's)")}
    new = yaml.safe_load(current_yaml) or {}
    absent = _Absent()
    out: dict[str, tuple[Any, Any]] = {}

    def diff(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict) and (a or b):
            for key in sorted(a.keys() | b.keys(), key=str):
                name = f"{prefix}.{key}" if prefix else str(key)
                diff(a.get(key, absent), b.get(key, absent), name)
        elif a != b:
            out[prefix] = (_Section.of(a), _Section.of(b))

    diff(old, new, "")
    return out


class _Section(dict):
    """A config section as a changed value: shown as a YAML flow mapping."""

    @classmethod
    def of(cls, value: Any) -> Any:
        return cls(value) if isinstance(value, dict) else value

    def __repr__(self) -> str:
        import yaml

        return yaml.safe_dump(dict(self), default_flow_style=True, sort_keys=False).strip()


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"
