"""`python -m lm.main.cache_dataset`: standalone builds, and resuming after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.entry


def _run(config_path, env, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "lm.main.cache_dataset", "--config_path", str(config_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _build_until(tmp_path, urls: str, env, shards: int, poll_s: float):
    """Start a `backend: local` cache build of `urls` into tmp_path/cache; return (process,
    cache dir) once `shards` shards are in the ledger, the process ended, or 120 s passed."""
    cache = tmp_path / "cache"
    (tmp_path / "data.yaml").write_text(
        f"data:\n  train_urls: ['{urls}']\n  cache_dir: {cache}\n"
        "  cache_options: {backend: local}\n"
    )
    proc = _run(tmp_path / "data.yaml", env)
    deadline = time.time() + 120
    while _finished(cache / "train") < shards and time.time() < deadline and proc.poll() is None:
        time.sleep(poll_s)
    return proc, cache


def _finished(cache_dir) -> int:
    try:
        return len(json.loads((cache_dir / "ledger.json").read_text())["finished"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_killed_build_resumes_without_redoing_finished_shards(
    tmp_path, write_jsonl, subprocess_env, builtin_tokenizer
):
    src = tmp_path / "src"
    for i in (0, 1, 2, 4):
        write_jsonl(src / f"s{i}.jsonl", [f"shard {i} doc {j}" for j in range(20)])
    # Shard 3 is a named pipe: reading it blocks, so the build is stuck there with shards
    # 0-2 finished when we kill it. It is then replaced by an (equally empty) regular file.
    os.mkfifo(src / "s3.jsonl")
    proc, cache = _build_until(tmp_path, f"{src}/s{{0..4}}.jsonl", subprocess_env, 3, 0.2)
    assert _finished(cache / "train") == 3, proc.communicate()[0] if proc.poll() is not None else ""
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = {
        i: (cache / "train" / "shards" / f"{i:05d}" / "tokens" / "zarr.json").stat().st_mtime_ns
        for i in range(3)
    }

    os.remove(src / "s3.jsonl")
    (src / "s3.jsonl").write_text("")
    proc = _run(tmp_path / "data.yaml", subprocess_env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "3 of 5 shards are already finished" in out
    assert "train: 80 documents" in out
    after = {
        i: (cache / "train" / "shards" / f"{i:05d}" / "tokens" / "zarr.json").stat().st_mtime_ns
        for i in range(3)
    }
    assert after == before
    ledger = json.loads((cache / "train" / "ledger.json").read_text())
    assert ledger["complete"] and ledger["finished"][str(src / "s3.jsonl")]["num_docs"] == 0


def test_a_cache_dir_under_a_file_is_one_message(tmp_path, capsys, monkeypatch):
    """It was a bare `[Errno 20] Not a directory`, naming no field."""
    import lm.config
    from lm.main.cache_dataset import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as info:
        lm.config.main(main)(args=["--data.cache_dir", "afile/cache"])
    assert info.value.code == 2
    assert (
        f"error: data.cache_dir: afile/cache cannot be a directory: {tmp_path}/afile, on its "
        "path, is a file"
    ) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_missing_tokenizer_directory_is_the_config_error_train_lm_gives(
    tmp_path, capsys, monkeypatch, write_jsonl
):
    """cache_dataset exited 1 with the tokenizer loader's message while train_lm exits 2 at
    `data.tokenizer`; now both check the data section's local paths before writing."""
    import lm.config
    from lm.main.cache_dataset import main

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "a.jsonl", ["one"])
    args = ["--data.train_urls", "[a.jsonl]", "--data.cache_dir", "c", "--data.tokenizer"]
    with pytest.raises(SystemExit) as info:
        lm.config.main(main)(args=[*args, "./nope_tok"])
    assert info.value.code == 2
    assert (
        "error: data.tokenizer: ./nope_tok does not exist; expected a tokenizer (a local path "
        "or URL)"
    ) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]  # nothing written


def test_ctrl_c_stops_a_local_build_with_130(tmp_path, write_jsonl, subprocess_env):
    """Ctrl-C during a `backend: local` build was ignored about half the time (the
    KeyboardInterrupt landed in JAX's gc callback, where Python drops it): the build ran to
    the end and exited 0. It stops after the current tokenizer batch now, as with Ray."""
    words = "alpha beta gamma delta code data model token cache shard".split()
    src = tmp_path / "src"
    for i in range(3):  # ~1.5 s of tokenizing each on a 2-core box
        docs = [" ".join(words[(j * k) % 10] for k in range(60)) for j in range(25_000)]
        write_jsonl(src / f"s{i}.jsonl", docs)
    proc, cache = _build_until(tmp_path, f"{src}/s{{0..2}}.jsonl", subprocess_env, 1, 0.05)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)  # in the second shard's tokenizer batches
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert time.monotonic() - sent < 10
    assert "interrupted (Ctrl-C)" in out
    ledger = json.loads((cache / "train" / "ledger.json").read_text())
    assert not ledger["complete"] and len(ledger["finished"]) < 3
    assert not (cache / "train" / "build.lease").exists()
