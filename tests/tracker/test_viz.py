"""Training-curve plots from the JSON metrics log, and the viz_run command."""

import json
import subprocess
import sys

import fsspec
import pytest

from lm.main import viz_run
from lm.tracker.viz import RunLogError, extract_series, load_records, make_figure, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run_records(num_steps=6):
    records = [{"event": "hparams", "hparams": {"lr": 0.1}}]
    for step in range(num_steps):
        metrics = {
            "train/loss": 5.0 / (step + 1),
            "optim/learning_rate": 0.1 * step,
            "throughput/tokens_per_second": 1000.0 + step,
        }
        if step % 2 == 1:
            metrics["eval/loss"] = 4.0 / (step + 1)
            metrics["eval/web/loss"] = 3.0 / (step + 1)
        records.append({"event": "log", "step": step, "metrics": metrics})
    records.append({"event": "finish", "summary": {}})
    return records


def write_log(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def line_data(fig):
    return {
        (ax.get_ylabel(), line.get_label()): line.get_xydata().tolist()
        for ax in fig.axes
        for line in ax.get_lines()
    }


def test_figure_holds_every_series():
    fig, panels = make_figure(fake_run_records())
    assert panels == ["loss", "learning rate", "throughput"]
    data = line_data(fig)
    assert data[("loss", "train")] == [[s, 5.0 / (s + 1)] for s in range(6)]
    assert data[("loss", "eval")] == [[s, 4.0 / (s + 1)] for s in (1, 3, 5)]
    assert data[("loss", "eval web")] == [[s, 3.0 / (s + 1)] for s in (1, 3, 5)]
    assert data[("learning rate", "lr")] == [[s, 0.1 * s] for s in range(6)]
    assert data[("tokens / s", "tokens/s")] == [[s, 1000.0 + s] for s in range(6)]


def test_replayed_steps_keep_the_last_value_and_non_numbers_are_skipped():
    records = [
        {"event": "log", "step": 0, "metrics": {"train/loss": 9.0}},
        {"event": "log", "step": 1, "metrics": {"train/loss": "nan", "note": "hi"}},
        {"event": "log", "step": 0, "metrics": {"train/loss": 2.0}},  # after a restart
        {"event": "log", "step": 2, "metrics": {"train/loss": 1.0}},
    ]
    assert extract_series(records) == {"train/loss": {0: 2.0, 2: 1.0}}


def test_missing_series_skip_their_panel(caplog):
    records = [{"event": "log", "step": s, "metrics": {"train/loss": 1.0}} for s in range(3)]
    fig, panels = make_figure(records)
    assert panels == ["loss"] and len(fig.axes) == 1
    assert "skipping the learning-rate panel" in caplog.text
    assert "skipping the throughput panel" in caplog.text


def test_a_run_without_tokens_per_second_plots_examples_per_second():
    """A Trainer run without set_throughput_model logs examples/s only: viz_run said
    "skipped (no data): throughput"."""
    records = [
        {"event": "log", "step": s, "metrics": {"throughput/examples_per_second": 10.0 + s}}
        for s in range(3)
    ]
    fig, panels = make_figure(records)
    assert panels == ["throughput"]
    assert line_data(fig)[("examples / s", "examples/s")] == [[s, 10.0 + s] for s in range(3)]


def test_nothing_to_plot_is_an_error():
    with pytest.raises(RunLogError, match="no plottable metrics: expected train/loss"):
        make_figure([{"event": "log", "step": 0, "metrics": {"other": 1.0}}])


def test_plot_run_from_a_run_dir_writes_a_png(tmp_path):
    write_log(tmp_path / "run" / "metrics.jsonl", fake_run_records())
    out = tmp_path / "plots" / "curves.png"
    assert plot_run(str(tmp_path / "run"), str(out)) == ["loss", "learning rate", "throughput"]
    assert out.read_bytes().startswith(PNG_MAGIC)
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(str(out)).shape
    assert width == 960 and height > 600  # 8 in x 120 dpi, three panels


def test_plot_run_through_fsspec():
    with fsspec.open("memory://lm-viz/run/metrics.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in fake_run_records()))
    plot_run("memory://lm-viz/run", "memory://lm-viz/out.svg")
    with fsspec.open("memory://lm-viz/out.svg", "rb") as f:
        assert b"<svg" in f.read()


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is a directory without metrics.jsonl"),
        (lambda p: p.write_text('{"event": "log"}\nnot json\n'), r":2 is not a JSON line"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "cannot read metrics log"),
    ],
)
def test_unreadable_logs_are_clear_errors(tmp_path, setup, match):
    path = tmp_path / "thing"
    setup(path)
    with pytest.raises(RunLogError, match=match) as e:
        load_records(str(path))
    assert str(path) in str(e.value)


def test_a_record_cut_off_by_a_kill_is_skipped_and_a_resumed_log_starts_a_new_line(
    tmp_path, caplog
):
    from lm.tracker.json_logger import JsonLogger

    log = tmp_path / "metrics.jsonl"
    log.write_text(
        '{"event": "log", "step": 0, "metrics": {"train/loss": 2.0}}\n{"event": "log", "st'
    )
    logger = JsonLogger(str(log))  # a resumed run appends
    logger.log({"train/loss": 1.0}, step=1)
    logger.finish()
    with caplog.at_level("WARNING"):
        records = load_records(str(log))
    assert [r["metrics"]["train/loss"] for r in records if r["event"] == "log"] == [2.0, 1.0]
    assert f"{log}:2: skipping a cut-off record" in caplog.text


@pytest.mark.parametrize(
    "output, message",
    [
        ("out", "--output {tmp}/out is a directory; give an image file's path"),
        ("c.txt", "--output {tmp}/c.txt: .txt is not an image type matplotlib writes; end the"),
        ("afile/c.png", "--output {tmp}/afile/c.png: {tmp}/afile is a file, not a directory"),
    ],
)
def test_viz_run_output_that_cannot_be_written_is_one_message(tmp_path, capsys, output, message):
    log = write_log(
        tmp_path / "run" / "metrics.jsonl",
        [{"event": "log", "step": 0, "metrics": {"train/loss": 1.0}}],
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "afile").write_text("")
    assert viz_run.main([str(log), "-o", str(tmp_path / output)]) == 2
    # (a line: a Ray cluster another test left running may print to stderr too)
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("error: " + message.format(tmp=tmp_path)) for line in lines), lines


def test_viz_run_cli(tmp_path, capsys):
    log = write_log(
        tmp_path / "run" / "metrics.jsonl",
        [{"event": "log", "step": s, "metrics": {"train/loss": 1.0 / (s + 1)}} for s in range(4)],
    )
    assert viz_run.main([str(log)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'run' / 'curves.png'} (loss)" in out
    assert "skipped (no data): learning rate, throughput" in out
    assert (tmp_path / "run" / "curves.png").read_bytes().startswith(PNG_MAGIC)

    assert viz_run.main([str(tmp_path / "nope"), "--output", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert f"error: metrics log {tmp_path / 'nope'} does not exist" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.entry
def test_viz_run_entry_point(tmp_path, subprocess_env):
    write_log(tmp_path / "run" / "metrics.jsonl", fake_run_records())
    out = tmp_path / "curves.png"
    proc = subprocess.run(
        [sys.executable, "-m", "lm.main.viz_run", str(tmp_path / "run"), "--output", str(out)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(loss, learning rate, throughput)" in proc.stdout
    assert out.read_bytes().startswith(PNG_MAGIC)
