"""`lm.main.plot_lr`: the run's LR schedule as a PNG and a phase table."""

from __future__ import annotations

import subprocess
import sys

import pytest
from matplotlib.image import imread

import lm.config
from lm.main.plot_lr import main

RUN = """\
model:
  type: gpt2
trainer:
  num_train_steps: 1000
optimizer:
  learning_rate: 0.002
  warmup: 0.1
  min_lr_ratio: 0.1
  lr_schedule: linear
  decay: 0.3
"""


def test_plot_lr_writes_png_and_prints_phases(tmp_path, capsys):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(RUN)
    output = tmp_path / "plots" / "lr.png"
    output.parent.mkdir()
    phases = lm.config.main(main)(args=["--config_path", str(config_path), "--output", str(output)])
    image = imread(output)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # warmup: 10% of 1000 steps; decay: the last 30%; stable in between at the peak
    assert [(p.kind, p.start, p.end) for p in phases] == [
        ("warmup", 0, 100),
        ("stable", 100, 700),
        ("decay", 700, 1000),
    ]
    assert phases[-1].end_lr == pytest.approx(0.0002)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Wrote {output}: the LR schedule over 1,000 steps"
    assert out[1].split() == ["phase", "cycle", "steps", "learning", "rate"]
    assert out[2].split() == ["warmup", "0", "0-100", "0", "->", "0.002"]
    assert out[3].split() == ["stable", "0", "100-700", "0.002", "->", "0.002"]
    assert out[4].split() == ["decay", "0", "700-1000", "0.002", "->", "0.0002"]


def test_plot_lr_output_must_be_png(tmp_path, capsys):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(RUN)
    with pytest.raises(SystemExit) as e:
        lm.config.main(main)(args=["--config_path", str(config_path), "--output", "lr.svg"])
    assert e.value.code == 2
    assert "output" in capsys.readouterr().err
    assert not (tmp_path / "lr.svg").exists()


def test_plot_lr_output_under_a_file_is_one_message(tmp_path, capsys, monkeypatch):
    """It was `error: [Errno 17] File exists: '.../afile'`, naming no flag."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(RUN)
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as e:
        lm.config.main(main)(args=["--config_path", "run.yaml", "--output", "afile/lr.png"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: output: afile/lr.png: afile is a file, not a directory" in err, err


@pytest.mark.entry
def test_plot_lr_cli_on_the_demo_config(tmp_path, subprocess_env, repo_root):
    output = tmp_path / "lr.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm.main.plot_lr",
            "--config_path",
            "config/gpt2_nano.yaml",
            "--output",
            str(output),
            "--trainer.num_train_steps",
            "500",
        ],
        env=subprocess_env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # gpt2_nano: warmup 0.05 of the run, then decay to 0.1 x 3e-3
    assert "warmup  0      0-25" in proc.stdout
    assert "decay   0      25-500  0.003 -> 0.0003" in proc.stdout
