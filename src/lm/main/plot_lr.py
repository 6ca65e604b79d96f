"""Draw a run's learning-rate schedule: `python -m lm.main.plot_lr --config_path run.yaml
--output lr.png`.

Reads the run config (only `optimizer` and `trainer.num_train_steps` matter), writes a PNG
of the LR over the schedule with its phases shaded, and prints the phases as a table.
"""

from __future__ import annotations

import dataclasses
import posixpath

import lm.config
from lm.main.train_lm import TrainLmConfig
from lm.optim.plot import plot_lr_schedule
from lm.optim.schedules import Phase


@dataclasses.dataclass(frozen=True)
class PlotLrConfig(TrainLmConfig):
    """A `train_lm` run config plus where to draw its schedule."""

    output: str = "lr.png"
    """The PNG to write (local path or fsspec URL)."""
    title: str | None = None
    """Figure title. None: the optimizer, schedule shape and peak LR."""

    def __post_init__(self):
        super().__post_init__()
        if not self.output.lower().endswith(".png"):
            raise lm.config.invalid("output", self.output, "a path ending in .png")


def format_phases(phases: list[Phase]) -> str:
    rows = [("phase", "cycle", "steps", "learning rate")]
    for p in phases:
        rows.append(
            (p.kind, str(p.cycle), f"{p.start}-{p.end}", f"{p.start_lr:.4g} -> {p.end_lr:.4g}")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def main(config: PlotLrConfig) -> list[Phase]:
    from lm.fs import not_a_directory

    # a file where the output's folder should be: one message naming --output, not [Errno 17]
    folder = posixpath.dirname(config.output)
    why = not_a_directory(folder) if folder else None
    if why is not None:
        raise lm.config.FieldError("output", f"{config.output}: {why}")
    num_steps = config.trainer.num_train_steps
    phases = plot_lr_schedule(config.optimizer, num_steps, config.output, title=config.title)
    print(f"Wrote {config.output}: the LR schedule over {num_steps:,} steps")
    print(format_phases(phases), flush=True)
    return phases


if __name__ == "__main__":
    lm.config.main(main)()
