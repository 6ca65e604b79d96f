"""Command line: `parse`, overrides, `main` (exit code 2, stderr, no traceback), `--help`."""

import dataclasses
import subprocess
import sys
import textwrap
import warnings

import pytest
from config_schemas import (
    LlamaCfg,
    NoopCfg,
    SimpleCfg,
    TensorboardCfg,
    TrainCfg,
    WandbCfg,
)

import lm.config
from lm.config import ConfigError, parse


def test_overrides_without_a_file():
    cfg = parse(
        TrainCfg, args=["--trainer.num_train_steps", "10", "--optimizer.learning_rate=3e-4"]
    )
    assert cfg.trainer.num_train_steps == 10
    assert cfg.optimizer.learning_rate == 3e-4


def test_override_values_are_yaml(tmp_path):
    cfg = parse(
        TrainCfg,
        args=[
            "--trainer.local_device_ids", "[1,2]",
            "--trainer.fsdp_axis", "null",
            "--trainer.mp", "p=f32,c=bfloat16",
            "--trainer.tracker", "[{type: noop}, {type: tensorboard, logdir: x}]",
            "--trainer.save_interval", "1h",
            "--trainer.id", "12345",
            "--data.tokenizer=",
        ],
    )  # fmt: skip
    assert cfg.trainer.local_device_ids == [1, 2]
    assert cfg.trainer.fsdp_axis is None
    assert str(lm.config.format_policy(cfg.trainer.mp)) == "p=f32,c=bf16,o=bf16"
    assert cfg.trainer.tracker == (NoopCfg(), TensorboardCfg(logdir="x"))
    assert cfg.trainer.save_interval.total_seconds() == 3600
    assert cfg.trainer.id == "12345"
    assert cfg.data.tokenizer == ""


def test_overrides_win_over_the_file_and_keep_siblings(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: {type: gpt2, hidden_dim: 64, num_heads: 4}\n"
        "trainer:\n  num_train_steps: 100\n  seed: 5\n  tracker: [{type: wandb, project: a}]\n"
    )
    cfg = parse(
        TrainCfg,
        str(path),
        [
            "--trainer.num_train_steps", "7",
            "--model.type", "llama",
            "--model.num_kv_heads", "2",
            "--trainer.tracker[0].project", "b",
        ],
    )  # fmt: skip
    assert cfg.trainer.num_train_steps == 7 and cfg.trainer.seed == 5
    assert cfg.model == LlamaCfg(hidden_dim=64, num_heads=4, num_kv_heads=2)
    assert cfg.trainer.tracker == (WandbCfg(project="b"),)


def test_config_path_argument_wins(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("project: a\n")
    b.write_text("project: b\n")
    assert parse(SimpleCfg, str(a), ["--config_path", str(b)]).project == "b"
    assert parse(SimpleCfg, args=[f"--config_path={a}"]).project == "a"


def test_override_problems_are_aggregated_with_locations(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  seed: x\n  tracker: [{type: noop}]\n")
    with pytest.raises(ConfigError) as info:
        parse(
            TrainCfg,
            str(path),
            [
                "--trainer.num_train_step", "3",
                "--trainer.tracker.project", "p",
                "--optimizer.warmup", "[1",
                "positional",
                "--model.hidden_dim",
            ],
        )  # fmt: skip
    err = info.value
    assert err.source == str(path)
    found = {(p.path, p.location): p.message for p in err.problems if p.path}
    argument_problems = [p.message for p in err.problems if not p.path]
    assert argument_problems[0].startswith("unexpected argument 'positional'")
    assert (
        argument_problems[1] == "--model.hidden_dim needs a value, like `--model.hidden_dim VALUE`"
    )
    assert (
        "trainer.tracker is a list in the config, not a mapping"
        in found[("trainer.tracker", "--trainer.tracker.project p")]
    )
    assert found[("optimizer.warmup", "--optimizer.warmup [1")].startswith(
        "cannot parse the value '[1' as YAML"
    )
    assert found[("optimizer.warmup", "--optimizer.warmup [1")].endswith(
        """; for a string, quote it inside the shell's quotes: --optimizer.warmup '"[1"'"""
    )
    assert found[("trainer.seed", f"{path}:2")] == "expected an integer, got 'x' (a string)"
    assert found[("trainer.num_train_step", "--trainer.num_train_step 3")].endswith(
        "did you mean `num_train_steps`?"
    )
    text = str(err)
    assert text.startswith(f"Invalid configuration in {path} (")


def test_an_unknown_section_written_only_by_an_override_names_the_override():
    with pytest.raises(ConfigError) as info:
        parse(TrainCfg, args=["--trainr.num_train_steps", "2"])
    (problem,) = info.value.problems
    assert (problem.path, problem.location) == ("trainr", "--trainr.num_train_steps 2")
    assert problem.message.endswith("did you mean `trainer`?")


def test_override_index_out_of_range():
    with pytest.raises(ConfigError, match=r"trainer.tracker has 1 items"):
        parse(TrainCfg, args=["--trainer.tracker", "[{type: noop}]", "--trainer.tracker[3].x", "1"])


def test_a_yaml_problem_stops_before_decoding(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trainer: [\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        parse(TrainCfg, str(path), ["--trainer.seed", "1"])


def test_config_flag_suggests_config_path():
    with pytest.raises(ConfigError, match="did you mean --config_path"):
        parse(SimpleCfg, args=["--config", "x.yaml"])


def test_config_path_twice_or_empty_is_an_error(tmp_path):
    """The first of two files used to be dropped silently."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("project: a\n")
    b.write_text("project: b\n")
    with pytest.raises(
        ConfigError, match=r"--config_path is given twice \(.*a.yaml and .*b.yaml\)"
    ):
        parse(SimpleCfg, args=["--config_path", str(a), "--config_path", str(b)])
    with pytest.raises(ConfigError, match="--config_path needs a file"):
        parse(SimpleCfg, args=["--config_path="])
    assert parse(SimpleCfg, args=["--config_path", str(a), f"--config_path={a}"]).project == "a"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_a_config_file_without_settings_is_an_error_not_all_defaults(tmp_path, text):
    """An empty run.yaml (a wrong file, an unsaved editor buffer) used to start a run on every
    default (for train_lm: 400,000 steps at batch 512)."""
    empty = tmp_path / "run.yaml"
    empty.write_text(text)
    with pytest.raises(ConfigError) as info:
        parse(SimpleCfg, args=["--config_path", str(empty), "--project", "p"])
    assert f"{empty} holds no settings (it is empty, or only comments)" in str(info.value)
    assert "leave out --config_path to start from the defaults" in str(info.value)
    assert parse(SimpleCfg, args=["--project", "p"]).project == "p"  # no file: the defaults


SCRIPT = textwrap.dedent(
    """
    import dataclasses
    import lm.config

    @dataclasses.dataclass(frozen=True)
    class Inner:
        rate: float = 0.1
        \"\"\"How fast.\"\"\"

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        \"\"\"A tiny entry config.\"\"\"
        steps: int = 3
        \"\"\"Number of steps to run.\"\"\"
        inner: Inner = dataclasses.field(default_factory=Inner)

    def run(config: Cfg):
        print("RAN", config.steps, config.inner.rate)

    if __name__ == "__main__":
        lm.config.main(run)()
    """
)


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("entry") / "entry.py"
    path.write_text(SCRIPT)
    return path


def run_script(script, subprocess_env, *args):
    return subprocess.run(
        [sys.executable, str(script), *args],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_main_exit_code_2_on_bad_config(script, subprocess_env, tmp_path):
    out_file = tmp_path / "out.yaml"
    proc = run_script(script, subprocess_env, "--steps", "many", "--inner.rat", "1", "--x", "1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "RAN" not in proc.stdout
    assert "steps [--steps many]: expected an integer, got 'many' (a string)" in proc.stderr
    assert "inner.rat [--inner.rat 1]: unknown field `rat` for Inner; did you mean `rate`?" in (
        proc.stderr
    )
    assert "Invalid configuration (3 problems):" in proc.stderr
    assert not out_file.exists()


def test_main_runs_with_overrides(script, subprocess_env):
    proc = run_script(script, subprocess_env, "--steps=5", "--inner.rate", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "RAN 5 2.0"


def test_main_help(script, subprocess_env):
    proc = run_script(script, subprocess_env, "--help")
    assert proc.returncode == 0
    assert "usage:" in proc.stdout and "--config_path PATH" in proc.stdout
    assert "A tiny entry config." in proc.stdout
    assert "  steps: int = 3\n      Number of steps to run." in proc.stdout
    assert "  inner: Inner\n    rate: float = 0.1\n        How fast." in proc.stdout


def test_main_in_process_exits_2_and_prints_to_stderr(capsys):
    def entry(config: SimpleCfg):
        raise AssertionError("must not run")

    with pytest.raises(SystemExit) as info:
        lm.config.main(entry)(args=["--x", "nope"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "x [--x nope]: expected an integer, got 'nope' (a string)" in err


def test_main_requires_an_annotated_config_parameter():
    def no_annotation(config):
        pass

    with pytest.raises(TypeError, match="needs a config class annotation"):
        lm.config.main(no_annotation)


def test_help_lists_choices_and_nested_defaults():
    text = lm.config.format_help(TrainCfg, prog="train")
    assert text.startswith("usage: train [--config_path PATH]")
    assert "  model: ModelCfg  (type: gpt2 | llama)" in text
    assert "  optimizer: OptimizerCfg  (type: adam | lion; default adam)" in text
    assert "    type: adam\n    learning_rate: float = 0.0006\n        Peak learning rate." in text
    # a union whose default is a config: the default's fields are listed under it
    assert (
        "    tracker: TrackerCfg | tuple[TrackerCfg, ...]  (default: WandbCfg, fields below)  "
        "(type: noop | tensorboard | wandb; default wandb)\n"
        "        One tracker, or a list of them.\n      type: wandb\n      project: str | None = null"
    ) in text
    assert "    save_interval: timedelta = '15m'" in text
    assert "    mp: Policy = 'p=f32,c=f32,o=f32'" in text
    assert "    hidden_dim: int = 768\n        Width of the residual stream." in text


def test_override_keys_are_taken_verbatim():
    cfg = parse(
        TrainCfg,
        args=["--trainer.jax_config.my-flag", "true", "--trainer.axis_resources.a/b", "model"],
    )
    assert cfg.trainer.jax_config["my-flag"] is True
    assert cfg.trainer.axis_resources == {"a/b": "model"}
    with pytest.raises(ConfigError, match="malformed override --trainer..seed"):
        parse(TrainCfg, args=["--trainer..seed", "1"])


def test_a_failed_collective_with_a_dead_peer_is_one_clear_message(capsys, monkeypatch):
    import jax

    def entry(config: SimpleCfg):
        raise jax.errors.JaxRuntimeError(
            "UNKNOWN: Gloo context initialization failed: DEADLINE_EXCEEDED: GetKeyValue() "
            "timed out with key: cpu:gloo/0,1/4 and duration: 30s\nmore runtime detail"
        )

    exits = []

    def exit_now(status):  # the real one skips jax's shutdown barrier with the dead peer
        exits.append(status)
        raise SystemExit(status)

    monkeypatch.setattr(lm.config.cli, "_exit_now", exit_now)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with pytest.raises(SystemExit) as info:
        lm.config.main(entry)(args=[])
    assert info.value.code == 1 and exits == [1]
    err = capsys.readouterr().err
    assert "error: process 1 of 2 could not complete a collective operation" in err
    assert "Gloo context initialization failed" in err and "more runtime detail" not in err
    assert "Another process has most likely died or stalled" in err
    assert "Traceback" not in err

    # a single-process run's runtime error is not about peers: it stays a traceback
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    with pytest.raises(jax.errors.JaxRuntimeError):
        lm.config.main(entry)(args=[])


@pytest.mark.parametrize("wrapped", [False, True])
def test_ctrl_c_inside_a_callback_from_c_is_still_an_interrupt(capsys, monkeypatch, wrapped):
    """A SIGINT landing while jax resolved a dtype surfaced as `SystemError: ... returned a
    result with an exception set` (its cause the KeyboardInterrupt): the run exited 1 with a
    traceback instead of 130 with `interrupted (Ctrl-C)`."""

    def entry(config: SimpleCfg):
        if not wrapped:
            raise KeyboardInterrupt
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise SystemError("<function f> returned a result with an exception set") from e

    def exit_now(status):
        raise SystemExit(status)

    monkeypatch.setattr(lm.config.cli, "_exit_now", exit_now)
    monkeypatch.delenv("LM_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as info:
        lm.config.main(entry)(args=[])
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert err.rstrip().endswith("interrupted (Ctrl-C)") and "Traceback" not in err
    assert not lm.config.cli.is_keyboard_interrupt(SystemError("unrelated"))


def test_out_of_memory_is_one_message_that_says_what_to_shrink(capsys):
    import jax

    def entry(config: SimpleCfg):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory allocating 115160352656 bytes.\nruntime detail"
        )

    with pytest.raises(SystemExit) as info:
        lm.config.main(entry)(args=[])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "error: out of memory: RESOURCE_EXHAUSTED: Out of memory allocating 115160352656" in err
    assert "trainer.train_batch_size" in err and "lm.main.plan" in err
    assert "runtime detail" not in err and "Traceback" not in err
    # no log file here (only train_lm / eval_lm write one): the hint does not point at one
    assert "(the Python traceback is not shown: set LM_TRACEBACK=1 to print it)" in err

    def other(config: SimpleCfg):  # any other runtime error keeps its traceback
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    with pytest.raises(jax.errors.JaxRuntimeError):
        lm.config.main(other)(args=[])


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    def entry(config: SimpleCfg):
        raise KeyboardInterrupt

    def exit_now(status):  # the real one leaves the process at once (os._exit)
        raise SystemExit(status)

    monkeypatch.setattr(lm.config.cli, "_exit_now", exit_now)
    with pytest.raises(SystemExit) as info:
        lm.config.main(entry)(args=[])
    assert info.value.code == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C)\n"


@pytest.mark.parametrize("error", [FileExistsError, NotADirectoryError])
def test_a_path_in_the_way_is_one_message(capsys, error):
    def entry(config: SimpleCfg):
        raise error(17, "File exists", "/tmp/x")

    with pytest.raises(SystemExit) as info:
        lm.config.main(entry)(args=[])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: [Errno 17] File exists: '/tmp/x'") and "Traceback" not in err


@dataclasses.dataclass(frozen=True)
class Deprecating:
    rate: float = 0.1
    old_rate: float | None = None
    """Deprecated: use rate."""

    def __post_init__(self):
        if self.old_rate is not None:
            warnings.warn(
                "old_rate is deprecated:\n  use rate instead.", DeprecationWarning, stacklevel=3
            )


@dataclasses.dataclass(frozen=True)
class DeprecatingRun:
    inner: Deprecating = dataclasses.field(default_factory=Deprecating)
    steps: int = 1


def test_main_prints_warnings_raised_while_parsing(capsys):
    def entry(config: DeprecatingRun):
        return config

    config = lm.config.main(entry)(args=["--inner.old_rate", "0.2"])
    assert config.inner.old_rate == 0.2
    err = capsys.readouterr().err
    assert err == "warning: old_rate is deprecated: use rate instead.\n"  # one line, once

    with pytest.raises(SystemExit) as info:  # printed before the config problems too
        lm.config.main(entry)(args=["--inner.old_rate", "0.2", "--steps", "x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("warning: old_rate is deprecated: use rate instead.\nInvalid config")


@dataclasses.dataclass(frozen=True)
class WarnsFromElsewhere:
    x: int = 1

    def __post_init__(self):  # a warning attributed to a file outside lm
        warnings.warn_explicit("from elsewhere", UserWarning, "/site-packages/other.py", 1)


def test_main_passes_other_packages_warnings_on(capsys):
    def entry(config: WarnsFromElsewhere):
        return config

    with pytest.warns(UserWarning, match="from elsewhere"):
        lm.config.main(entry)(args=[])
    assert "warning:" not in capsys.readouterr().err


def test_a_missing_optional_package_is_one_message(capsys):
    def entry(config: SimpleCfg):
        raise ImportError("the tensorboard tracker needs tensorboardX: pip install 'lm[tb]'")

    with pytest.raises(SystemExit) as info:
        lm.config.main(entry)(args=[])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "error: the tensorboard tracker needs tensorboardX: pip install 'lm[tb]'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "url, package, extra",
    [("gs://bucket/run.yaml", "gcsfs", "gcs"), ("s3://b/run.yaml", "s3fs", "s3")],
)
def test_config_path_on_a_filesystem_that_is_not_installed(
    capsys, monkeypatch, url, package, extra
):
    monkeypatch.setitem(sys.modules, package, None)  # `import gcsfs` raises ImportError

    def entry(config: SimpleCfg):
        raise AssertionError("must not run")

    with pytest.raises(SystemExit) as info:
        lm.config.main(entry)(args=["--config_path", url])
    assert info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "--config_path" in line]
    assert line.startswith(f"  - (top level) [--config_path]: cannot read {url}: ")
    assert f"needs {package}, which is not installed" in line
    assert f"pip install 'lm[{extra}]'" in line
    assert "Traceback" not in err


def test_config_path_with_an_unknown_protocol():
    with pytest.raises(ConfigError) as info:
        parse(SimpleCfg, args=["--config_path", "nosuchfs://b/run.yaml"])
    assert str(info.value.problems[0]).startswith(
        "(top level) [--config_path]: cannot read nosuchfs://b/run.yaml: nosuchfs://"
    )
