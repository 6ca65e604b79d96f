"""The LR schedule plot writes a PNG and reports the phases it drew."""

import fsspec
import numpy as np

from lm.optim import AdamConfig
from lm.optim.plot import plot_lr_schedule, schedule_values


def test_plot_writes_png_with_phases(tmp_path):
    config = AdamConfig(
        learning_rate=1e-3, warmup=0.1, decay=0.3, rewarmup=0.05, cycles=2, lr_schedule="linear"
    )
    out = tmp_path / "lr.png"
    phases = plot_lr_schedule(config, 1000, str(out), title="cycles")
    assert out.stat().st_size > 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [(p.kind, p.cycle) for p in phases] == [
        ("warmup", 0), ("stable", 0), ("decay", 0), ("rewarmup", 1), ("stable", 1), ("decay", 1),
    ]  # fmt: skip
    assert phases == config.schedule_phases(1000)


def test_plot_with_horizon_to_fsspec_url():
    config = AdamConfig(warmup=0.05, decay=0.2, schedule_steps=10_000)
    phases = plot_lr_schedule(config, 8_000, "memory://plots/lr.png")
    with fsspec.open("memory://plots/lr.png", "rb") as f:
        assert f.read(4) == b"\x89PNG"
    assert phases[-1].kind == "decay" and phases[-1].end == 10_000


def test_schedule_values_match_the_schedule():
    config = AdamConfig(learning_rate=1e-3, warmup=10, lr_schedule="linear")
    values = schedule_values(config, 100, [0, 5, 10, 55, 99])
    f = config.lr_scheduler(100)
    expected = [float(f(s)) for s in (0, 5, 10, 55, 99)]
    np.testing.assert_allclose(values, expected, rtol=1e-5)
