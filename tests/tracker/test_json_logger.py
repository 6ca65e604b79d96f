import jax.numpy as jnp
import pytest

import lm.config
import lm.tracker
import lm.tracker.viz
from lm.tracker import CompositeTracker, JsonLoggerConfig, NoopTracker, read_json_log


def test_json_logger_reference_case(tmp_path):
    path = str(tmp_path / "m.jsonl")
    tracker = JsonLoggerConfig(path=path).init("run")
    tracker.log({"a": 1, "b": jnp.array(2)}, step=1)
    tracker.log_summary({"c": 3})
    tracker.finish()
    records = read_json_log(path)
    assert records[0]["event"] == "log"
    assert records[0]["metrics"]["a"] == 1
    assert records[0]["metrics"]["b"] == 2
    assert records[-1]["event"] == "finish"
    assert records[-1]["summary"]["a"] == 1
    assert records[-1]["summary"]["c"] == 3


def test_read_json_log_skips_a_cut_off_record_and_names_bad_files(tmp_path, caplog):
    """A run killed mid-write leaves a cut record in the middle of a resumed run's log:
    read_json_log raised a bare JSONDecodeError there, while viz_run skipped the line."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "log", "step": 1}\n{"event": "log", "step": 2, "metr\n')
    with path.open("a") as f:
        f.write('{"event": "log", "step": 2}\n')
    assert [r["step"] for r in read_json_log(str(path))] == [1, 2]
    assert "metrics.jsonl:2: skipping a cut-off record" in caplog.text
    assert [r["step"] for r in read_json_log(str(tmp_path))] == [1, 2]  # a run directory
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(lm.tracker.viz.RunLogError, match=r"notes\.txt:1 is not a JSON line"):
        read_json_log(str(tmp_path / "notes.txt"))


def test_an_empty_json_path_is_a_field_error():
    with pytest.raises(lm.config.FieldError, match=r"^path: is empty: give the file"):
        JsonLoggerConfig(path="")


def test_json_logger_writes_through_fsspec_memory():
    path = "memory://lm-tests/json/m.jsonl"
    tracker = JsonLoggerConfig(path=path).init("run")
    tracker.log({"x": 0.5}, step=0)
    tracker.finish()
    assert read_json_log(path)[0]["metrics"]["x"] == 0.5


def test_default_path_is_in_run_dir(tmp_path):
    tracker = JsonLoggerConfig().init("abc", run_dir=str(tmp_path / "abc"))
    tracker.log({"x": 1}, step=0)
    tracker.finish()
    assert (tmp_path / "abc" / "metrics.jsonl").exists()


def test_module_level_log_goes_to_current_tracker(tmp_path):
    tracker = JsonLoggerConfig(path=str(tmp_path / "m.jsonl")).init("run")
    with CompositeTracker([NoopTracker(), tracker]):
        lm.tracker.log({"loss": 2.0}, step=3)
        assert lm.tracker.get_tracker("json") is tracker
        with pytest.raises(KeyError):
            lm.tracker.get_tracker("foo")
    tracker.finish()
    assert read_json_log(str(tmp_path / "m.jsonl"))[0]["step"] == 3


def test_log_inside_jit_is_captured_not_called_back():
    import jax

    def step(x):
        with lm.tracker.capture_metrics() as sink:
            lm.tracker.log({"inner/x2": x * 2})
        return x + 1, sink

    out, metrics = jax.jit(step)(jnp.float32(3.0))
    assert float(metrics["inner/x2"]) == 6.0


def test_no_active_tracker_is_a_clear_error():
    with pytest.raises(RuntimeError, match="No tracker is active"):
        lm.tracker.log({"x": 1}, step=0)


def test_finish_draws_the_training_curves_beside_the_log(tmp_path):
    tracker = JsonLoggerConfig().init("r1", run_dir=str(tmp_path / "r1"))
    for step in range(3):
        tracker.log({"train/loss": 3.0 - step, "optim/learning_rate": 0.1}, step=step)
    tracker.finish()
    assert (tmp_path / "r1" / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_no_plot_when_disabled_or_nothing_to_plot(tmp_path, caplog):
    tracker = JsonLoggerConfig(plot=False).init("r2", run_dir=str(tmp_path / "r2"))
    tracker.log({"train/loss": 1.0}, step=0)
    tracker.finish()
    assert not (tmp_path / "r2" / "curves.png").exists()
    tracker = JsonLoggerConfig().init("r3", run_dir=str(tmp_path / "r3"))
    tracker.log({"other": 1.0}, step=0)
    tracker.finish()
    assert not (tmp_path / "r3" / "curves.png").exists()
    assert "No training curves drawn" in caplog.text


def test_only_process_zero_writes(tmp_path, monkeypatch):
    import jax

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    tracker = JsonLoggerConfig().init("r4", run_dir=str(tmp_path / "r4"))
    assert isinstance(tracker, NoopTracker)
    assert not (tmp_path / "r4").exists()


def test_secrets_in_hparams_and_strings_are_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789")
    path = str(tmp_path / "m.jsonl")
    tracker = JsonLoggerConfig(path=path, plot=False).init("r")
    tracker.log_hyperparameters({"hf_token": "abc", "cmd": "run tok-0123456789"})
    tracker.log({"note": "tok-0123456789"}, step=0)
    tracker.finish()
    records = read_json_log(path)
    assert records[0]["hparams"] == {"hf_token": "***REDACTED***", "cmd": "run ***REDACTED***"}
    assert records[1]["metrics"]["note"] == "***REDACTED***"


def test_artifacts_are_copied_beside_the_log(tmp_path):
    src = tmp_path / "src_dir"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("password=hunter22hunter\n")
    tracker = JsonLoggerConfig(plot=False).init("r", run_dir=str(tmp_path / "run"))
    tracker.log_artifact(str(src), name="bundle", type="dir")
    tracker.finish()
    copied = tmp_path / "run" / "artifacts" / "bundle" / "sub" / "a.txt"
    assert copied.read_text() == "password=***REDACTED***\n"
    (event,) = [
        r
        for r in read_json_log(str(tmp_path / "run" / "metrics.jsonl"))
        if r["event"] == "artifact"
    ]
    assert event["path"] == str(tmp_path / "run" / "artifacts" / "bundle")
    assert (event["name"], event["type"]) == ("bundle", "dir")


def test_a_log_that_got_no_record_is_removed_with_the_folders_it_made(tmp_path):
    """A run that failed before its first record (a loss of the wrong shape at step 0) left
    <run_dir>/metrics.jsonl holding only a "finish" line."""
    path = tmp_path / "logs" / "run" / "metrics.jsonl"
    JsonLoggerConfig(path=str(path)).init("run").finish()
    assert not (tmp_path / "logs").exists()
    tracker = JsonLoggerConfig(path=str(path)).init("run")
    tracker.log({"x": 1.0}, step=0)
    tracker.finish()
    assert [r["event"] for r in read_json_log(str(path))] == ["log", "finish"]
    # a session that logs nothing but its hyperparameters (a resume refused before its first
    # step) leaves an existing log as it was: no hparams of a run that never was, no finish
    before = path.read_text()
    again = JsonLoggerConfig(path=str(path)).init("run")
    again.log_hyperparameters({"train_batch_size": 8})
    again.finish()
    assert path.read_text() == before
    # hparams are written ahead of the session's first record
    again = JsonLoggerConfig(path=str(path)).init("run")
    again.log_hyperparameters({"train_batch_size": 4})
    again.log({"x": 2.0}, step=1)
    again.finish()
    events = [r["event"] for r in read_json_log(str(path))]
    assert events == ["log", "finish", "hparams", "log", "finish"]
