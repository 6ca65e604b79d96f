"""Draw an optimizer's LR schedule, with its phases and cycle boundaries marked."""

from __future__ import annotations

import io
import logging

import fsspec
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lm.optim.config import OptimizerConfig
from lm.optim.schedules import Phase, resolve_lr_schedule

logger = logging.getLogger(__name__)

PHASE_COLORS = {
    "warmup": "#f4a261",
    "rewarmup": "#e9c46a",
    "stable": "#8ecae6",
    "decay": "#b5a6d6",
    "cooldown": "#c9c9c9",
}

_MAX_POINTS = 4000


def schedule_values(config: OptimizerConfig, num_train_steps: int, steps: np.ndarray) -> np.ndarray:
    """The LR at each of `steps` (evaluated with one vectorised call)."""
    schedule = config.lr_scheduler(num_train_steps)
    values = jax.vmap(schedule)(jnp.asarray(steps, jnp.int32))
    return np.asarray(values, dtype=np.float64)


def _sample_steps(phases: list[Phase], horizon: int) -> np.ndarray:
    """Evenly spaced steps plus every phase edge (and the step before it), so jumps are
    drawn as vertical lines rather than slopes."""
    grid = np.linspace(0, horizon - 1, min(horizon, _MAX_POINTS)).round().astype(np.int64)
    edges = [p.start for p in phases] + [max(p.start - 1, 0) for p in phases] + [horizon - 1]
    return np.unique(np.concatenate([grid, np.asarray(edges, np.int64)]))


def _default_title(config: OptimizerConfig) -> str:
    name = config.get_choice_name(type(config))
    shape = resolve_lr_schedule(config.lr_schedule)
    shape_name = shape.get_choice_name(type(shape))
    return f"{name}: {shape_name} schedule, peak LR {config.learning_rate:g}"


def plot_lr_schedule(
    config: OptimizerConfig, num_train_steps: int, output: str, *, title: str | None = None
) -> list[Phase]:
    """Write a PNG of the LR over the schedule to `output` (a local path or fsspec URL).

    Phases are shaded (warmup, stable, decay, rewarmup, cooldown), cycle boundaries are
    dashed lines, and when `schedule_steps` extends past the run, the part after
    `num_train_steps` is greyed out. Returns the phases drawn.
    """
    phases = config.schedule_phases(num_train_steps)
    horizon = config.schedule_horizon(num_train_steps)
    steps = _sample_steps(phases, horizon)
    lrs = schedule_values(config, num_train_steps, steps)

    fig = Figure(figsize=(9, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    seen: set[str] = set()
    for p in phases:
        label = p.kind if p.kind not in seen else None
        seen.add(p.kind)
        ax.axvspan(p.start, p.end, color=PHASE_COLORS[p.kind], alpha=0.35, lw=0, label=label)

    starts = sorted({p.start for p in phases if p.cycle > 0 and _first_of_cycle(phases, p)})
    for i, s in enumerate(starts):
        ax.axvline(s, color="#555555", ls="--", lw=1, label="cycle boundary" if i == 0 else None)

    ran = steps < num_train_steps
    ax.plot(steps[ran], lrs[ran], color="#1d3557", lw=2, label="learning rate")
    if horizon > num_train_steps:
        ax.plot(steps[~ran], lrs[~ran], color="#1d3557", lw=1.5, ls=":")
        ax.axvspan(num_train_steps, horizon, color="white", alpha=0.55, lw=0)
        ax.axvline(num_train_steps, color="#d62828", lw=1.5, label="run stops (num_train_steps)")

    ax.set_xlim(0, horizon)
    ax.set_ylim(0, max(float(np.nanmax(lrs)), config.learning_rate) * 1.08)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_title(title if title is not None else _default_title(config))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=7, fontsize=8, frameon=False)
    ax.grid(alpha=0.25)
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with fsspec.open(output, "wb") as f:
        f.write(buf.getvalue())
    logger.info("Wrote LR schedule plot to %s", output)
    return phases


def _first_of_cycle(phases: list[Phase], phase: Phase) -> bool:
    return min(p.start for p in phases if p.cycle == phase.cycle) == phase.start
