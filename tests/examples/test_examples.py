"""The scripts in examples/ run end to end (as a user runs them) and do what they say."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from lm.tracker import read_json_log


def _run(script, args, env, cwd, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, f"examples/{script}", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.entry
def test_custom_model_research_learns_the_spirals(tmp_path, subprocess_env, repo_root):
    proc = _run(
        "custom_model_research.py",
        ["--steps", "300", "--out", str(tmp_path)],
        subprocess_env,
        repo_root,
    )
    assert re.search(r"^step    0  loss \d", proc.stdout, re.M)  # the script's own hook
    assert "done at step 299" in proc.stdout
    records = read_json_log(str(tmp_path / "logs" / "spirals" / "metrics.jsonl"))
    logs = [r for r in records if r["event"] == "log"]
    train = [r["metrics"] for r in logs if "train/loss" in r["metrics"]]
    assert len(train) == 300
    assert train[-1]["train/loss"] < 0.2 * train[0]["train/loss"]
    assert "train/accuracy" in train[0]  # the loss's metrics dict, prefixed
    evals = {r["step"]: r["metrics"] for r in logs if "eval/heldout/accuracy" in r["metrics"]}
    assert sorted(evals) == [0, 100, 200, 299]
    assert evals[299]["eval/heldout/accuracy"] >= 0.95
    assert (tmp_path / "checkpoints" / "spirals" / "step-299" / "metadata.json").exists()


WORDS = "alpha beta gamma delta def return import class while for if else print self".split()
SEQ_LEN = 64


@pytest.fixture
def tiny_hf_checkpoint(tmp_path):
    """A random 2-layer HF GPT-2 with the builtin tokenizer, saved as HF saves models,
    plus a training set and a one-document validation set."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from lm.data import load_builtin_tokenizer

    tokenizer = load_builtin_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=SEQ_LEN,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf_in")
    tokenizer.save_pretrained(tmp_path / "hf_in")
    rng = np.random.default_rng(0)
    with open(tmp_path / "train.jsonl", "w") as f:
        for _ in range(300):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS, 40))}) + "\n")
    # One document: no window crosses a document boundary, so HF's plain causal attention
    # sees what ours sees.
    with open(tmp_path / "validation.jsonl", "w") as f:
        f.write(json.dumps({"text": " ".join(rng.choice(WORDS, 700))}) + "\n")
    return tmp_path


def _hf_loss(model_dir, windows: np.ndarray) -> float:
    """Pooled next-token cross-entropy of an HF checkpoint, computed by transformers."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(windows, dtype=torch.long)).logits.double()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = torch.as_tensor(windows[:, 1:], dtype=torch.long)
    return float(-logp.gather(-1, targets[..., None]).mean())


@pytest.mark.entry
@pytest.mark.torch
def test_finetune_hf_matches_transformers_before_and_after(
    tiny_hf_checkpoint, subprocess_env, repo_root
):
    import haliax as hax

    from lm.data import CacheOptions, LMDatasetConfig

    root = tiny_hf_checkpoint
    out = root / "out"
    args = [
        "--hf_checkpoint", str(root / "hf_in"),
        "--train_data", str(root / "train.jsonl"),
        "--validation_data", str(root / "validation.jsonl"),
        "--steps", "16",
        "--batch_size", "8",
        "--learning_rate", "3e-3",
        "--out", str(out),
    ]  # fmt: skip
    proc = _run("finetune_hf.py", args, subprocess_env, repo_root)
    pattern = r"^(before|after) fine-tuning: loss ([\d.]+) .* tokens (\d+)$"
    found = {m[0]: (float(m[1]), int(m[2])) for m in re.findall(pattern, proc.stdout, re.M)}
    (before, tokens), (after, tokens_after) = found["before"], found["after"]
    assert tokens == tokens_after and after < before - 0.5

    # The same validation windows, from the same data pipeline.
    data = LMDatasetConfig(
        validation_urls=[str(root / "validation.jsonl")],
        tokenizer=str(root / "hf_in"),
        cache_dir=str(root / "oracle_cache"),
        cache_options=CacheOptions(backend="local"),
    )
    dataset = data.validation_sets(hax.Axis("position", SEQ_LEN))[""]
    used = len(dataset) // 8 * 8  # full eval batches of 8
    assert tokens == used * (SEQ_LEN - 1)
    windows = np.stack([np.asarray(ex.tokens.array) for ex in dataset.get_batch(range(used))])

    # Loaded correctly: transformers computes the same loss from the original checkpoint.
    assert _hf_loss(root / "hf_in", windows) == pytest.approx(before, abs=1e-4)
    # Exported correctly: transformers loads the fine-tuned files and agrees again.
    assert _hf_loss(out / "hf", windows) == pytest.approx(after, abs=1e-4)
