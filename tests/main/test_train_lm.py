"""End-to-end tests of `python -m lm.main.train_lm` (entry points run as subprocesses)."""

import dataclasses
import pathlib
import platform
import sys
import types

import numpy as np
import pytest
import yaml
from run_helpers import run_train_lm, step_losses, tiny_run_yaml, write_tiny_corpus

import lm.config
from lm.checkpoint import list_checkpoints, load_checkpoint
from lm.data import LMDatasetConfig, LMMixtureDatasetConfig
from lm.main.train_lm import TrainLmConfig
from lm.models import LmConfig
from lm.optim import OptimizerConfig

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "config"


def _kind(path: pathlib.Path):
    rel = path.relative_to(CONFIG_DIR).parts
    if rel[0] == "data":
        return LMDatasetConfig | LMMixtureDatasetConfig
    if rel[0] == "optim":
        return OptimizerConfig
    if rel[0] == "model":
        return LmConfig
    return TrainLmConfig


@pytest.mark.parametrize(
    "path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR))
)
def test_every_yaml_under_config_parses(path):
    cls = _kind(path)
    if cls is TrainLmConfig:
        config = lm.config.parse(TrainLmConfig, str(path))
        again = lm.config.decode(TrainLmConfig, yaml.safe_load(lm.config.to_yaml(config)))
        assert again == config
    else:
        lm.config.decode(cls, lm.config.load_yaml(str(path)))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--trainer.num_train_step", "10"], ["trainer.num_train_step", "num_train_steps"]),
        (["--model.type", "gtp2"], ["model.type", "gtp2", "gpt2"]),
        (["--optimizer.warmup", "-3"], ["optimizer.warmup", "-3"]),
        (["--trainer.train_batch_size", "big"], ["trainer.train_batch_size", "big"]),
        (
            ["--model.num_heads", "5", "--trainer.tracker.type", "jsn"],
            ["model", "num_heads", "trainer.tracker.type", "jsn", "json"],
        ),
        # schedule problems (OPT-03..06) before any data is cached
        (
            ["--optimizer.warmup", "500"],
            [
                "optimizer.warmup [--optimizer.warmup 500]: 500 steps is longer than cycle 0 "
                "(200 steps) (trainer.num_train_steps: 200)"
            ],
        ),
        (
            ["--optimizer.cycle_length", "[150, 100]"],
            [
                "optimizer.cycle_length [",
                "]: cycle lengths [150, 100] exceed the schedule: they sum to 250 steps, more than its 200",
            ],
        ),
        (
            ["--optimizer.cycles", "[100, 300]"],
            ["optimizer.cycles [", "]: [100, 300]: cycle minima [300] lie past the end of the"],
        ),
        (
            ["--optimizer.schedule_steps", "100"],
            ["optimizer.schedule_steps [", "(100) is less than num_train_steps (200)"],
        ),
        (
            ["--optimizer.warmup", "0.5", "--optimizer.decay", "0.6"],
            ["optimizer.warmup [", "]: 100 steps + optimizer.decay (120 steps) exceed the length"],
        ),
        (
            ["--optimizer.cooldown", "1.0"],
            ["warning: optimizer.cooldown is deprecated", "optimizer.cooldown [", "leaves no"],
        ),
        (
            ["--trainer.jax_config", "{jax_bogus_flag: true}"],
            ["trainer.jax_config.jax_bogus_flag [--trainer.jax_config", "unknown jax config"],
        ),
        (["--trainer.tracker", "[]"], ["trainer.tracker [--trainer.tracker []]: got []"]),
        (
            ["--trainer.num_train_steps", "0"],
            ["trainer.num_train_steps [--trainer.num_train_steps 0]: got 0, expected"],
        ),
        (
            ["--data.train_urls", "[a.jsonl]"],
            ["set only one kind of source", "got train_urls/validation_urls and builtin"],
        ),
        # data that is not there: said before the log file or a cache is made
        (
            ["--data.builtin", "null", "--data.train_urls", "[nope/*.jsonl]"],
            ["error: data.train_urls: the glob 'nope/*.jsonl' matched no files"],
        ),
        (
            ["--data", "{id: ./nope_ds, tokenizer: builtin}"],
            ["error: data.id: ./nope_ds does not exist; expected an HF dataset directory"],
        ),
        # the parameters against the mesh (8 devices): found before anything is written
        (
            ["--trainer.fsdp_axis", "[embed, mlp]"],
            ["error: parameter transformer.blocks.stacked.mlp.c_fc.weight has axes", "which "
             "the trainer's parameter axis mapping both shards over mesh axis 'data'"],
        ),
        (
            ["--trainer.batch_axis", "embed"],
            ["error: trainer.batch_axis: 'embed' is an axis of the model's parameters (they "
             "have: ", "the batch axis needs a name of its own"],
        ),
        (
            ["--trainer.mp", "f64"],
            ["trainer.mp [--trainer.mp f64]: asks for float64, which JAX gives only with x64"],
        ),
        (
            ["--trainer.model_axis_size", "8", "--trainer.tensor_parallel_axes", "[heads]"],
            ["error: parameter transformer.blocks.stacked.attn.", "has axis 'heads' of size 4",
             "8 does not divide 4"],
        ),
    ],
)  # fmt: skip
def test_bad_configs_give_one_clear_message_and_exit_2(
    tmp_path, capsys, args, expected, monkeypatch
):
    from lm.main.train_lm import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        lm.config.main(main)(args=["--config_path", str(CONFIG_DIR / "gpt2_nano.yaml"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--hf_save_path", "afile"], "error: hf_save_path: afile is a file, not a directory"),
        (["--data.cache_dir", "afile"], "error: data.cache_dir: afile is a file, not a directory"),
        (
            ["--data.builtin", "null", "--data.validation_urls", "[afile]"],
            "error: data: has no training data: set train_urls, id or builtin",
        ),
        (
            ["--trainer.log_dir", "afile/logs"],
            "error: trainer.log_dir: afile/logs cannot be a directory: {tmp}/afile, on its "
            "path, is a file",
        ),
        (
            ["--initialize_from_hf", "./no_such_checkpoint"],
            "error: initialize_from_hf: ./no_such_checkpoint does not exist; expected a Hugging "
            "Face checkpoint directory (with config.json) or a hub id such as 'gpt2'",
        ),
        (
            ["--initialize_from_hf", "empty_dir"],
            "error: initialize_from_hf: empty_dir has no config.json",
        ),
        (
            ["--data.tokenizer", "./my_tokenizer"],
            "error: data.tokenizer: ./my_tokenizer does not exist; expected a tokenizer (a "
            "local path or URL)",
        ),
        (
            ["--trainer.initialize_from", "/no/such/run"],
            "error: trainer.initialize_from: /no/such/run does not exist; expected a checkpoint",
        ),
        (
            ["--trainer.load_checkpoint", "true"],
            "error: trainer.load_checkpoint: is true, but this run has no id to resume",
        ),
        (
            ["--trainer.load_checkpoint", "true", "--trainer.id", "r1"],
            "error: trainer.load_checkpoint: is true, but no checkpoint was found in the run's "
            "checkpoint directory (checkpoints/r1): it does not exist",
        ),
        (
            [
                "--trainer.load_checkpoint",
                "true",
                "--trainer.load_checkpoint_path",
                "empty_dir",
            ],
            "error: trainer.load_checkpoint: is true, but no checkpoint was found in "
            "trainer.load_checkpoint_path (empty_dir): it holds no step-N checkpoint",
        ),
    ],
)
def test_local_paths_in_the_way_are_one_message_before_anything_is_written(
    tmp_path, capsys, monkeypatch, args, expected
):
    """An output folder that is a file would fail mid-run (hf_save_path: after the last step,
    losing the export); a local HF checkpoint that is not there would fail after the caches."""
    from lm.main.train_lm import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RUN_ID", raising=False)  # a run id given that way would be resumed
    (tmp_path / "afile").write_text("")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        lm.config.main(main)(args=["--config_path", str(CONFIG_DIR / "gpt2_nano.yaml"), *args])
    assert exit_info.value.code == 2  # a configuration problem, as when parsing
    err = capsys.readouterr().err
    assert expected.format(tmp=tmp_path) in err, err
    assert "Traceback" not in err and "traceback" not in err  # one line, no pointer to one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty_dir"]


@pytest.mark.parametrize(
    "model, why",
    [
        ({"hybrid_norm": True}, "hybrid_norm and input_embedding_norm have no HF equivalent"),
        ({"use_layer_norm_weight": False}, "use_layer_norm_weight: false has no HF equivalent"),
        ({"type": "qwen3", "use_qk_norm": False}, "use_qk_norm: false has no HF Qwen3"),
    ],
)
def test_hf_save_path_with_a_model_hf_cannot_express_fails_before_training(
    tmp_path, capsys, monkeypatch, model, why
):
    """It trained the whole run and then failed in the export hook after the last step."""
    from lm.main.train_lm import main

    monkeypatch.chdir(tmp_path)
    flags = [x for k, v in model.items() for x in (f"--model.{k}", str(v).lower())]
    with pytest.raises(SystemExit) as exit_info:
        lm.config.main(main)(
            args=[
                "--config_path", str(CONFIG_DIR / "llama_tiny.yaml"),
                "--hf_save_path", "hf", "--trainer.id", "x", *flags,
            ]
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: hf_save_path: is set, but this model cannot be saved as an HF checkpoint: " in (
        err
    )
    assert why in err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "checkpoints").exists()


def test_deprecated_fields_are_printed_as_warnings(capsys):
    """CFG-07: the DeprecationWarnings of trainer.wandb, optimizer.cooldown and optimizer.haps
    reach the user (Python hides them by default, and logging is not configured yet)."""
    seen = []

    def entry(config: TrainLmConfig):
        seen.append(config)

    lm.config.main(entry)(
        args=[
            "--config_path", str(CONFIG_DIR / "gpt2_nano.yaml"),
            "--trainer.tracker", "{type: wandb, project: p}",
            "--trainer.wandb", "{project: p}",
            "--optimizer.cooldown", "0.1",
            "--optimizer.haps", "[50, 100]",
        ]
    )  # fmt: skip
    (config,) = seen
    assert config.optimizer.cooldown == 0.1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "warning: trainer.wandb is deprecated: move its fields under trainer.tracker (W&B is the "
        "default tracker, so `type: wandb` is optional). It is used as trainer.tracker now.",
        "warning: optimizer.cooldown is deprecated: use decay (with cycles if needed) instead.",
        "warning: optimizer.haps is deprecated: use cycles with a list of steps instead.",
    ]


def test_a_finished_run_summary_says_no_step_ran(tmp_path, capsys):
    import jax.numpy as jnp

    from lm.main.train_lm import RunSummary
    from lm.trainer import TrainerConfig

    config = TrainerConfig(id="done", num_train_steps=20, log_dir=tmp_path)
    state = types.SimpleNamespace(step=jnp.int32(20))
    info = types.SimpleNamespace(step=19, loss=jnp.float32(jnp.nan), state=state)
    summary = RunSummary(config)
    summary.record(info, force=True)  # the final hooks are all that run
    summary.finish(info, types.SimpleNamespace(_eval_hooks=[]))
    summary.print()
    out = capsys.readouterr().out
    assert "nan" not in out
    assert "  no steps run: its checkpoint has all 20 steps (trainer.num_train_steps: 20;" in out

    ran = RunSummary(config)  # a run that trained: the final hooks repeat the last step
    for step, loss in [(0, 9.0), (1, 8.0)]:
        ran.record(types.SimpleNamespace(step=step, loss=jnp.float32(loss)))
    ran.record(types.SimpleNamespace(step=1, loss=jnp.float32(8.0)), force=True)
    assert (ran.first_loss, ran.last_loss, ran.last_step) == (9.0, 8.0, 1)


def test_the_summary_names_each_validation_sets_eval_loss(tmp_path, capsys):
    import jax.numpy as jnp

    from lm.main.train_lm import RunSummary
    from lm.trainer import TrainerConfig

    def hook(name, loss):
        prefix = f"eval/{name}" if name else "eval"
        return types.SimpleNamespace(name=name, prefix=prefix, last_result={f"{prefix}/loss": loss})

    state = types.SimpleNamespace(step=jnp.int32(2))
    info = types.SimpleNamespace(step=1, loss=jnp.float32(8.0), state=state)
    for hooks, expected in [
        ([hook(None, 8.5)], "  eval loss:  8.5000\n"),
        ([hook("web", 8.25), hook("code", 7.5)], "  eval loss:  web 8.2500, code 7.5000\n"),
    ]:
        summary = RunSummary(TrainerConfig(id="r", log_dir=tmp_path))
        summary.record(info)
        summary.finish(info, types.SimpleNamespace(_eval_hooks=hooks))
        summary.print()
        assert expected in capsys.readouterr().out
    # the run dir line lists what is there (a noop or W&B-only run writes no metrics.jsonl)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("{}")
    summary.print()
    assert f"  run dir:    {tmp_path / 'r'}/ (config.yaml)\n" in capsys.readouterr().out


def test_an_interrupted_run_says_how_far_it_got_and_how_to_resume(tmp_path, capsys):
    import jax.numpy as jnp

    from lm.checkpoint import CheckpointerConfig
    from lm.main.train_lm import RunSummary
    from lm.trainer import TrainerConfig

    checkpointer = CheckpointerConfig(base_path=str(tmp_path / "ck"))
    config = TrainerConfig(id="run1", log_dir=tmp_path, checkpointer=checkpointer)
    summary = RunSummary(config)
    summary.interrupted()
    assert capsys.readouterr().out == (
        "Run run1 interrupted before its first step; no checkpoint was saved.\n"
    )
    summary.record(types.SimpleNamespace(step=0, loss=jnp.float32(9.0)))
    # the summary looks where this run saves, also when it started from load_checkpoint_path
    config = dataclasses.replace(config, load_checkpoint_path=str(tmp_path / "elsewhere"))
    summary.config = config
    step = tmp_path / "ck" / "run1" / "step-0"
    step.mkdir(parents=True)
    (step / "metadata.json").write_text('{"step": 0}')
    (step / "manifest.json").write_text("{}")
    summary.interrupted()
    out = capsys.readouterr().out
    assert out.startswith("Run run1 interrupted after step 0; last checkpoint: "), out


def test_training_data_smaller_than_one_batch_is_named_before_the_run_starts():
    import haliax as hax

    from lm.data import ListDataset
    from lm.main.train_lm import check_enough_data
    from lm.trainer import TrainerConfig

    Pos = hax.Axis("position", 256)
    config = TrainerConfig(train_batch_size=16)
    with pytest.raises(ValueError) as info:
        check_enough_data(ListDataset([0]), Pos, config)
    assert str(info.value) == (
        "the training data holds 1 window of seq_len=256, fewer than one batch "
        "(trainer.train_batch_size: 16): add data, or lower trainer.train_batch_size or "
        "model.seq_len"
    )
    check_enough_data(ListDataset(list(range(16))), Pos, config)


def test_a_resume_with_a_changed_config_keeps_the_old_one_and_names_the_changes(
    tmp_path, caplog, repo_root
):
    from lm.main.train_lm import TrainLmConfig, save_run_config

    def parse(*args):
        return lm.config.parse(TrainLmConfig, str(repo_root / "config/llama_tiny.yaml"), args=args)

    run_dir = str(tmp_path)
    save_run_config(parse(), run_dir, restored_step=None)
    first = (tmp_path / "config.yaml").read_text()
    with caplog.at_level("WARNING"):
        save_run_config(parse(), run_dir, restored_step=50)  # the same config: nothing to say
        assert caplog.text == "" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
        save_run_config(
            parse("--trainer.num_train_steps", "200", "--trainer.seed", "3"), run_dir, 60
        )
    assert (tmp_path / "config.before-step-60.yaml").read_text() == first
    assert "num_train_steps: 200" in (tmp_path / "config.yaml").read_text()
    message = caplog.records[-1].getMessage()
    assert message.startswith(
        "Resuming at step 60 with a changed configuration: trainer.num_train_steps: 100 -> 200; "
        "trainer.seed: 0 -> 3 (the previous config is kept as "
    )
    assert message.endswith(
        "The learning-rate schedule follows trainer.num_train_steps, so it is recomputed over "
        "200 steps instead of 100 and the LR changes from this step on"
    )
    # a run with a random id, resumed by giving that id: the same run, nothing to say
    (tmp_path / "config.yaml").unlink()
    save_run_config(parse(), run_dir, restored_step=None)
    caplog.clear()
    with caplog.at_level("WARNING"):
        save_run_config(parse("--trainer.id", "abc12345"), run_dir, restored_step=10)
    assert caplog.text == ""
    save_run_config(parse("--trainer.num_train_steps", "200"), run_dir, restored_step=None)
    # a shorter run can keep the old schedule (schedule_steps may exceed num_train_steps)
    save_run_config(parse("--trainer.num_train_steps", "80"), run_dir, 70)
    assert (
        caplog.records[-1]
        .getMessage()
        .endswith("set optimizer.schedule_steps: 200 to stop early on the old schedule")
    )


def test_a_run_without_validation_data_says_it_will_not_evaluate(caplog):
    from lm.main.train_lm import warn_if_no_validation
    from lm.trainer import TrainerConfig

    config = TrainerConfig(steps_per_eval=50)
    with caplog.at_level("WARNING", logger="lm.main.train_lm"):
        warn_if_no_validation({"": object()}, config)
        assert caplog.text == ""
        warn_if_no_validation({}, config)
    assert "No validation data" in caplog.text
    assert "Set data.validation_urls to evaluate every trainer.steps_per_eval (50)" in caplog.text


def test_resolved_config_goes_to_the_log_file_only(tmp_path):
    import io

    from lm.main.train_lm import _log_to_file
    from lm.tracker.logs import configure_logging, reset_logging

    console = io.StringIO()
    configure_logging(tmp_path / "run.log", stream=console)
    try:
        _log_to_file("Resolved configuration:\n%s", "trainer:\n  seed: 0\n")
    finally:
        reset_logging()
    assert "Resolved configuration:\ntrainer:\n  seed: 0" in (tmp_path / "run.log").read_text()
    assert console.getvalue() == ""


def test_bad_config_from_the_command_line_has_no_traceback(tmp_path, subprocess_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  type: gpt2\n  hiden_dim: 64\ntrainer:\n  num_train_steps: -1\n")
    proc = run_train_lm(bad, subprocess_env, check=False, timeout=120)
    assert proc.returncode == 2
    assert "model.hiden_dim" in proc.stderr and "hidden_dim" in proc.stderr
    assert "trainer" in proc.stderr and "num_train_steps" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("when", ["compiling", "training"])
def test_ctrl_c_exits_130_with_where_the_run_got(
    tmp_path, subprocess_env, uncached_subprocess_env, when
):
    """SIGINT while XLA compiles used to crash the interpreter's teardown (SIGSEGV / "pure
    virtual method called"); in training it says the last checkpoint."""
    if when == "compiling":  # a step loaded from the compilation cache compiles nothing
        subprocess_env = uncached_subprocess_env
    import signal
    import subprocess
    import sys
    import time

    corpus = write_tiny_corpus(tmp_path / "corpus")
    train = pathlib.Path(corpus[0])
    train.write_text(train.read_text() * 20)  # ~800 steps: longer than the test waits
    config = tiny_run_yaml(tmp_path, corpus, steps=100000, checkpointer={
        "base_path": str(tmp_path / "ckpt"), "save_interval": "1s", "keep": []})  # fmt: skip
    # A test run started in the background of a non-interactive shell (`make test &`)
    # ignores SIGINT, and a child inherits an ignored signal (a handled one is reset to the
    # default on exec): with a handler here while it starts, the child sees SIGINT as from
    # a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lm.main.train_lm", "--config_path", str(config)],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    marker = "Starting from a fresh initialization" if when == "compiling" else "Committed"
    seen = ""
    deadline = time.monotonic() + 240
    while marker not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
    assert marker in seen, seen[-3000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert err.rstrip().endswith("interrupted (Ctrl-C)"), err[-3000:]
    assert "Traceback" not in err
    if when == "compiling":
        assert "Run tiny interrupted before its first step; no checkpoint was saved." in out
    else:
        assert "Run tiny interrupted after step " in out
        assert "; rerun with --trainer.id tiny to resume from it." in out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus, subprocess_env):
    """A 20-step run of train_lm from start to finish: the reference for the resume tests."""
    tmp = tmp_path_factory.mktemp("runs") / "full"
    config = tiny_run_yaml(tmp, corpus)
    proc = run_train_lm(config, subprocess_env)
    return tmp, proc


@pytest.mark.entry
def test_cli_run_trains_and_says_where_things_are(uninterrupted):
    tmp, proc = uninterrupted
    losses = step_losses(tmp / "logs")
    assert sorted(losses) == list(range(20))
    first, last = losses[0][0], losses[19][-1]
    assert first > 5.0  # about ln(8192) = 9.0 at init
    assert last < first - 1.5, (first, last)
    assert "train loss:" in proc.stdout and "checkpoint:" in proc.stdout
    assert (tmp / "logs" / "tiny" / "config.yaml").exists()
    assert (tmp / "logs" / "tiny" / "curves.png").stat().st_size > 0
    log = (tmp / "logs" / "tiny.log").read_text()
    assert log.count("step") > 0
    assert "Resolved configuration:\ndata:" in log and "Resolved configuration" not in proc.stderr
    if _expected_allocator_mode() is not None:  # a CPU-only `python -m` run: lm.host_memory
        assert "glibc allocator tuned for CPU training" in log
    if sys.platform.startswith("linux"):  # a CPU-only `python -m` run: lm.prefault
        assert "for the state and the first step ahead of them, on an idle core" in log
    complete = [c for c in list_checkpoints(str(tmp / "ckpt" / "tiny")) if c.complete]
    assert [c.step for c in complete] == [19]  # the final step is always saved


def _expected_allocator_mode() -> str | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    import lm.host_memory as h

    version = tuple(int(p) for p in platform.libc_ver()[1].split(".")[:2])
    return h.choose_mode(h.requested_mode(), h._transparent_huge_pages(), version)


def _final_params(tmp):
    from lm.checkpoint import discover_latest_checkpoint

    path = discover_latest_checkpoint(str(tmp / "ckpt" / "tiny"))
    return load_checkpoint(None, path, discover_latest=False, subpath="model")


@pytest.mark.entry
def test_stop_at_10_and_resume_to_20_matches_uninterrupted(
    tmp_path, corpus, uninterrupted, subprocess_env
):
    full_tmp, _ = uninterrupted
    config = tiny_run_yaml(tmp_path, corpus)
    # stop early but keep the 20-step schedule (the schedule horizon)
    run_train_lm(
        config,
        subprocess_env,
        "--trainer.num_train_steps",
        "10",
        "--optimizer.schedule_steps",
        "20",
    )
    run_train_lm(config, subprocess_env)
    resumed, full = step_losses(tmp_path / "logs"), step_losses(full_tmp / "logs")
    assert {s: v[-1] for s, v in resumed.items()} == {s: v[-1] for s, v in full.items()}
    import jax

    for a, b in zip(
        jax.tree_util.tree_leaves(_final_params(tmp_path)),
        jax.tree_util.tree_leaves(_final_params(full_tmp)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.entry
def test_rerunning_a_finished_run_only_runs_the_final_hooks(uninterrupted, subprocess_env):
    tmp, _ = uninterrupted
    before = [(c.step, c.timestamp) for c in list_checkpoints(str(tmp / "ckpt" / "tiny"))]
    proc = run_train_lm(tmp / "run.yaml", subprocess_env)
    assert "already at step 20" in proc.stderr
    assert "no steps run: its checkpoint has all 20 steps" in proc.stdout
    assert "nan" not in proc.stdout
    assert [(c.step, c.timestamp) for c in list_checkpoints(str(tmp / "ckpt" / "tiny"))] == before


def _run_failing(
    tmp_path,
    env,
    run_id: str,
    missing_data: str,
    model_yaml: str = "",
    trainer_yaml: str = "",
    *,
    status: int = 1,
):
    """train_lm on a config whose data files do not exist; asserts exit status `status`."""
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data:\n  train_urls: ['{tmp_path / missing_data}']\n"
        "  cache_options: {backend: local}\n"
        + model_yaml
        + f"trainer:\n  id: {run_id}\n  require_accelerator: false\n  tracker: {{type: json}}\n"
        f"  log_dir: {tmp_path / 'logs'}\n" + trainer_yaml
    )
    proc = run_train_lm(config, env, check=False, timeout=120)
    assert proc.returncode == status, proc.stderr
    return proc


@pytest.mark.entry
def test_runtime_user_errors_are_one_message_with_the_traceback_in_the_log(
    tmp_path, subprocess_env
):
    """A data file with a line that has no text: found while the cache is built. (Missing
    files are a configuration error: exit status 2, no log file.)"""
    (tmp_path / "bad.jsonl").write_text('{"content": "no text key"}\n')
    proc = _run_failing(tmp_path, subprocess_env, "broken", "bad.jsonl")
    assert f"error: {tmp_path / 'bad.jsonl'}:1: no key 'text'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Traceback" in (tmp_path / "logs" / "broken.log").read_text()


@pytest.mark.entry
def test_gpu_only_attention_on_cpu_stops_before_writing_anything(tmp_path, subprocess_env):
    model = "model: {type: llama, attn_backend: nvte}\n"
    proc = _run_failing(tmp_path, subprocess_env, "nvte", "missing.jsonl", model, status=2)
    assert "model.attn_backend: 'nvte'" in proc.stderr and "needs a GPU" in proc.stderr
    assert "missing.jsonl" not in proc.stderr  # stopped before the data
    assert not (tmp_path / "logs").exists()  # no run directory, no log file


@pytest.mark.entry
def test_quantization_target_typo_stops_before_writing_anything(tmp_path, subprocess_env):
    model = "model: {type: llama}\n"
    trainer = "  quantization: {fp8: true, targets: [q_proj, up_prj]}\n"
    proc = _run_failing(tmp_path, subprocess_env, "fp8", "missing.jsonl", model, trainer, status=2)
    assert "trainer.quantization.targets[1]: 'up_prj'" in proc.stderr
    assert "did you mean 'up_proj'?" in proc.stderr
    assert "missing.jsonl" not in proc.stderr  # stopped before the data
    assert not (tmp_path / "logs").exists()  # no run directory, no log file


@pytest.mark.entry
def test_hf_export_roundtrip_and_initialize_from_hf(uninterrupted, subprocess_env, tmp_path):
    """export_lm_to_hf writes a checkpoint transformers loads with the same logits; a new run
    initialized from it (initialize_from_hf + use_hf_model_config) starts at the exported loss."""
    import json
    import subprocess
    import sys

    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    run_tmp, _ = uninterrupted
    out = tmp_path / "hf"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm.main.export_lm_to_hf",
            "--config_path",
            str(run_tmp / "run.yaml"),
            "--checkpoint_path",
            str(run_tmp / "ckpt" / "tiny"),
            "--output_dir",
            str(out),
        ],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["model_type"] == "gpt2" and hf_config["vocab_size"] == 8192
    hf = AutoModelForCausalLM.from_pretrained(str(out))
    ids = torch.arange(0, 64).reshape(1, 64)
    ours = _lm_logits(run_tmp, ids.numpy())
    np.testing.assert_allclose(hf(ids).logits.detach().numpy(), ours, atol=1e-4, rtol=1e-4)

    config = yaml.safe_load((run_tmp / "run.yaml").read_text())
    config["initialize_from_hf"] = str(out)
    config["use_hf_model_config"] = True
    config["trainer"].update(id="from-hf", num_train_steps=2, log_dir=str(tmp_path / "logs"))
    config["trainer"]["checkpointer"]["base_path"] = str(tmp_path / "ckpt")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    run_train_lm(tmp_path / "run.yaml", subprocess_env)
    start = step_losses(tmp_path / "logs", "from-hf")[0][0]
    end_of_first_run = step_losses(run_tmp / "logs")[19][-1]
    assert start < end_of_first_run + 0.5, (start, end_of_first_run)  # not a fresh init (~9.0)


def _lm_logits(run_tmp, ids):
    import haliax as hax
    import jax.numpy as jnp

    from lm.lm_run import load_lm_checkpoint

    config = lm.config.parse(TrainLmConfig, str(run_tmp / "run.yaml"))
    Vocab = hax.Axis("vocab", 8192)
    model, _ = load_lm_checkpoint(
        config.model, Vocab, str(run_tmp / "ckpt" / "tiny"), mp=config.trainer.mp
    )
    Pos = config.model.Pos
    tokens = hax.named(jnp.asarray(ids[0]), (Pos,))
    return np.asarray(model(tokens).array)[None]


def test_run_keys_are_the_split_of_the_seed():
    """The data, model and training keys come from one jitted program: the same bits as
    `jax.random.split(PRNGKey(seed), 3)` op by op (runs and their resumes depend on them)."""
    import jax
    import numpy as np

    from lm.main.train_lm import _run_keys

    for seed in (0, 1, 12345, 2**31 - 1):
        expected = jax.random.split(jax.random.PRNGKey(seed), 3)
        for got, want in zip(_run_keys(seed), expected, strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ------------------------------------------------------------- the model of a run from an HF checkpoint


def _hf_run_config(tmp_path, model_yaml: str, *, use_hf_model_config: bool = True, **hf):
    """A TrainLmConfig whose run starts from a random HF Llama (`hf_llama_checkpoint`)."""
    from test_export_lm_to_hf import hf_llama_checkpoint

    source = tmp_path / "src"
    if not source.exists():
        hf_llama_checkpoint(source, **hf)
    (tmp_path / "run.yaml").write_text(
        f"model: {model_yaml}\n"
        f"initialize_from_hf: {source}\n"
        f"use_hf_model_config: {str(use_hf_model_config).lower()}\n"
        f"data: {{tokenizer: {source}}}\n"
    )
    return lm.config.parse(TrainLmConfig, str(tmp_path / "run.yaml"))


def _checkpoint_config(tmp_path):
    from lm.models.hf.converter import HFCheckpointConverter

    return HFCheckpointConverter.for_checkpoint(str(tmp_path / "src")).config_from_hf_checkpoint()


@pytest.mark.torch
def test_use_hf_model_config_keeps_the_yamls_runtime_fields(tmp_path):
    """The architecture is the checkpoint's; seq_len, the attention kernel and its block,
    remat, layer scan and the loss's block size are the YAML's (not silently dropped)."""
    config = _hf_run_config(
        tmp_path,
        "{type: llama, seq_len: 32, attn_backend: vanilla, flash_attention_block_size: 16, "
        "gradient_checkpointing: false, scan_layers: false, cross_entropy_block_size: 64}",
    )
    resolved = config.run_model().config
    assert resolved == dataclasses.replace(
        _checkpoint_config(tmp_path),
        seq_len=32,
        attn_backend="vanilla",
        flash_attention_block_size=16,
        gradient_checkpointing=False,
        scan_layers=False,
        cross_entropy_block_size=64,
    )
    assert resolved.layer_norm_epsilon == 1e-4 and resolved.rope.theta == 500000.0
    # no model section (TrainLmConfig's default gpt2) or just the type: all from the checkpoint
    for section in ("{type: gpt2}", "{type: llama}"):
        config = _hf_run_config(tmp_path, section)
        assert config.run_model().config == _checkpoint_config(tmp_path)


@pytest.mark.torch
@pytest.mark.parametrize(
    "model_yaml, expected",
    [
        (
            "{type: llama, seq_len: 32, hidden_dim: 64, rope: {type: default, theta: 1.0e+6}}",
            "model: sets architecture fields that differ from {src}: hidden_dim: 64 (checkpoint: "
            "32); rope: {type: default, theta: 1000000.0, factor: 1.0} (checkpoint: {type: "
            "llama3, theta: 500000.0, factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, "
            "original_max_position_embeddings: 16}); with use_hf_model_config: true the "
            "architecture comes from the checkpoint",
        ),
        (
            "{type: mistral, seq_len: 32}",
            "model.type: mistral, but {src} is a llama checkpoint and use_hf_model_config: true "
            "takes the architecture from it: set model.type: llama",
        ),
    ],
    ids=["fields", "type"],
)
def test_use_hf_model_config_names_the_yamls_architecture_conflicts(tmp_path, model_yaml, expected):
    config = _hf_run_config(tmp_path, model_yaml)
    with pytest.raises(lm.config.SetupConfigError) as info:
        config.run_model()
    assert expected.replace("{src}", str(tmp_path / "src")) in str(info.value)


@pytest.mark.torch
def test_initialize_from_hf_refuses_a_yaml_model_of_another_architecture(tmp_path):
    """Without use_hf_model_config the YAML's model is trained: a checkpoint of the same
    shapes but another RoPE and norm eps is an error naming both, before the run starts."""
    arch = (
        "type: llama, hidden_dim: 32, intermediate_dim: 48, num_layers: 2, num_heads: 4, "
        "num_kv_heads: 2, seq_len: 32"
    )
    config = _hf_run_config(tmp_path, "{" + arch + "}", use_hf_model_config=False)
    with pytest.raises(lm.config.SetupConfigError) as info:
        config.run_model()
    message = str(info.value)
    assert "layer_norm_epsilon: 1e-05 (checkpoint: 0.0001)" in message
    assert (
        "rope: {type: default, theta: 10000.0, factor: 1.0} (checkpoint: {type: llama3" in message
    )
    assert "Set use_hf_model_config: true" in message
    matching = (
        "{" + arch + ", layer_norm_epsilon: 1.0e-4, rope: {type: llama3, theta: 500000.0, "
        "original_max_position_embeddings: 16}}"
    )
    config = _hf_run_config(tmp_path, matching, use_hf_model_config=False)
    assert config.run_model().config == config.model


@pytest.mark.torch
def test_a_broken_hf_checkpoint_is_a_config_error_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    """A truncated safetensors file was found after the tracker had started and the run's
    directory existed (exit 1); the headers are checked with the other start-up checks."""
    from lm.main.train_lm import main

    _hf_run_config(tmp_path, "{type: llama, seq_len: 32}")
    weights = tmp_path / "src" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "work" / "cache"))
    with pytest.raises(SystemExit) as exit_info:
        lm.config.main(main)(
            args=[
                "--config_path", str(tmp_path / "run.yaml"),
                "--trainer.require_accelerator", "false", "--trainer.id", "r",
                "--trainer.tracker", "{type: json}",
            ]
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: initialize_from_hf: {weights}: tensor " in err, err
    assert "has inconsistent offsets" in err and "traceback" not in err.lower()
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.torch
def test_gpt2_seq_len_from_the_yaml_is_at_most_the_checkpoints_position_table(tmp_path):
    import torch
    from test_export_lm_to_hf import word_tokenizer
    from transformers import AutoModelForCausalLM, GPT2Config

    source = tmp_path / "src"
    torch.manual_seed(0)
    hf_config = GPT2Config(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    AutoModelForCausalLM.from_config(hf_config).save_pretrained(source)
    word_tokenizer().save_pretrained(source)
    assert _hf_run_config(tmp_path, "{type: gpt2, seq_len: 32}").run_model().config.seq_len == 32
    with pytest.raises(lm.config.SetupConfigError, match=r"seq_len: 128 \(checkpoint: 64 learned"):
        _hf_run_config(tmp_path, "{type: gpt2, seq_len: 128}").run_model()


@pytest.mark.torch
@pytest.mark.parametrize(
    "checkpoint_vocab, vocab_size, warning",
    [
        (128, 128, "keeping all 128 rows (ids 101..127 never occur in the data; exports keep "
         "vocab_size 128)"),
        (64, 101, "rows 64..100 of the embeddings (and of an untied LM head) are new, drawn at "
         "random"),
        (101, 101, None),
    ],
)  # fmt: skip
def test_a_tokenizer_of_another_size_than_the_checkpoint(
    tmp_path, checkpoint_vocab, vocab_size, warning
):
    """The checkpoint's extra rows are kept (HF pads vocabularies); a larger tokenizer gets
    new random rows; either way the warning names both sizes and what happens."""
    from lm.lm_run import describe_vocab_change

    config = _hf_run_config(tmp_path, "{type: llama}", vocab_size=checkpoint_vocab)
    run_model = config.run_model()
    assert (run_model.vocab_size, run_model.tokenizer_size) == (vocab_size, 101)
    message = describe_vocab_change(run_model)
    if warning is None:
        assert message is None
    else:
        assert f"The tokenizer has 101 tokens but {tmp_path / 'src'}'s vocabulary" in message
        assert warning in message


@pytest.mark.torch
def test_an_hf_vocabulary_the_model_axis_does_not_divide_is_padded_before_sharding(
    tmp_path, monkeypatch
):
    """101 rows sharded over a model axis of 4: the load placed them as read and failed
    inside jax; they are padded to 104 on the host first, the checkpoint's rows unchanged."""
    import haliax as hax
    import torch

    from lm.lm_run import load_lm_checkpoint
    from lm.main.train_lm import main

    corpus = write_tiny_corpus(tmp_path / "corpus")
    hf = _hf_run_config(tmp_path, "{type: llama, seq_len: 32}", vocab_size=101)
    monkeypatch.chdir(tmp_path)
    lm.config.main(main)(
        args=[
            "--config_path", str(tmp_path / "run.yaml"),
            "--data.train_urls", f"[{corpus[0]}]", "--data.validation_urls", "[]",
            "--data.cache_dir", str(tmp_path / "cache"), "--data.cache_options.backend", "local",
            "--trainer.require_accelerator", "false", "--trainer.id", "tp",
            "--trainer.tracker", "{type: json}", "--trainer.num_train_steps", "1",
            "--trainer.train_batch_size", "2", "--trainer.model_axis_size", "4",
            "--trainer.tensor_parallel_axes", "[vocab]", "--trainer.fsdp_axis", "null",
            "--trainer.checkpointer.base_path", str(tmp_path / "ckpt"),
            "--optimizer.learning_rate", "1e-9",
        ]
    )  # fmt: skip
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(tmp_path / "src")
    expected = source.model.embed_tokens.weight.detach().to(torch.float32).numpy()
    model, _ = load_lm_checkpoint(
        hf.run_model().config,
        hax.Axis("vocab", 104),
        str(tmp_path / "ckpt" / "tp"),
        mp=hf.trainer.mp,
    )
    table = np.asarray(model.embeddings.token_embeddings.weight.array)
    assert table.shape == (104, 32)
    np.testing.assert_allclose(table[:101], expected, rtol=0, atol=1e-6)


@pytest.mark.torch
def test_hf_export_hook_carries_over_the_source_checkpoints_metadata(tmp_path):
    """hf_save_path exports of a run from an HF checkpoint keep its eos list, its larger
    max_position_embeddings and its generation_config.json."""
    import json

    from lm.main.train_lm import HfExportHook

    config = _hf_run_config(tmp_path, "{type: llama, seq_len: 32}")
    (tmp_path / "src" / "generation_config.json").write_text('{"eos_token_id": [2, 0]}')
    run_model = config.run_model()
    model = run_model.converter.load_pretrained(str(tmp_path / "src"), config=run_model.config)
    hook = HfExportHook(
        run_model.config.hf_checkpoint_converter(),
        str(tmp_path / "hf"),
        "run",
        tokenizer=config.data.the_tokenizer,
        vocab_size=run_model.vocab_size,
        source_checkpoint=config.hf_checkpoint,
    )
    hook.on_step(types.SimpleNamespace(step=3, state=types.SimpleNamespace(eval_model=model)))
    out = tmp_path / "hf" / "run" / "step-3"
    exported = json.loads((out / "config.json").read_text())
    assert (exported["eos_token_id"], exported["max_position_embeddings"]) == ([2, 0], 64)
    assert exported["vocab_size"] == 128
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": [2, 0]}


def test_a_restore_that_does_not_fit_names_the_changed_optimizer(tmp_path):
    """Resuming a muon run with `optimizer.type: adam` said only which leaves the checkpoint
    lacks; the fields that changed since the run's config.yaml say why."""
    from lm.main.train_lm import with_config_changes

    base = lm.config.parse(
        TrainLmConfig, str(CONFIG_DIR / "gpt2_nano.yaml"), ["--optimizer.type", "muon"]
    )
    lm.config.save_config(base, tmp_path / "config.yaml")
    adam = lm.config.parse(TrainLmConfig, str(CONFIG_DIR / "gpt2_nano.yaml"))
    error = with_config_changes(ValueError("checkpoint c lacks 25 leaves"), adam, str(tmp_path))
    assert isinstance(error, lm.config.SetupConfigError)
    assert str(error).startswith(
        "this run's checkpoints were saved with another configuration (optimizer.type: 'muon' "
        f"-> 'adam', against {tmp_path}/config.yaml), so they cannot be restored into this "
        "one: checkpoint c lacks 25 leaves."
    )
    same = with_config_changes(ValueError("other"), base, str(tmp_path))
    assert str(same) == "other" and not isinstance(same, lm.config.SetupConfigError)


def test_a_section_turned_on_or_off_is_one_change_and_quantization_is_named(tmp_path):
    """Turning fp8 on for a resumed run failed with the restore's leaf list alone (exit 1), and
    a section set on one side only read `trainer.model_averaging: None -> (absent);
    trainer.model_averaging.type: (absent) -> 'ema'`, its other fields left out."""
    from lm.main.train_lm import config_changes, with_config_changes

    base = lm.config.parse(TrainLmConfig, str(CONFIG_DIR / "gpt2_nano.yaml"))
    lm.config.save_config(base, tmp_path / "config.yaml")
    fp8 = lm.config.parse(
        TrainLmConfig,
        str(CONFIG_DIR / "gpt2_nano.yaml"),
        ["--trainer.quantization", "{fp8: true}"],
    )
    error = with_config_changes(ValueError("checkpoint c lacks 24 leaves"), fp8, str(tmp_path))
    assert isinstance(error, lm.config.SetupConfigError)
    assert str(error).startswith(
        "this run's checkpoints were saved with another configuration (trainer.quantization: "
        "None -> {targets: null, amax_history_length: 1024, compute_dtype: null, fp8: true, "
        "int8: false}, against "
    )
    ema = lm.config.parse(
        TrainLmConfig,
        str(CONFIG_DIR / "gpt2_nano.yaml"),
        ["--trainer.model_averaging", "{type: ema, beta: 0.5}"],
    )
    changes = config_changes(lm.config.to_yaml(ema), lm.config.to_yaml(base))
    assert {k: (repr(a), repr(b)) for k, (a, b) in changes.items()} == {
        "trainer.model_averaging": ("{type: ema, beta: 0.5}", "None")
    }


@pytest.mark.parametrize(
    "args, message",
    [
        # an empty hf_save_path exported to /<run_id>/ at the file system's root
        (["--hf_save_path="], "hf_save_path: is empty; give a directory"),
        (["--initialize_from_hf="], "initialize_from_hf: is empty"),
        (["--trainer.load_checkpoint_path="], "trainer.load_checkpoint_path: is empty"),
        (["--trainer.initialize_from="], "trainer.initialize_from: is empty"),
        # NaN passed `< 0` checks and the run died with "Loss is NaN" at step 0
        (["--z_loss_weight", ".nan"], "z_loss_weight: got nan, expected a finite number >= 0"),
        (["--model.layer_norm_epsilon", ".inf"], "model.layer_norm_epsilon: got inf"),
        (["--model.initializer_range", "-1"], "model.initializer_range: got -1.0"),
        (["--trainer.profiler_start_step", "-1"], "trainer.profiler_start_step: got -1"),
        (
            ["--trainer.train_batch_size", "-1", "--trainer.per_device_parallelism", "-1"],
            "trainer.train_batch_size: is -1 (per_device_parallelism x the batch-parallel "
            "devices), and so is per_device_parallelism",
        ),
    ],
)
def test_empty_paths_and_non_finite_numbers_are_config_errors(args, message):
    import re

    with pytest.raises(lm.config.ConfigError) as info:
        lm.config.parse(TrainLmConfig, str(CONFIG_DIR / "gpt2_nano.yaml"), args)
    # (each problem names where it was written: `path [--flag value]: message`)
    assert message in re.sub(r" \[[^\]]*\]:", ":", str(info.value))


def test_every_bad_top_level_field_is_reported_in_one_run():
    """The run's own fields and the schedule against the run length, together; an empty
    initialize_from_hf is not also "no HF checkpoint" for use_hf_model_config."""
    with pytest.raises(lm.config.ConfigError) as info:
        lm.config.parse(
            TrainLmConfig,
            str(CONFIG_DIR / "gpt2_nano.yaml"),
            [
                "--z_loss_weight",
                "-1",
                "--hf_save_path=",
                "--initialize_from_hf=",
                "--use_hf_model_config",
                "true",
                "--hf_save_steps",
                "0",
                "--optimizer.schedule_steps",
                "100",
            ],
        )
    assert [p.path for p in info.value.problems] == [
        "z_loss_weight",
        "hf_save_path",
        "initialize_from_hf",
        "hf_save_steps",
        "optimizer.schedule_steps",
    ]
    assert info.value.problems[-1].location == "--optimizer.schedule_steps 100"


def test_a_log_dir_under_home_is_expanded_once(monkeypatch, tmp_path):
    """`log_dir: ~/x` put the run's config under $HOME and its log file under ./~/x."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = lm.config.parse(
        TrainLmConfig, str(CONFIG_DIR / "gpt2_nano.yaml"), ["--trainer.log_dir", "~/runs"]
    )
    assert str(config.trainer.log_dir) == f"{tmp_path}/runs"


@pytest.mark.entry
def test_a_config_error_found_after_start_up_leaves_no_log_file(tmp_path, subprocess_env):
    """A configuration refused once logging had started (here a parameter_axis_resources
    entry naming no axis of the model) exited 2 but left <log_dir>/<id>.log behind."""
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data:\n  train_urls: ['{tmp_path / 'missing.jsonl'}']\n"
        "model: {type: gpt2, hidden_dim: 32, num_heads: 2, num_layers: 1, seq_len: 32}\n"
        "trainer:\n  id: axes\n  require_accelerator: false\n  tracker: {type: json}\n"
        f"  log_dir: {tmp_path / 'logs'}\n  parameter_axis_resources: {{embd: data}}\n"
    )
    proc = run_train_lm(config, subprocess_env, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "embd" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "logs").exists()
