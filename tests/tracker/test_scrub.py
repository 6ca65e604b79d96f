"""Secret scrubbing: unit cases, then no API key reaches any file a run writes."""

import logging
import pathlib

import pytest

import lm.tracker
from lm.tracker import (
    CompositeTracker,
    JsonLoggerConfig,
    TensorboardConfig,
    WandbConfig,
    configure_logging,
    scrub_secrets,
    scrub_text,
)
from lm.tracker.logs import reset_logging
from lm.tracker.scrub import REDACTED, is_secret_key

FAKE_WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
HF = "hf_" + "A1b2C3d4E5" * 4


@pytest.mark.parametrize(
    "key",
    [
        "WANDB_API_KEY",
        "wandb_api_key",
        "wandbApiKey",
        "HF_TOKEN",
        "token",
        "access_token",
        "GITHUB_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "db_password",
        "private_key",
        "client_secret",
        "use_auth_token",
    ],
)
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "tokenizer",
        "max_tokens",
        "throughput/tokens_per_second",
        "eos_token",
        "pad_token_id",
        "key",
        "data_key",
        "HF_TOKEN_PATH",
        "learning_rate",
    ],
)
def test_ordinary_keys(key):
    assert not is_secret_key(key)


def test_scrub_mapping_redacts_secret_keys_and_leaves_the_rest():
    value = {
        "WANDB_API_KEY": "abc123",
        "tokenizer": "gpt2",
        "eos_token": "</s>",
        "pad_token_id": 0,
        "use_auth_token": True,
        "nested": [{"hf_token": "zzz"}, ("a", "b")],
        "empty_password": "",
    }
    assert scrub_secrets(value, environ={}) == {
        "WANDB_API_KEY": REDACTED,
        "tokenizer": "gpt2",
        "eos_token": "</s>",
        "pad_token_id": 0,
        "use_auth_token": True,
        "nested": [{"hf_token": REDACTED}, ("a", "b")],
        "empty_password": "",
    }


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"wandb login {FAKE_WANDB_KEY}", f"wandb login {REDACTED}"),  # via the env value
        (f"token {HF} used", f"token {REDACTED} used"),
        ("https://user:hunter22@github.com/x.git", f"https://user:{REDACTED}@github.com/x.git"),
        ("Authorization: Bearer abcdefghijklmnop", f"Authorization: Bearer {REDACTED}"),
        ("api_key=s3cr3tvalue other", f"api_key={REDACTED} other"),
        ('{"password": "pa55word"}', f'{{"password": "{REDACTED}"}}'),
        ("ghp_" + "x" * 36, REDACTED),
        ("AKIA" + "ABCDEFGHIJKLMNOP", REDACTED),
        ("tokens_per_second: 1234, max_token: 12", "tokens_per_second: 1234, max_token: 12"),
        ("commit 0123456789abcdef0123456789abcdef01234568", None),  # a git sha is not a key
    ],
)
def test_scrub_text(text, expected):
    env = {"WANDB_API_KEY": FAKE_WANDB_KEY, "HOME": "/root", "SHORT_TOKEN": "abc"}
    assert scrub_text(text, environ=env) == (text if expected is None else expected)


def test_no_api_key_reaches_any_file(wandb_env, tmp_path, monkeypatch):
    """Every tracker plus the log file; the key appears in hparams, metrics, logs, artifacts."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "logs" / "secret-run"
    configure_logging(tmp_path / "logs" / "secret-run.log", level="INFO")
    try:
        trackers = [
            WandbConfig(mode="offline", save_dir=str(tmp_path / "wb"), save_code=False),
            TensorboardConfig(logdir=str(tmp_path / "tb")),
            JsonLoggerConfig(),
        ]
        tracker = CompositeTracker([c.init("secret-run", run_dir=str(run_dir)) for c in trackers])
        artifact = tmp_path / "env_dump.txt"
        artifact.write_text(f"WANDB_API_KEY={FAKE_WANDB_KEY}\nHF={HF}\n")
        with tracker:
            lm.tracker.log_hyperparameters(
                {"env": {"WANDB_API_KEY": FAKE_WANDB_KEY}, "argv": f"--key {FAKE_WANDB_KEY}"}
            )
            lm.tracker.log({"train/loss": 1.0, "debug/cmd": f"x {FAKE_WANDB_KEY}"}, step=0)
            tracker.log_artifact(str(artifact), name="env_dump", type="text")
            logging.getLogger("lm.test").info("the key is %s", FAKE_WANDB_KEY)
            try:
                raise RuntimeError(f"failed with key {HF}")
            except RuntimeError:
                logging.getLogger("lm.test").exception("traceback follows")
        tracker.finish()
    finally:
        reset_logging()

    log_text = (tmp_path / "logs" / "secret-run.log").read_text()
    assert "the key is ***REDACTED***" in log_text and "failed with key ***REDACTED***" in log_text
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != artifact]
    assert any(p.suffix == ".wandb" for p in written)
    assert any("tfevents" in p.name for p in written)
    assert (tmp_path / "tb" / "secret-run" / "artifacts" / "env_dump").exists()
    leaks = [
        str(p.relative_to(tmp_path))
        for p in written
        if FAKE_WANDB_KEY.encode() in p.read_bytes() or HF.encode() in p.read_bytes()
    ]
    assert leaks == []
    # The scrubbed artifact itself went to W&B's staging area (under tmp_path) as well.
    staged = [p for p in (wandb_env).rglob("*") if p.is_file() and b"REDACTED" in p.read_bytes()]
    assert staged, "the redacted artifact copy should have been staged by W&B"
    assert pathlib.Path(run_dir / "metrics.jsonl").exists()
