"""TensorBoard tracker, read back with TensorBoard's own event reader."""

import jax.numpy as jnp
import numpy as np
import pytest

import lm.config
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
    with pytest.raises(ValueError, match="^flush_interval_s: must be >= 0"):
        TensorboardConfig(flush_interval_s=-1)
    with pytest.raises(ValueError, match="^logdir: must be a non-empty path"):
        TensorboardConfig(logdir="")
    with pytest.raises(lm.config.ConfigProblems) as both:  # reported together
        TensorboardConfig(logdir="", flush_interval_s=-1)
    assert [p.path for p in both.value.problems] == ["logdir", "flush_interval_s"]


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


# --- a resumed run: TensorBoard's restart marker -------------------------------------------


def _session_starts(path) -> list[int]:
    """Steps of the SessionLog START events in every event file under `path`, in file order."""
    from tensorboard.backend.event_processing import event_file_loader

    steps = []
    for f in sorted(path.glob("events.out.tfevents.*")):
        for event in event_file_loader.EventFileLoader(str(f)).Load():
            if event.HasField("session_log"):
                assert event.session_log.status == event.session_log.START
                steps.append(event.step)
    return steps


def _scalars(path, tag) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of `tag` as each of TensorBoard's readers shows it: the classic
    EventAccumulator and the plugin one its server falls back to."""
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.util import tensor_util

    plugin = plugin_event_accumulator.EventAccumulator(
        str(path), size_guidance={plugin_event_accumulator.TENSORS: 0}
    )
    plugin.Reload()
    return {
        "classic": [(e.step, e.value) for e in load(path).Scalars(tag)],
        "plugin": [
            (e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in plugin.Tensors(tag)
        ],
    }


def test_a_resumed_session_replaces_the_points_it_logs_again(tmp_path):
    """A run logged steps 0-9 and is resumed from its checkpoint after step 5: the new
    session redoes step 5's evaluation, then trains from step 6 on. TensorBoard shows each
    training step once, the resumed session's value from step 6 on."""
    first = TensorboardTracker(str(tmp_path / "tb"), flush_interval_s=0.0)
    first.log_hyperparameters({"seed": 0})
    for step in range(10):
        first.log({"train/loss": float(step)}, step=step)
    first.finish()

    resumed = TensorboardTracker(str(tmp_path / "tb"), flush_interval_s=0.0)
    resumed.log_hyperparameters({"seed": 0})
    resumed.log({"eval/loss": 5.0}, step=5)  # the redone evaluation of the restored step
    for step in range(6, 12):
        resumed.log({"train/loss": 100.0 + step}, step=step)
    resumed.finish()

    assert _session_starts(tmp_path / "tb") == [0, 6]
    expected = [(step, float(step)) for step in range(6)]
    expected += [(step, 100.0 + step) for step in range(6, 12)]
    assert _scalars(tmp_path / "tb", "train/loss") == {"classic": expected, "plugin": expected}
    assert _scalars(tmp_path / "tb", "eval/loss")["plugin"] == [(5, 5.0)]
    assert len(load(tmp_path / "tb").Tensors("_hparams_/session_start_info")) == 2


def test_a_restart_from_step_0_keeps_its_hyperparameters(tmp_path):
    """A run killed before its first checkpoint starts over at step 0: the marker drops the
    whole earlier session, and the new session's hyperparameters are written again after it."""
    from tensorboard.backend.event_processing import plugin_event_accumulator

    first = TensorboardTracker(str(tmp_path / "tb"), flush_interval_s=0.0)
    first.log_hyperparameters({"seed": 0})
    for step in range(3):
        first.log({"train/loss": 9.0}, step=step)
    first.finish()
    again = TensorboardTracker(str(tmp_path / "tb"), flush_interval_s=0.0)
    again.log_hyperparameters({"seed": 1})
    for step in range(2):
        again.log({"train/loss": 1.0}, step=step)
    again.finish()

    assert _session_starts(tmp_path / "tb") == [0, 0]
    expected = [(0, 1.0), (1, 1.0)]
    assert _scalars(tmp_path / "tb", "train/loss") == {"classic": expected, "plugin": expected}
    # the plugin reader drops tensors too (the hparams plugin's are tensors)
    acc = plugin_event_accumulator.EventAccumulator(
        str(tmp_path / "tb"), size_guidance={plugin_event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    assert [e.step for e in acc.Tensors("_hparams_/session_start_info")] == [0]
    (text,) = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("hparams")]
    assert '"seed": 1' in text


def test_no_restart_without_training(tmp_path):
    """`eval_lm` logging a checkpoint's evaluation into the training run's directory trains
    nothing: it must not drop the run's points after that step."""
    run = TensorboardTracker(str(tmp_path / "tb"), flush_interval_s=0.0)
    for step in range(10):
        run.log({"train/loss": float(step)}, step=step)
    run.finish()
    evaluation = TensorboardTracker(str(tmp_path / "tb"), flush_interval_s=0.0)
    evaluation.log({"eval/loss": 2.5}, step=4)
    evaluation.finish()

    assert _session_starts(tmp_path / "tb") == [0]
    steps = {k: [s for s, _ in v] for k, v in _scalars(tmp_path / "tb", "train/loss").items()}
    assert steps == {"classic": list(range(10)), "plugin": list(range(10))}


def test_a_trainer_resumed_from_a_checkpoint_logs_each_step_once(tmp_path):
    """End to end: a run stopped after step 7 resumes from its step-5 checkpoint and trains
    steps 6 and 7 again; TensorBoard shows steps 0-9 once each (without the marker, 12)."""
    import equinox as eqx
    import haliax as hax
    import jax
    import optax

    from lm.checkpoint import CheckpointerConfig
    from lm.data import ListDataset
    from lm.trainer import Callback, Trainer, TrainerConfig

    X = hax.Axis("x", 4)

    class Linear(eqx.Module):
        w: hax.NamedArray

    class Example(eqx.Module):
        x: hax.NamedArray
        y: hax.NamedArray

    def loss(model, batch):
        err = hax.dot(batch.x, model.w, axis=X) - batch.y
        return hax.mean(err * err).scalar()

    rng = np.random.default_rng(0)
    data = ListDataset(
        [
            Example(
                x=hax.named(jnp.asarray(rng.normal(size=4), jnp.float32), (X,)),
                y=hax.named(jnp.float32(rng.normal()), ()),
            )
            for _ in range(96)
        ]
    )
    config = TrainerConfig(
        num_train_steps=10,
        train_batch_size=8,
        steps_per_eval=100,
        require_accelerator=False,
        tracker=TensorboardConfig(logdir=str(tmp_path / "tb"), flush_interval_s=0.0),
        log_dir=tmp_path / "logs",
        id="resumed",
        checkpointer=CheckpointerConfig(base_path=str(tmp_path / "ckpt"), keep=[{"every": 5}]),
    )

    class StopAfterStep7(Callback):
        def on_step(self, info, force=False):
            if info.step == 7:
                raise RuntimeError("stopped after step 7")

    def run(stop: bool):
        trainer = Trainer(config, optax.sgd(0.1), loss)
        if stop:
            trainer.add_hook(StopAfterStep7())
        with trainer:
            state = trainer.initial_state(jax.random.PRNGKey(0), model=Linear(hax.zeros(X)))
            trainer.train(state, trainer.data_loader(data))

    with pytest.raises(RuntimeError, match="stopped after step 7"):
        run(stop=True)
    assert (tmp_path / "ckpt" / "resumed" / "step-5").is_dir()
    run(stop=False)

    run_dir = tmp_path / "tb" / "resumed"
    assert _session_starts(run_dir) == [0, 6]
    steps = {k: [s for s, _ in v] for k, v in _scalars(run_dir, "train/loss").items()}
    assert steps == {"classic": list(range(10)), "plugin": list(range(10))}
