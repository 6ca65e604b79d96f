"""W&B tracker, offline: the run directory `wandb sync` uploads holds what we logged."""

import json
import logging
import pathlib
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lm.config
from lm.tracker import Histogram, WandbConfig, resolve_run_id_from_env
from lm.tracker.wandb import find_git_root, sniff_git_repo, xla_dump_dir_from_flags

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


def read_wandb_records(path):
    """Every record of a `.wandb` file (a LevelDB-style log of `wandb_internal_pb2.Record`).

    Written from the format description (7-byte file header `:W&B`, 0xBEE1, version 0;
    32 KiB blocks of records with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/
    LAST), independently of our tracker code.
    """
    from wandb.proto import wandb_internal_pb2

    data = pathlib.Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (2, 3):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


def _items(update_items):
    """`{key: value}` of config/summary/history items; nested keys become nested dicts."""
    out = {}
    for item in update_items:
        path = list(item.nested_key) or [item.key]
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


def history(records):
    """`[{metric: value}]`, one dict per committed W&B step."""
    return [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]


def offline_run(save_dir, run_id):
    runs = sorted(
        p.parent for p in pathlib.Path(save_dir, "wandb").glob(f"offline-run-*/run-{run_id}.wandb")
    )
    assert runs, f"no offline run directory for {run_id} under {save_dir}"
    return runs[-1]


def test_resume_must_offline_is_a_warning_not_silence(wandb_env, tmp_path, caplog):
    """Offline, W&B starts a new run whatever `resume: must` says: it used to say nothing."""
    import logging

    config = WandbConfig(mode="offline", resume="must", id="never-existed", save_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="lm.tracker.wandb"):
        config.init("ignored").finish()
    assert "tracker.resume: must cannot be checked in offline mode" in caplog.text
    assert "run never-existed" in caplog.text


def test_offline_run_holds_logged_history(wandb_env, tmp_path):
    config = WandbConfig(
        mode="offline", project="proj", name="nice", tags=["a", "b"], save_dir=str(tmp_path)
    )
    tracker = config.init("run123", run_dir=str(tmp_path / "logs" / "run123"))
    tracker.log_hyperparameters({"optimizer": {"learning_rate": 3e-4}, "seed": 0})
    for step in range(3):
        tracker.log({"train/loss": jnp.float32(4.0 - step), "train/note": f"s{step}"}, step=step)
    tracker.log({"params/hist": Histogram.from_array(np.arange(10.0), num_bins=5)}, step=3)
    tracker.log_summary({"best_loss": np.float32(2.0)})
    tracker.finish()

    run_dir = offline_run(tmp_path, "run123")
    records = read_wandb_records(run_dir / "run-run123.wandb")
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_id, run.project, run.display_name) == ("run123", "proj", "nice")
    assert list(run.tags) == ["a", "b"]
    steps = history(records)
    assert [h["_step"] for h in steps] == [0, 1, 2, 3]
    assert [h["train/loss"] for h in steps[:3]] == [4.0, 3.0, 2.0]
    assert steps[1]["train/note"] == "s1"
    hist = steps[3]["params/hist"]
    assert hist["_type"] == "histogram" and hist["values"] == [2, 2, 2, 2, 2]
    config_items = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config_items.update(_items(r.config.update))
    assert config_items["optimizer"] == {"learning_rate": 3e-4}
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    assert summary["best_loss"] == 2.0

    # W&B's own uploader recognises the directory as a run to sync.
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Would sync 1 run" in out.stdout + out.stderr
    assert "run-run123.wandb" in out.stdout + out.stderr


def test_run_id_is_stable_across_restarts(wandb_env, tmp_path):
    for _ in range(2):  # a restarted job gets the same lm run id, hence the same W&B run
        tracker = WandbConfig(mode="offline", save_dir=str(tmp_path)).init("stable1")
        assert tracker.run.id == "stable1"
        tracker.finish()
    explicit = WandbConfig(mode="offline", save_dir=str(tmp_path), id="mine").init("stable1")
    assert explicit.run.id == "mine"
    explicit.finish()
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-stable1.wandb"))) == 2


def _git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@e.st", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def git_repo(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('train')\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "init")
    _git(repo, "remote", "add", "origin", f"https://someone:{FAKE_KEY}@git.example.com/p.git")
    (repo / "train.py").write_text(f"print('train')\nWANDB_API_KEY = '{FAKE_KEY}'\n")
    (repo / "new.py").write_text("x = 1\n")
    return repo


def test_code_saving_sniffs_the_main_scripts_repo(wandb_env, tmp_path, git_repo, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not a repo: the main script decides, not the cwd
    monkeypatch.setattr(
        sys.modules["__main__"], "__file__", str(git_repo / "train.py"), raising=False
    )
    commit = _git(git_repo, "rev-parse", "HEAD")

    info = sniff_git_repo()
    assert info["root"] == str(git_repo.resolve())
    assert (info["commit"], info["branch"], info["dirty"]) == (commit, "main", True)
    assert info["untracked"] == ["new.py"]
    assert FAKE_KEY not in info["remote"] and "git.example.com/p.git" in info["remote"]
    assert "+WANDB_API_KEY" in info["diff"] and FAKE_KEY not in info["diff"]

    tracker = WandbConfig(mode="offline", save_dir=str(tmp_path)).init("coded")
    code_dir = pathlib.Path(tracker.run.dir) / "lm_code"
    tracker.finish()
    saved = json.loads((code_dir / "git.json").read_text())
    assert saved["commit"] == commit and saved["dirty"] is True
    assert "WANDB_API_KEY" in (code_dir / "diff.patch").read_text()
    records = read_wandb_records(offline_run(tmp_path, "coded") / "run-coded.wandb")
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.git.commit == commit
    uploaded = {
        f.path for r in records if r.WhichOneof("record_type") == "files" for f in r.files.files
    }
    assert {"lm_code/git.json", "lm_code/diff.patch"} <= uploaded


def test_code_saving_outside_a_repo_warns(wandb_env, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys.modules["__main__"], "__file__", str(tmp_path / "script.py"), raising=False
    )
    assert find_git_root() is None
    with caplog.at_level(logging.WARNING, logger="lm.tracker.wandb"):
        WandbConfig(mode="offline", save_dir=str(tmp_path)).init("nogit").finish()
    assert "nor the current directory is inside a git repository" in caplog.text


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("--xla_dump_to=/tmp/d --xla_dump_hlo_pass_re=.*", "/tmp/d"),
        ("--xla_force_host_platform_device_count=8 --xla_dump_to /x/y", "/x/y"),
        ("--xla_dump_to='/a b/c'", "/a b/c"),
        ("--xla_dump_to=/first --xla_dump_to=/last", "/last"),
        ("--xla_force_host_platform_device_count=8", None),
        ("", None),
    ],
)
def test_xla_dump_dir_from_flags(flags, expected):
    assert xla_dump_dir_from_flags(flags) == expected


def test_save_xla_dumps_attaches_the_dump_dir(wandb_env, tmp_path, monkeypatch):
    dumps = tmp_path / "dumps"
    (dumps / "module_0001").mkdir(parents=True)
    (dumps / "module_0001" / "before_optimizations.txt").write_text("HloModule m\n")
    monkeypatch.setenv("XLA_FLAGS", f"--xla_dump_to={dumps} --xla_dump_hlo_pass_re=.*")
    tracker = WandbConfig(mode="offline", save_dir=str(tmp_path), save_xla_dumps=True).init("xla")
    assert tracker.xla_dump_dir == str(dumps)
    tracker.finish()
    records = read_wandb_records(offline_run(tmp_path, "xla") / "run-xla.wandb")
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [(a.type, a.name) for a in artifacts] == [("xla_dumps", "xla_dumps")]
    assert [c.path for c in artifacts[0].manifest.contents] == [
        "module_0001/before_optimizations.txt"
    ]


def test_save_xla_dumps_without_flag_warns(wandb_env, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    with caplog.at_level(logging.WARNING, logger="lm.tracker.wandb"):
        tracker = WandbConfig(
            mode="offline", save_dir=str(tmp_path), save_xla_dumps=True, save_code=False
        ).init("noxla")
    tracker.finish()
    assert "--xla_dump_to" in caplog.text


def test_only_process_zero_logs_to_wandb(wandb_env, tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    tracker = WandbConfig(mode="offline", save_dir=str(tmp_path)).init("host1")
    tracker.log({"x": 1.0}, step=0)
    tracker.finish()
    assert not list(tmp_path.rglob("run-host1.wandb"))


def test_resolve_run_id_from_env(tmp_path):
    assert resolve_run_id_from_env(WandbConfig(), environ={}) is None
    assert resolve_run_id_from_env(WandbConfig(id="cfg"), environ={"WANDB_RUN_ID": "e"}) == "cfg"
    assert resolve_run_id_from_env(None, environ={"WANDB_RUN_ID": "env1"}) == "env1"
    # resume: auto picks up the id W&B saved for an unfinished run in its directory
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "wandb-resume.json").write_text(json.dumps({"run_id": "crashed"}))
    auto = WandbConfig(resume="auto", save_dir=str(tmp_path))
    assert resolve_run_id_from_env([auto], environ={}) == "crashed"
    assert resolve_run_id_from_env(WandbConfig(save_dir=str(tmp_path)), environ={}) is None
    env = {"WANDB_RESUME": "auto", "WANDB_DIR": str(tmp_path)}
    assert resolve_run_id_from_env(None, environ=env) == "crashed"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"mode": "ofline"},
            r"^mode: must be one of online, offline, disabled \(or unset\), got 'ofline'; did you "
            r"mean 'offline'\?$",
        ),
        ({"resume": "alow"}, r"^resume: .*, got 'alow'; did you mean 'allow'\?$"),
        ({"tags": "solo"}, r"^tags: must be a list"),
        ({"tags": ["ok", "x" * 65]}, r"^tags\[1\]: got 'x+', expected a string of 1 to 64"),
        ({"id": "a:b"}, r"^id: got 'a:b', expected a run id without any of the characters"),
        ({"id": "../up"}, r"^id: got '../up', expected one directory name"),
        ({"save_dir": ""}, r"^save_dir: is empty"),
    ],
)
def test_bad_wandb_config_is_a_clear_error(kwargs, match):
    """FieldErrors: the decoder reports them at trainer.tracker.<field> (or tracker[i].<field>),
    where the value was written; W&B itself refused tags and ids only when the run started."""
    with pytest.raises(lm.config.FieldError, match=match):
        WandbConfig(**kwargs)


def test_every_bad_wandb_field_is_reported_in_one_run(config_problems, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (tmp_path / "afile").write_text("")
    found = config_problems(
        WandbConfig,
        f"mode: ofline\nresume: alow\ntags: [ok, '']\nid: a:b\nsave_dir: {tmp_path / 'afile'}\n",
    )
    assert set(found) == {"mode", "resume", "tags[1]", "id", "save_dir"}
    assert found["resume"][0] == "run.yaml:2"
    assert found["tags[1]"][1].startswith("got '', expected a string of 1 to 64 characters")
    assert found["save_dir"][1].startswith("W&B cannot write its run files: ")


def test_a_bad_wandb_mode_from_the_environment_is_named_at_parse_time(monkeypatch):
    """W&B validated WANDB_MODE only in wandb.init, once data and model were set up, with a
    pydantic error; W&B's own spellings (shared, dryrun) pass, and `mode:` overrides it."""
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(
        lm.config.FieldError,
        match=r"^mode: is unset, so W&B takes the environment's "
        r"WANDB_MODE='ofline', which must be one of online, offline, disabled; did you mean "
        r"'offline'\?\. Fix or unset WANDB_MODE",
    ):
        WandbConfig()
    WandbConfig(mode="offline")
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    WandbConfig()


def test_a_w_and_b_run_id_from_the_environment_must_name_a_directory(monkeypatch, tmp_path):
    """WANDB_RUN_ID=../x put the run's logs and checkpoints outside log_dir and base_path."""
    from lm.tracker import JsonLoggerConfig
    from lm.trainer import TrainerConfig

    monkeypatch.delenv("RUN_ID", raising=False)
    monkeypatch.setenv("WANDB_RUN_ID", "../escape")
    config = TrainerConfig(tracker=JsonLoggerConfig(), log_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^the W&B run id '../escape' \(from WANDB_RUN_ID"):
        _ = config.run_id


def _assert_user_facing_with_hints(error, hints):
    from lm.config.cli import _is_user_facing

    # an lm error: the CLI prints its message alone, without a traceback
    assert _is_user_facing(error), type(error)
    for hint in hints:
        assert hint in str(error), (hint, str(error))


def test_no_wandb_login_says_what_to_do(wandb_env, tmp_path, monkeypatch):
    import wandb

    from lm.tracker import TrackerInitError

    def not_logged_in(**kwargs):
        # what wandb 0.31 raises for an online run with no API key and no TTY to ask on
        # (faked: a real attempt would use any key this process or machine has)
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", not_logged_in)
    with pytest.raises(TrackerInitError, match="Could not start the W&B run") as error:
        WandbConfig(mode="online", save_dir=str(tmp_path), save_code=False).init("nologin")
    _assert_user_facing_with_hints(
        error.value, ["wandb login", "WANDB_API_KEY", "mode: offline", "type: json"]
    )


def test_unreachable_wandb_says_what_to_do(wandb_env, tmp_path, monkeypatch):
    import wandb

    from lm.tracker import TrackerInitError

    def unreachable(**kwargs):
        raise wandb.errors.CommError("Network error (ConnectionError), entering retry loop.")

    monkeypatch.setattr(wandb, "init", unreachable)
    with pytest.raises(TrackerInitError, match="Could not reach W&B") as error:
        WandbConfig(save_dir=str(tmp_path), save_code=False).init("offline-net")
    _assert_user_facing_with_hints(error.value, ["network", "mode: offline", "type: json"])


def test_missing_wandb_package_says_what_to_do(monkeypatch):
    from lm.tracker import TrackerInitError

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(TrackerInitError, match=r"pip install wandb") as error:
        WandbConfig(save_code=False).init("nowandb")
    _assert_user_facing_with_hints(error.value, ["type: json"])
