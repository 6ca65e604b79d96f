"""The tracker registry, config decoding, composites and the current-tracker API."""

import dataclasses
from datetime import timedelta

import draccus
import pytest

import lm.tracker
from lm.tracker import (
    CompositeTracker,
    JsonLoggerConfig,
    NoopConfig,
    NoopTracker,
    TensorboardConfig,
    Tracker,
    TrackerConfig,
    WandbConfig,
    build_tracker,
    config_to_hparams,
    read_json_log,
)

TrackerField = TrackerConfig | tuple[TrackerConfig, ...]


def test_registered_tracker_types():
    assert set(TrackerConfig.get_known_choices()) == {"wandb", "tensorboard", "json", "noop"}
    assert TrackerConfig.get_choice_class("wandb") is WandbConfig
    assert TrackerConfig.get_choice_class("tensorboard") is TensorboardConfig
    with pytest.raises(KeyError):
        TrackerConfig.get_choice_class("foo")


def test_wandb_is_the_default_choice():
    assert draccus.decode(TrackerConfig, {"entity": "foo"}) == WandbConfig(entity="foo")
    assert draccus.decode(TrackerField, {"project": "p"}) == WandbConfig(project="p")


def test_type_selects_the_tracker():
    assert draccus.decode(TrackerConfig, {"type": "noop"}) == NoopConfig()
    assert draccus.decode(TrackerConfig, {"type": "tensorboard", "logdir": "tb"}) == (
        TensorboardConfig(logdir="tb")
    )
    assert draccus.decode(TrackerConfig, {"type": "json", "path": "m.jsonl"}) == (
        JsonLoggerConfig(path="m.jsonl")
    )


def test_a_list_decodes_to_a_tuple():
    decoded = draccus.decode(tuple[TrackerConfig, ...], [{"type": "noop"}, {"type": "wandb"}])
    assert decoded == (NoopConfig(), WandbConfig())
    union = draccus.decode(TrackerField, [{"type": "noop"}, {"type": "tensorboard"}])
    assert union == (NoopConfig(), TensorboardConfig())


def test_unknown_type_and_field_are_rejected():
    with pytest.raises(draccus.utils.DecodingError, match="tensorbord"):
        draccus.decode(TrackerConfig, {"type": "tensorbord"})
    with pytest.raises(draccus.utils.DecodingError, match="projet"):
        draccus.decode(TrackerConfig, {"projet": "x"})


@pytest.mark.parametrize(
    "config",
    [
        WandbConfig(project="p", tags=["a"], mode="offline", resume="never"),
        TensorboardConfig(logdir="tb", flush_interval_s=1.0),
        JsonLoggerConfig(path="x.jsonl", plot=False),
        NoopConfig(),
    ],
)
def test_configs_round_trip_through_draccus(config):
    encoded = draccus.encode(config, TrackerConfig)
    assert draccus.decode(TrackerConfig, encoded) == config


def test_composite_get_tracker(wandb_env, tmp_path):
    # REFERENCE_CASES §3: get_tracker finds trackers by registry name inside a composite.
    wandb_tracker = WandbConfig(mode="offline", save_dir=str(tmp_path), save_code=False).init("c1")
    with CompositeTracker([wandb_tracker, NoopTracker()]):
        assert lm.tracker.get_tracker("wandb") is wandb_tracker
        assert isinstance(lm.tracker.get_tracker("noop"), NoopTracker)
        with pytest.raises(KeyError):
            lm.tracker.get_tracker("foo")
    wandb_tracker.finish()


class Recorder(Tracker):
    name = "recorder"

    def __init__(self, fail_finish=False):
        self.calls = []
        self.fail_finish = fail_finish

    def log_hyperparameters(self, hparams):
        self.calls.append(("hparams", dict(hparams)))

    def log(self, metrics, *, step, commit=None):
        self.calls.append(("log", dict(metrics), step, commit))

    def log_summary(self, metrics):
        self.calls.append(("summary", dict(metrics)))

    def log_artifact(self, artifact_path, *, name=None, type=None):
        self.calls.append(("artifact", artifact_path, name, type))

    def finish(self):
        self.calls.append(("finish",))
        if self.fail_finish:
            raise RuntimeError("boom")


def test_composite_fans_out_every_call_and_finishes_all():
    a, b = Recorder(fail_finish=True), Recorder()
    composite = CompositeTracker([a, b])
    with composite:
        lm.tracker.log_hyperparameters({"lr": 1})
        lm.tracker.log({"x": 1}, step=5, commit=False)
        lm.tracker.log_summary({"y": 2})
    composite.log_artifact("/p", name="n", type="t")
    with pytest.raises(RuntimeError, match="boom"):
        composite.finish()
    expected = [
        ("hparams", {"lr": 1}),
        ("log", {"x": 1}, 5, False),
        ("summary", {"y": 2}),
        ("artifact", "/p", "n", "t"),
        ("finish",),
    ]
    assert a.calls == expected and b.calls == expected  # b finished despite a failing


def test_build_tracker_from_one_config_or_a_list(tmp_path):
    assert isinstance(build_tracker(NoopConfig(), "r"), NoopTracker)
    single = build_tracker((NoopConfig(),), "r")
    assert isinstance(single, NoopTracker)
    both = build_tracker((NoopConfig(), TensorboardConfig(logdir=str(tmp_path))), "r")
    assert isinstance(both, CompositeTracker)
    assert [t.name for t in both.trackers] == ["noop", "tensorboard"]
    both.finish()
    assert list((tmp_path / "r").glob("events.out.tfevents.*"))


def test_nested_with_blocks_restore_the_outer_tracker():
    outer, inner = Recorder(), Recorder()
    with outer:
        with inner:
            assert lm.tracker.current_tracker() is inner
        assert lm.tracker.current_tracker() is outer


@dataclasses.dataclass(frozen=True)
class _Inner:
    lr: float = 0.1
    every: timedelta = timedelta(minutes=15)


@dataclasses.dataclass(frozen=True)
class _RunConfig:
    tracker: TrackerConfig = dataclasses.field(default_factory=lambda: TensorboardConfig())
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    hf_token: str = "hf_" + "x" * 34
    seq_len: int = 64


def test_log_configuration_encodes_and_scrubs(tmp_path):
    hparams = config_to_hparams(_RunConfig())
    assert hparams["tracker"] == {"type": "tensorboard", "logdir": "logs", "flush_interval_s": 10.0}
    assert hparams["inner"]["lr"] == 0.1 and hparams["seq_len"] == 64
    tracker = JsonLoggerConfig(path=str(tmp_path / "m.jsonl"), plot=False).init("r")
    tracker.log_configuration(_RunConfig())
    tracker.finish()
    logged = read_json_log(str(tmp_path / "m.jsonl"))[0]["hparams"]
    assert logged["hf_token"] == "***REDACTED***"
    assert logged["inner"]["lr"] == 0.1
    with pytest.raises(TypeError, match="dataclass or a mapping"):
        config_to_hparams(42)


def test_importing_lm_tracker_is_cheap_and_side_effect_free(subprocess_env):
    import subprocess
    import sys

    code = (
        "import logging, sys, lm.tracker\n"
        "heavy = [m for m in ('wandb', 'tensorboard', 'matplotlib', 'tqdm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def no_tensorboard(monkeypatch):
    """`tensorboard` looks uninstalled to `importlib.util.find_spec`."""
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] == "tensorboard" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_tensorboard_is_reported_at_the_trackers_type(no_tensorboard):
    """Found when the config is parsed, at `trainer.tracker.type`, with the install hint;
    not when the tracker starts (after Ray, the data cache and the model)."""
    import lm.config
    from lm.trainer import TrainerConfig

    with pytest.raises(lm.config.FieldError, match=r"pip install 'lm\[profiling\]'") as error:
        TensorboardConfig()
    assert error.value.field == "type"

    for tracker, where in [
        ({"type": "tensorboard", "logdir": "tb"}, "trainer.tracker.type"),
        ([{"type": "json"}, {"type": "tensorboard"}], "trainer.tracker[1].type"),
    ]:
        with pytest.raises(lm.config.ConfigError) as error:
            lm.config.decode(TrainerConfig, {"tracker": tracker}, path="trainer")
        problems = error.value.problems
        assert [p.path for p in problems] == [where], problems
        assert "needs the `tensorboard` package" in problems[0].message
        assert "pip install 'lm[profiling]'" in problems[0].message
    # the other trackers do not need it
    assert lm.config.decode(TrainerConfig, {"tracker": {"type": "json"}}, path="trainer")
