"""`lm.main.export_lm_to_hf` as a user runs it: config.json's special-token ids are the run
tokenizer's (transformers loads them without complaint), and a bad `--output_dir` is one
clear error before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest
from run_helpers import run_train_lm, tiny_run_yaml, write_tiny_corpus

import lm.config
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
    assert proc.returncode == 2  # a configuration error, as when parsing
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


# ----------------------------------------------------------- a run initialized from an HF checkpoint

TOKENIZER_SIZE = 101


def word_tokenizer(size: int = TOKENIZER_SIZE):
    """A word-level HF tokenizer of `size` tokens: `<s>` is 1, `</s>` is 2, no PAD."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(size)}
    vocab.update({"<unk>": 0, "<s>": 1, "</s>": 2})
    for i in range(3):
        del vocab[f"w{i}"]
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def hf_llama_checkpoint(path, *, vocab_size: int = 128, **overrides):
    """A random HF Llama (Llama 3.1 RoPE, rms_norm_eps 1e-4, 64 positions, eos [2, 0],
    a generation_config.json) saved by transformers with `word_tokenizer()`; returns it."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    kwargs = dict(
        vocab_size=vocab_size,
        max_position_embeddings=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-4,
        rope_parameters=rope,
        bos_token_id=1,
        eos_token_id=[2, 0],
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(LlamaConfig(**kwargs), attn_implementation="eager")
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(0.05 * torch.randn_like(param))
    hf = hf.eval().float()
    hf.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return hf


def save_lm_checkpoint(model, path) -> None:
    """`model` as a train_lm checkpoint directory (the subtree eval_lm and export read)."""
    from lm.checkpoint import save_checkpoint, wait_until_finished

    save_checkpoint({"model": model}, 1, str(path))
    wait_until_finished()


def torch_logits(hf, ids):
    import torch

    with torch.no_grad():
        return hf(torch.from_numpy(ids).long()).logits.numpy()


def lm_logits(model, ids):
    import haliax as hax
    import jax.numpy as jnp
    import numpy as np

    return np.asarray(model(hax.named(jnp.asarray(ids), ("batch", "position"))).array)


@pytest.mark.torch
def test_export_resolves_an_hf_initialized_run_as_train_lm_does(tmp_path):
    """A run from an HF checkpoint with `use_hf_model_config: true` and a YAML model of just
    its type and a shorter seq_len: the export has the checkpoint's architecture (RoPE, norm
    eps), all 128 vocabulary rows, its eos list, context and generation config, and the
    trained model's logits."""
    import json

    import numpy as np
    from transformers import AutoModelForCausalLM

    from lm.main.export_lm_to_hf import ExportLmToHfConfig, main

    source = tmp_path / "src"
    hf = hf_llama_checkpoint(source)
    (source / "generation_config.json").write_text('{"bos_token_id": 1, "eos_token_id": [2, 0]}')
    (tmp_path / "run.yaml").write_text(
        f"model: {{type: llama, seq_len: 32}}\n"
        f"initialize_from_hf: {source}\n"
        "use_hf_model_config: true\n"
        f"data: {{tokenizer: {source}}}\n"
    )
    args = ["--checkpoint_path", str(tmp_path / "ckpt"), "--output_dir", str(tmp_path / "out")]
    config = lm.config.parse(ExportLmToHfConfig, str(tmp_path / "run.yaml"), args=args)
    run_model = config.run_model()
    assert run_model.config.seq_len == 32 and run_model.vocab_size == 128
    converter = run_model.converter
    model = converter.load_pretrained(str(source), config=run_model.config)
    save_lm_checkpoint(model, tmp_path / "ckpt")

    main(config)
    out = tmp_path / "out"
    exported = json.loads((out / "config.json").read_text())
    original = json.loads((source / "config.json").read_text())
    for key in ("rope_parameters", "rms_norm_eps", "vocab_size", "max_position_embeddings"):
        assert exported[key] == original[key], key
    assert (exported["bos_token_id"], exported["eos_token_id"]) == (1, [2, 0])
    assert (out / "generation_config.json").exists()
    ids = np.random.default_rng(0).integers(0, TOKENIZER_SIZE, (2, 32))
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ours = lm_logits(model, ids)
    np.testing.assert_allclose(torch_logits(reloaded, ids), ours, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(torch_logits(hf, ids), ours, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------- model averaging: which weights


def _averaged_checkpoint(tmp_path):
    """A tiny GPT-2 run's checkpoint holding raw weights (`model/`) and an EMA of other
    weights (`model_averaging/`); returns (export config without averaging, raw, averaged)."""
    import jax

    from lm.checkpoint import save_checkpoint, wait_until_finished
    from lm.lm_run import vocab_axis
    from lm.main.export_lm_to_hf import ExportLmToHfConfig
    from lm.optim.model_averaging import EmaModelAveragingConfig
    from lm.partitioning import create_mesh, resolve_mesh_shape

    (tmp_path / "run.yaml").write_text(
        "model: {type: gpt2, seq_len: 32, hidden_dim: 32, num_layers: 1, num_heads: 2}\n"
        "data: {tokenizer: builtin}\n"
    )
    args = ["--checkpoint_path", str(tmp_path / "ckpt"), "--output_dir", str(tmp_path / "raw")]
    config = lm.config.parse(ExportLmToHfConfig, str(tmp_path / "run.yaml"), args=args)
    run_model = config.run_model()
    with jax.set_mesh(create_mesh(resolve_mesh_shape(len(jax.devices())))):
        Vocab = vocab_axis(run_model.vocab_size, config.trainer.parameter_axis_mapping)
        raw = run_model.config.build(Vocab, key=jax.random.PRNGKey(0))
        averaged = run_model.config.build(Vocab, key=jax.random.PRNGKey(1))
        state = {"model": raw, "model_averaging": EmaModelAveragingConfig(0.9).create(averaged)}
        save_checkpoint(state, 9, str(tmp_path / "ckpt" / "step-9"))
        wait_until_finished()
    return config, raw, averaged


def _exported_token_embeddings(path):
    import numpy as np
    from safetensors.numpy import load_file

    tensors = {}
    for f in path.glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    (key,) = [k for k in tensors if k.endswith("wte.weight")]
    return np.asarray(tensors[key])


def _token_embeddings(model, rows):
    import numpy as np

    return np.asarray(model.embeddings.token_embeddings.weight.array)[:rows]


def test_export_says_which_weights_it_exported(tmp_path, capsys):
    """Exporting an EMA checkpoint without `trainer.model_averaging` used to export the raw
    weights silently: a warning says the averaged model is unused, and the printed line says
    which weights were exported."""
    import dataclasses

    import numpy as np

    from lm.main.export_lm_to_hf import main
    from lm.optim.model_averaging import EmaModelAveragingConfig
    from lm.tracker.logs import reset_logging

    config, raw, averaged = _averaged_checkpoint(tmp_path)
    checkpoint = tmp_path / "ckpt" / "step-9"
    averaging = dataclasses.replace(
        config,
        trainer=dataclasses.replace(
            config.trainer, model_averaging=EmaModelAveragingConfig(beta=0.9)
        ),
        output_dir=str(tmp_path / "averaged"),
    )
    try:
        main(config)
        raw_out = capsys.readouterr()
        main(averaging)
        averaged_out = capsys.readouterr()
    finally:
        reset_logging()
    rows = len(load_builtin_tokenizer())

    assert raw_out.out.strip().splitlines()[-1] == (
        f"Exported {checkpoint} (raw weights, not the checkpoint's averaged model) to "
        f"{tmp_path}/raw"
    )
    assert (
        f"Checkpoint {checkpoint} holds an averaged model (model_averaging/), but "
        "trainer.model_averaging is not set: using its raw weights (model/)" in raw_out.err
    )
    np.testing.assert_array_equal(
        _exported_token_embeddings(tmp_path / "raw"), _token_embeddings(raw, rows)
    )

    assert averaged_out.out.strip().splitlines()[-1] == (
        f"Exported {checkpoint} (averaged weights) to {tmp_path}/averaged"
    )
    assert "holds an averaged model" not in averaged_out.err
    np.testing.assert_array_equal(
        _exported_token_embeddings(tmp_path / "averaged"), _token_embeddings(averaged, rows)
    )


@pytest.mark.parametrize("entry", ["export_lm_to_hf", "plan"])
def test_a_missing_local_initialize_from_hf_names_the_field(entry, tmp_path, capsys):
    """Both said `error: missing file: /missing/config.json`, without the field."""
    import importlib

    module = importlib.import_module(f"lm.main.{entry}")
    args = ["--model.type", "gpt2", "--initialize_from_hf", str(tmp_path / "missing")]
    if entry == "export_lm_to_hf":
        args += ["--checkpoint_path", str(tmp_path / "ck"), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as info:
        lm.config.main(module.main)(args=args)
    assert info.value.code == 2
    assert (
        f"error: initialize_from_hf: {tmp_path / 'missing'} does not exist; expected a Hugging "
        "Face checkpoint directory"
    ) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
