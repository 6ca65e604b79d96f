"""`lm.main.export_lm_to_hf` as a user runs it: config.json's special-token ids are the run
tokenizer's (transformers loads them without complaint), and a bad `--output_dir` is one
clear error before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest
from run_helpers import run_train_lm, tiny_run_yaml, write_tiny_corpus

from lm.data import load_builtin_tokenizer

TOKEN_ID_WARNING = "must be `None` or an integer within the vocabulary"


def _export(env, config_path, checkpoint_path, output_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lm.main.export_lm_to_hf",
            "--config_path",
            str(config_path),
            "--checkpoint_path",
            str(checkpoint_path),
            "--output_dir",
            str(output_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _reloaded_ids(path) -> tuple:
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(path))
    return (
        hf_config.vocab_size,
        hf_config.bos_token_id,
        hf_config.eos_token_id,
        hf_config.pad_token_id,
    )


@pytest.mark.entry
def test_builtin_tokenizer_ids_in_cli_export_and_hf_save_path(tmp_path, subprocess_env):
    """A run on the builtin 8k tokenizer: both the export CLI and `hf_save_path` write its
    <|endoftext|> id (not GPT-2's 50256), and neither prints transformers' id warning."""
    corpus = write_tiny_corpus(tmp_path / "corpus")
    config = tiny_run_yaml(tmp_path, corpus, steps=2)
    train = run_train_lm(config, subprocess_env, "--hf_save_path", str(tmp_path / "hf_saves"))
    tokenizer = load_builtin_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        eos,
        eos,
        None,
    )
    expected = (len(tokenizer), eos, eos, None)

    out = tmp_path / "hf"
    proc = _export(subprocess_env, config, tmp_path / "ckpt" / "tiny", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _reloaded_ids(out) == expected
    assert TOKEN_ID_WARNING not in proc.stderr + proc.stdout

    (saved,) = (tmp_path / "hf_saves" / "tiny").iterdir()
    assert _reloaded_ids(saved) == expected
    assert TOKEN_ID_WARNING not in train.stderr + train.stdout


@pytest.mark.entry
@pytest.mark.parametrize("nested", [False, True], ids=["file", "under_a_file"])
def test_output_dir_that_is_a_file_is_one_clear_error(nested, tmp_path, subprocess_env):
    corpus = write_tiny_corpus(tmp_path / "corpus")
    config = tiny_run_yaml(tmp_path, corpus, steps=2)
    target = tmp_path / "export_file"
    target.write_text("keep me")
    output_dir = target / "sub" if nested else target
    # No checkpoint exists: the output_dir error comes before anything is loaded.
    proc = _export(subprocess_env, config, tmp_path / "ckpt" / "missing", output_dir)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    expected = (
        f"output_dir: {output_dir} cannot be a directory: {target}, on its path, is a file"
        if nested
        else f"output_dir: {target} is a file, not a directory"
    )
    assert expected in proc.stderr, proc.stderr
    assert "missing" not in proc.stderr  # stopped before the checkpoint
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    "value, message",
    [("5gb", "unknown size unit 'gb' in '5gb' (did you mean 5GB?)"), ("0", "must be positive")],
)
def test_a_bad_max_shard_size_is_a_config_error_before_the_checkpoint_is_read(value, message):
    import lm.config
    from lm.main.export_lm_to_hf import ExportLmToHfConfig

    args = ["--checkpoint_path", "/no/such", "--output_dir", "/tmp/x", "--max_shard_size", value]
    with pytest.raises(lm.config.ConfigError) as info:
        lm.config.parse(ExportLmToHfConfig, args=args)
    (problem,) = info.value.problems
    assert problem.path == "max_shard_size" and message in problem.message
