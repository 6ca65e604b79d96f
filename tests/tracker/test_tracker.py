"""The tracker registry, config decoding, composites and the current-tracker API."""

import dataclasses
import logging
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

    def __init__(self, fail_finish=False, fail_at_step=None):
        self.calls = []
        self.fail_finish = fail_finish
        self.fail_at_step = fail_at_step

    def log_hyperparameters(self, hparams):
        self.calls.append(("hparams", dict(hparams)))

    def log(self, metrics, *, step, commit=None):
        if step == self.fail_at_step:
            raise OSError(28, "No space left on device")
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
    with pytest.raises(RuntimeError, match="boom"):  # not an output failure: a bug, raised
        composite.finish()
    assert composite.failures == []
    expected = [
        ("hparams", {"lr": 1}),
        ("log", {"x": 1}, 5, False),
        ("summary", {"y": 2}),
        ("artifact", "/p", "n", "t"),
        ("finish",),
    ]
    assert a.calls == expected and b.calls == expected  # b finished despite a failing


def test_a_tracker_that_fails_is_dropped_and_the_others_go_on(caplog):
    """A full disk under the JSON log or a W&B service that died ended the run with a
    traceback (and finish() raised again over it); now the tracker is dropped, loudly."""
    full, ok = Recorder(fail_at_step=2), Recorder()
    composite = CompositeTracker([full, ok], names=["trainer.tracker[0]", "trainer.tracker[1]"])
    with caplog.at_level(logging.ERROR, logger="lm.tracker.base"):
        for step in range(4):
            composite.log({"loss": 1.0}, step=step)
        composite.finish()
    assert [c[2] for c in ok.calls if c[0] == "log"] == [0, 1, 2, 3]
    assert full.calls == [("log", {"loss": 1.0}, 0, None), ("log", {"loss": 1.0}, 1, None)] + [
        ("finish",)
    ]  # finished once, when dropped
    assert composite.trackers == [ok] and ok.calls[-1] == ("finish",)
    failure = (
        "trainer.tracker[0] (recorder) failed logging step 2: OSError: [Errno 28] No space "
        "left on device"
    )
    assert composite.failures == [failure]
    assert [r.getMessage() for r in caplog.records] == [
        f"{failure}. It is dropped and the run goes on without it (the other trackers go on)"
    ]
    bug = Recorder()
    bug.log = lambda metrics, *, step, commit=None: (_ for _ in ()).throw(TypeError("a dict?"))
    with pytest.raises(TypeError, match="a dict"):  # not an output failure: raised, kept
        CompositeTracker([bug]).log({"x": {}}, step=0)
    alone = CompositeTracker([Recorder(fail_at_step=0)])
    with caplog.at_level(logging.ERROR, logger="lm.tracker.base"):
        alone.log({"loss": 1.0}, step=0)
    assert "no tracker is left, so the run's metrics are no longer recorded" in (
        caplog.records[-1].getMessage()
    )


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
    tracker.log({"loss": 1.0}, step=0)  # (hparams wait for the session's first record)
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


# --- where trackers write: a file in the way, two trackers writing to one place -------------


@pytest.fixture
def afile(tmp_path):
    """An existing file, where a tracker's output folder would have to be."""
    path = tmp_path / "afile"
    path.write_text("keep me")
    return path


@pytest.mark.parametrize(
    "make_tracker, where, message",
    [
        (
            lambda f: {"type": "json", "path": f"{f}/m.jsonl"},
            "trainer.tracker.path",
            "cannot write the metrics log to {f}/m.jsonl: {f} is a file, not a directory. "
            "Choose another path, or move the file away",
        ),
        (
            lambda f: {"type": "json", "path": f"{f}/{{run_id}}/m.jsonl"},
            "trainer.tracker.path",
            "cannot write the metrics log to {f}/{{run_id}}/m.jsonl: {f} is a file, not a "
            "directory. Choose another path, or move the file away",
        ),
        (
            lambda f: {"type": "json", "path": str(f.parent)},
            "trainer.tracker.path",
            "cannot write the metrics log to {d}: it is a directory. Give the file to write, "
            "e.g. {d}/metrics.jsonl",
        ),
        (
            lambda f: {"type": "tensorboard", "logdir": f"{f}/tb"},
            "trainer.tracker.logdir",
            "cannot write TensorBoard events: {f}/tb cannot be a directory: {f}, on its path, "
            "is a file. Choose another logdir, or move the file away",
        ),
        (
            lambda f: {"type": "wandb", "mode": "offline", "save_dir": f"{f}/x"},
            "trainer.tracker.save_dir",
            "W&B cannot write its run files: {f}/x cannot be a directory: {f}, on its path, is "
            "a file. Choose another save_dir, or move the file away",
        ),
        (
            lambda f: {"type": "wandb", "save_dir": str(f)},
            "trainer.tracker.save_dir",
            "W&B cannot write its run files: {f} is a file, not a directory. Choose another "
            "save_dir, or move the file away",
        ),
        (
            lambda f: [{"type": "json"}, {"type": "tensorboard", "logdir": f"{f}/tb"}],
            "trainer.tracker[1].logdir",
            "cannot write TensorBoard events: {f}/tb cannot be a directory: {f}, on its path, "
            "is a file. Choose another logdir, or move the file away",
        ),
    ],
    ids=["json", "json_run_id", "json_dir", "tensorboard", "wandb", "wandb_file", "list"],
)
def test_an_output_path_through_a_file_is_a_config_error_at_its_field(
    afile, make_tracker, where, message
):
    """Found when the config is parsed, before the run writes anything (not as the OS error
    `[Errno 17] File exists` once the run has built its data and model)."""
    import lm.config
    from lm.trainer import TrainerConfig

    with pytest.raises(lm.config.ConfigError) as error:
        lm.config.decode(TrainerConfig, {"tracker": make_tracker(afile)}, path="trainer")
    (problem,) = error.value.problems
    assert problem.path == where
    assert problem.message == message.format(f=afile, d=afile.parent)
    assert afile.read_text() == "keep me"


def test_a_tracker_path_error_stops_train_lm_before_it_runs(afile, capsys):
    import lm.config
    from lm.main.train_lm import TrainLmConfig

    def never(config: TrainLmConfig):
        raise AssertionError("the run started")

    tracker = f"{{type: tensorboard, logdir: {afile}/tb}}"
    with pytest.raises(SystemExit) as exit_info:
        lm.config.main(never)(args=["--trainer.tracker", tracker])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "trainer.tracker.logdir" in err
    assert f"{afile}/tb cannot be a directory: {afile}, on its path, is a file" in err


def test_a_json_path_with_another_placeholder_is_a_config_error():
    import lm.config

    with pytest.raises(lm.config.FieldError) as error:
        JsonLoggerConfig(path="logs/{run}/m.jsonl")
    assert (error.value.field, error.value.message) == (
        "path",
        "'logs/{run}/m.jsonl' has the placeholder {run}: only {run_id} is replaced; write {{ "
        "and }} for a literal brace",
    )


def test_an_output_path_of_the_run_id_through_a_file_is_found_before_any_tracker_starts(
    tmp_path,
):
    """`<logdir>/<run_id>` is known only once the run id is: checked when the trackers are
    built, before the first one starts."""
    from lm.config import SetupConfigError

    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "r1").write_text("keep me")
    configs = (
        JsonLoggerConfig(path=str(tmp_path / "m.jsonl")),
        TensorboardConfig(str(tmp_path / "tb")),
    )
    with pytest.raises(SetupConfigError) as error:
        build_tracker(configs, "r1")
    assert str(error.value) == (
        f"trainer.tracker[1].logdir: cannot write TensorBoard events: {tmp_path}/tb/r1 is a "
        "file, not a directory. Choose another logdir, or move the file away"
    )
    assert not (tmp_path / "m.jsonl").exists()  # nothing started


def test_an_os_error_starting_a_tracker_names_its_field(tmp_path):
    """A location only the filesystem can refuse (here an fsspec memory URL through a file):
    a TrackerInitError naming the field, and the trackers already started are finished."""
    import fsspec

    from lm.tracker import TrackerInitError

    fs = fsspec.filesystem("memory")
    with fs.open("/trk/afile", "wb") as f:
        f.write(b"x")
    configs = (
        JsonLoggerConfig(path=str(tmp_path / "m.jsonl"), plot=False),
        TensorboardConfig(logdir="memory://trk/afile/tb"),
    )
    try:
        with pytest.raises(TrackerInitError) as error:
            build_tracker(configs, "r1")
    finally:
        fs.rm("/trk", recursive=True)
    assert str(error.value) == (
        "trainer.tracker[1].logdir: the tensorboard tracker could not create its output under "
        "'memory://trk/afile/tb' (NotADirectoryError: /trk/afile); choose another logdir or "
        "fix its permissions"
    )
    # the JSON log started first was finished: it got no record, so it is gone again
    assert not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize(
    "make_configs, message",
    [
        (
            lambda tmp: (JsonLoggerConfig(), JsonLoggerConfig(plot=False)),
            "trainer.tracker[0] and trainer.tracker[1] both write JSON lines to "
            "{run_dir}/metrics.jsonl: every record would be written there twice. Remove one of "
            "them, or give one another `path`",
        ),
        (
            lambda tmp: (
                JsonLoggerConfig(path=f"{tmp}/m.jsonl"),
                NoopConfig(),
                JsonLoggerConfig(path=f"{tmp}/sub/../m.jsonl"),
            ),
            "trainer.tracker[0] and trainer.tracker[2] both write JSON lines to {tmp}/m.jsonl: "
            "every record would be written there twice. Remove one of them, or give one "
            "another `path`",
        ),
        (
            lambda tmp: (TensorboardConfig(logdir=f"{tmp}/tb"), TensorboardConfig(f"{tmp}/tb/")),
            "trainer.tracker[0] and trainer.tracker[1] both write TensorBoard events to "
            "{tmp}/tb/r1: TensorBoard would show every point twice. Remove one of them, or "
            "give one another `logdir`",
        ),
        (
            lambda tmp: (WandbConfig(project="a"), WandbConfig(project="b", mode="offline")),
            "trainer.tracker[0] and trainer.tracker[1] both write to W&B: a process holds one "
            "W&B run, and starting a second one finishes the first. Keep one W&B tracker",
        ),
    ],
    ids=["json_default", "json_same_file", "tensorboard", "wandb"],
)
def test_two_trackers_writing_to_one_place_are_a_config_error(tmp_path, make_configs, message):
    from lm.config import SetupConfigError

    run_dir = tmp_path / "logs" / "r1"
    with pytest.raises(SetupConfigError) as error:
        build_tracker(make_configs(tmp_path), "r1", run_dir=str(run_dir))
    assert str(error.value) == message.format(tmp=tmp_path, run_dir=run_dir)
    assert not list(tmp_path.rglob("*"))  # no tracker started


def test_trackers_writing_to_different_places_may_share_a_list(tmp_path):
    configs = (
        NoopConfig(),
        NoopConfig(),
        JsonLoggerConfig(plot=False),
        JsonLoggerConfig(path=str(tmp_path / "copy.jsonl"), plot=False),
        TensorboardConfig(logdir=str(tmp_path / "tb")),
        TensorboardConfig(logdir=str(tmp_path / "tb2")),
    )
    tracker = build_tracker(configs, "r1", run_dir=str(tmp_path / "logs" / "r1"))
    tracker.log({"x": 1.0}, step=0)
    tracker.finish()
    assert (tmp_path / "logs" / "r1" / "metrics.jsonl").exists()
    assert (tmp_path / "copy.jsonl").exists()


def test_a_trainer_with_the_json_tracker_twice_stops_before_writing(tmp_path):
    """`--trainer.tracker '[{type: json}, {type: json}]'` used to write every record twice
    into one metrics.jsonl."""
    import optax

    from lm.config import SetupConfigError
    from lm.trainer import Trainer, TrainerConfig

    config = TrainerConfig(
        tracker=(JsonLoggerConfig(), JsonLoggerConfig()),
        log_dir=tmp_path / "logs",
        id="twice",
        require_accelerator=False,
    )
    trainer = Trainer(config, optax.identity(), lambda model, batch: 0.0)
    with pytest.raises(SetupConfigError, match=r"trainer.tracker\[0\] and trainer.tracker\[1\]"):
        trainer.tracker  # noqa: B018 (builds the trackers)
    assert not (tmp_path / "logs" / "twice" / "metrics.jsonl").exists()
