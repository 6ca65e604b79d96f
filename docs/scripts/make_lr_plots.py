"""Regenerate the LR schedule pictures of docs/optimizers.md.

PYTHONPATH=src python docs/scripts/make_lr_plots.py [--out docs/images]
"""

import argparse
import pathlib

from lm.optim import AdamConfig, CosineLrSchedule
from lm.optim.plot import plot_lr_schedule

STEPS = 10_000

# name -> (config, title)
SHAPES = {
    "lr_default_cosine": (AdamConfig(), "default: 1% warmup, cosine to 10% of the peak"),
    "lr_linear": (
        AdamConfig(warmup=0.05, lr_schedule="linear", min_lr_ratio=0.0),
        "lr_schedule: linear, warmup: 0.05, min_lr_ratio: 0.0",
    ),
    "lr_wsd": (
        AdamConfig(warmup=500, decay=0.2, lr_schedule="linear", min_lr_ratio=0.0),
        "warmup-stable-decay: warmup: 500, decay: 0.2, linear",
    ),
    "lr_cycles_rewarmup": (
        AdamConfig(warmup=0.1, rewarmup=0.05, cycles=3, lr_schedule="cosine"),
        "cycles: 3, warmup: 0.1, rewarmup: 0.05, cosine",
    ),
    "lr_wsds": (
        AdamConfig(warmup=200, decay=0.1, cycles=[3000, 7000]),
        "WSD-S: cycles: [3000, 7000], decay: 0.1 (no rewarmup)",
    ),
    "lr_inv_sqrt": (
        AdamConfig(warmup=0.05, lr_schedule="inv_sqrt", min_lr_ratio=0.05),
        "lr_schedule: inv_sqrt (timescale 10000), warmup: 0.05",
    ),
    "lr_cosine_exponent": (
        AdamConfig(warmup=0.02, lr_schedule=CosineLrSchedule(exponent=2.0), min_lr_ratio=0.0),
        "lr_schedule: {type: cosine, exponent: 2.0}",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parents[1] / "images"))
    out = pathlib.Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (config, title) in SHAPES.items():
        plot_lr_schedule(config, STEPS, str(out / f"{name}.png"), title=title)
        print(out / f"{name}.png")
    horizon = AdamConfig(warmup=0.05, decay=0.2, schedule_steps=10_000)
    plot_lr_schedule(
        horizon,
        8_000,
        str(out / "lr_horizon.png"),
        title="schedule_steps: 10000 with num_train_steps: 8000 (stops before the decay)",
    )
    print(out / "lr_horizon.png")


if __name__ == "__main__":
    main()
