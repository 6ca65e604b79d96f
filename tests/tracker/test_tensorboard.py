"""TensorBoard tracker, read back with TensorBoard's own event reader."""

import jax.numpy as jnp
import numpy as np
import pytest

from lm.tracker import Histogram, TensorboardConfig, TensorboardTracker

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402


def load(path):
    acc = event_accumulator.EventAccumulator(
        str(path), size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0}
    )
    acc.Reload()
    return acc


def text_of(acc, tag):
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)]


def test_reference_case_accepts_every_value_type(tmp_path):
    # REFERENCE_CASES §3: log and log_summary take a float, a str, a 0-d jax array, a 0-d
    # numpy array and a Histogram.
    tracker = TensorboardConfig(logdir=str(tmp_path)).init("run")
    values = {
        "float": 2.0,
        "str": "hello",
        "scalar_jax_array": jnp.array(1.5),
        "scalar_np_array": np.array(3.0),
        "histogram": Histogram.from_array(np.arange(10.0), num_bins=4),
    }
    tracker.log(values, step=1)
    tracker.log_summary({f"summary_{k}": v for k, v in values.items()})
    tracker.finish()

    acc = load(tmp_path / "run")
    tags = acc.Tags()
    assert set(tags["scalars"]) == {
        "float",
        "scalar_jax_array",
        "scalar_np_array",
        "summary_float",
        "summary_scalar_jax_array",
        "summary_scalar_np_array",
    }
    assert [(e.step, e.value) for e in acc.Scalars("scalar_jax_array")] == [(1, 1.5)]
    assert acc.Scalars("scalar_np_array")[0].value == 3.0
    assert set(tags["histograms"]) == {"histogram", "summary_histogram"}
    assert text_of(acc, "str") == ["hello"]
    assert text_of(acc, "summary_str") == ["hello"]


def test_scalars_histograms_and_text_read_back(tmp_path):
    tracker = TensorboardTracker(str(tmp_path / "tb"), flush_interval_s=0.0)
    for step in range(3):
        tracker.log({"train/loss": 4.0 - step}, step=step)
    values = np.array([0.5, 1.5, 1.7, 2.5, 3.5, 3.9])
    tracker.log({"params/w": Histogram.from_array(values, num_bins=3)}, step=2)
    tracker.log({"params/raw": values}, step=2)  # arrays become histograms too
    tracker.log({"samples/text": "the cat"}, step=2)
    tracker.finish()

    acc = load(tmp_path / "tb")
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(0, 4.0), (1, 3.0), (2, 2.0)]
    (hist,) = acc.Histograms("params/w")
    counts, edges = np.histogram(values, bins=3)
    h = hist.histogram_value
    assert (hist.step, h.min, h.max, h.num) == (2, 0.5, 3.9, 6)
    assert h.sum == pytest.approx(values.sum(), rel=1e-6)
    assert h.sum_squares == pytest.approx((values**2).sum(), rel=1e-6)
    assert list(h.bucket) == counts.tolist()
    assert list(h.bucket_limit) == pytest.approx(edges[1:].tolist())
    assert acc.Histograms("params/raw")[0].histogram_value.num == 6
    assert text_of(acc, "samples/text") == ["the cat"]


def test_hyperparameters_are_written_for_the_hparams_plugin(tmp_path):
    tracker = TensorboardTracker(str(tmp_path / "tb"))
    tracker.log_hyperparameters(
        {"optimizer": {"learning_rate": 3e-4, "type": "adam"}, "seed": 0, "tags": ["a"]}
    )
    tracker.finish()
    acc = load(tmp_path / "tb")
    (event,) = acc.Tensors("_hparams_/session_start_info")
    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["optimizer/learning_rate"].number_value == pytest.approx(3e-4)
    assert info.hparams["optimizer/type"].string_value == "adam"
    assert info.hparams["seed"].number_value == 0
    assert info.hparams["tags"].string_value == '["a"]'
    assert '"learning_rate": 0.0003' in text_of(acc, "hparams")[0]


def test_artifacts_are_copied_into_the_logdir(tmp_path):
    src = tmp_path / "report.txt"
    src.write_text("hello\n")
    tracker = TensorboardTracker(str(tmp_path / "tb"))
    tracker.log_artifact(str(src), name="report.txt")
    tracker.finish()
    assert (tmp_path / "tb" / "artifacts" / "report.txt").read_text() == "hello\n"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        tracker.log_artifact(str(tmp_path / "missing.txt"))


def test_unsupported_values_warn_once(tmp_path, caplog):
    tracker = TensorboardTracker(str(tmp_path / "tb"))
    tracker.log({"obj": object()}, step=0)
    tracker.log({"obj": object()}, step=1)
    tracker.finish()
    assert caplog.text.count("TensorBoard cannot show 'obj'") == 1


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="tracker.flush_interval_s must be >= 0"):
        TensorboardConfig(flush_interval_s=-1)
    with pytest.raises(ValueError, match="tracker.logdir must be a non-empty path"):
        TensorboardConfig(logdir="")


def test_missing_tensorboard_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ImportError, match=r"pip install 'lm\[profiling\]'"):
        TensorboardConfig(logdir="unused").init("run")
