import jax.numpy as jnp
import pytest

import lm.tracker
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
