"""`lm.main.eval_lm`: checkpoint loading, pooled loss / perplexity / bits per byte."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import sys

import haliax as hax
import jax
import numpy as np
import optax
import pytest
from haliax.partitioning import round_axis_for_partitioning

import lm.config
from lm.checkpoint import load_metadata
from lm.data import load_builtin_tokenizer
from lm.lm_run import MODEL_METADATA_KEY, model_architecture
from lm.main.eval_lm import (
    EvalLmConfig,
    _byte_level_alphabet,
    evaluate_lm,
    load_model_for_eval,
    token_byte_lengths,
)
from lm.models import AttentionMask, LmExample
from lm.models.loss import compute_next_token_loss
from lm.tracker import read_json_log
from lm.trainer import Trainer

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
    "sigma tau upsilon phi chi psi omega def return import class while for if else"
).split()


def _docs(n: int, seed: int) -> list[str]:
    # ASCII only, so the decoded text of any token run has exactly as many bytes as characters.
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(10, 40)))) + "\n" for _ in range(n)]


RUN_YAML = """\
data:
  train_urls: ["{root}/train.jsonl"]
  validation_urls: ["{root}/validation.jsonl"]
  cache_dir: {root}/cache
  tokenizer: builtin
  cache_options:
    backend: local
model:
  type: gpt2
  seq_len: 32
  hidden_dim: 32
  num_layers: 2
  num_heads: 2
  gradient_checkpointing: false
optimizer:
  learning_rate: 0.01
trainer:
  id: evalrun
  num_train_steps: 2
  train_batch_size: 8
  per_device_eval_parallelism: 1
  max_eval_batches: 0
  require_accelerator: false
  log_dir: {root}/logs
  tracker:
    type: json
  watch:
    interval: 0
  model_averaging:
    type: ema
    beta: 0.5
  checkpointer:
    base_path: {root}/ckpt
"""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A 2-step run of a tiny GPT-2 with EMA, checkpointed: (config, final state, Vocab)."""
    root = tmp_path_factory.mktemp("evalrun")
    for split, n, seed in [("train", 60, 0), ("validation", 30, 1)]:
        lines = "".join(json.dumps({"text": d}) + "\n" for d in _docs(n, seed))
        (root / f"{split}.jsonl").write_text(lines)
    (root / "run.yaml").write_text(RUN_YAML.format(root=root))
    config = lm.config.parse(
        EvalLmConfig,
        str(root / "run.yaml"),
        args=["--checkpoint_path", str(root / "ckpt" / "evalrun")],
    )
    tc = config.trainer
    trainer = Trainer(tc, config.optimizer.build(tc.num_train_steps), compute_next_token_loss)
    trainer.checkpoint_metadata[MODEL_METADATA_KEY] = model_architecture(config.model)
    with trainer:
        Vocab = round_axis_for_partitioning(
            hax.Axis("vocab", len(config.data.the_tokenizer)), trainer.parameter_axis_mapping
        )
        train_set = config.data.train_set(config.model.Pos, key=jax.random.PRNGKey(0))
        state = trainer.initial_state(
            jax.random.PRNGKey(1),
            model_init=lambda: config.model.build(Vocab, key=jax.random.PRNGKey(2)),
        )
        info = trainer.train(state, trainer.data_loader(train_set))
    return root, config, info.state, Vocab


def _eval_trainer(config) -> Trainer:
    return Trainer(
        config.trainer, optax.identity(), compute_next_token_loss, add_default_hooks=False
    )


def _assert_same_model(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_loads_the_averaged_or_the_raw_model(trained_run):
    _, config, state, Vocab = trained_run
    trainer = _eval_trainer(config)
    model, path = load_model_for_eval(config, trainer, Vocab)
    assert path.endswith("step-1")
    assert load_metadata(path)["step"] == 1
    # the averaged parameters with the model's non-trainable leaves, as the trainer evaluates
    _assert_same_model(model, state.eval_model)

    raw_config = dataclasses.replace(
        config, trainer=dataclasses.replace(config.trainer, model_averaging=None)
    )
    raw, _ = load_model_for_eval(raw_config, _eval_trainer(raw_config), Vocab)
    _assert_same_model(raw, state.model)
    # EMA with beta 0.5 over two steps differs from the last model
    assert not np.allclose(
        np.asarray(raw.embeddings.token_embeddings.weight.array),
        np.asarray(model.embeddings.token_embeddings.weight.array),
    )


def test_an_averaged_checkpoint_loaded_without_model_averaging_warns(trained_run, caplog):
    """An EMA checkpoint evaluated without `trainer.model_averaging` used to give the raw
    weights silently: a warning says so and how to use the averaged model, and the printed
    result says which weights were evaluated."""
    from lm.lm_run import weights_used
    from lm.main.eval_lm import EvalResult, format_results

    _, config, state, Vocab = trained_run
    raw_config = dataclasses.replace(
        config, trainer=dataclasses.replace(config.trainer, model_averaging=None)
    )
    with caplog.at_level(logging.WARNING, logger="lm.lm_run"):
        raw, path = load_model_for_eval(raw_config, _eval_trainer(raw_config), Vocab)
    _assert_same_model(raw, state.model)
    assert [r.getMessage() for r in caplog.records if r.name == "lm.lm_run"] == [
        f"Checkpoint {path} holds an averaged model (model_averaging/), but "
        "trainer.model_averaging is not set: using its raw weights (model/). To use the "
        "averaged model, set trainer.model_averaging as its run did (the run's config.yaml in "
        "<log_dir>/<run_id>/ records it)"
    ]
    weights = weights_used(path, None)
    assert weights == "raw weights, not the checkpoint's averaged model"
    assert weights_used(path, config.trainer.model_averaging) == "averaged weights"
    result = EvalResult("", total_loss=8.0, num_tokens=4, num_bytes=None, num_batches=1, seconds=0)
    first = format_results({"": result}, path, 1, weights=weights).splitlines()[0]
    assert first == f"Evaluated {path} (step 1, raw weights, not the checkpoint's averaged model):"


def test_model_averaging_for_a_checkpoint_without_an_averaged_model_says_so(
    trained_run, tmp_path, caplog
):
    """`trainer.model_averaging` set for a run trained without it used to fail with `holds
    none of the 12 leaves the target needs`."""
    from lm.checkpoint import save_checkpoint, wait_until_finished
    from lm.lm_run import weights_used

    _, config, state, Vocab = trained_run
    save_checkpoint(
        {"model": state.model, "model_averaging": None}, 1, str(tmp_path / "r" / "step-1")
    )
    wait_until_finished()
    plain = dataclasses.replace(config, checkpoint_path=str(tmp_path / "r"))
    # a configuration error (exit status 2), as a ValueError is
    with pytest.raises(lm.config.SetupConfigError) as error:
        load_model_for_eval(plain, _eval_trainer(plain), Vocab)
    assert str(error.value) == (
        "trainer.model_averaging is set ({type: ema, beta: 0.5}), but checkpoint "
        f"{tmp_path}/r/step-1 holds no averaged model: its run trained without model "
        "averaging. Remove trainer.model_averaging (or pass --trainer.model_averaging null) to "
        "use the checkpoint's weights"
    )
    # without it: the checkpoint's weights, nothing to warn about
    raw_config = dataclasses.replace(
        plain, trainer=dataclasses.replace(config.trainer, model_averaging=None)
    )
    with caplog.at_level(logging.WARNING, logger="lm.lm_run"):
        raw, path = load_model_for_eval(raw_config, _eval_trainer(raw_config), Vocab)
    _assert_same_model(raw, state.model)
    assert not [r for r in caplog.records if r.name == "lm.lm_run"]
    assert weights_used(path, None) == "raw weights"


def test_model_averaging_null_on_the_command_line_turns_it_off():
    config = lm.config.parse(
        EvalLmConfig,
        args=["--checkpoint_path", "c", "--trainer.model_averaging", "{type: ema, beta: 0.9}"],
    )
    assert config.trainer.model_averaging is not None
    off = lm.config.parse(
        EvalLmConfig,
        args=[
            "--checkpoint_path",
            "c",
            "--trainer.model_averaging",
            "{type: ema, beta: 0.9}",
            "--trainer.model_averaging",
            "null",
        ],
    )
    assert off.trainer.model_averaging is None


def test_a_model_config_other_than_the_trained_one_is_refused(trained_run, caplog):
    """Weights of the right shapes load into any config: an edited activation would evaluate
    (or export) a function nobody trained. Runtime fields (the attention backend) are free."""
    _, config, _, Vocab = trained_run
    saved = load_metadata(f"{config.checkpoint_path}/step-1")[MODEL_METADATA_KEY]
    assert saved["activation_function"] == "gelu_new" == config.model.activation_function.name
    other = dataclasses.replace(
        config, model=dataclasses.replace(config.model, activation_function="relu")
    )
    with pytest.raises(lm.config.SetupConfigError) as info:
        load_model_for_eval(other, _eval_trainer(config), Vocab)
    assert str(info.value).startswith("the model config does not match checkpoint ")
    assert "model.activation_function: relu (checkpoint: gelu_new)" in str(info.value)
    runtime = dataclasses.replace(
        config, model=dataclasses.replace(config.model, attn_backend="vanilla")
    )
    load_model_for_eval(runtime, _eval_trainer(config), Vocab)


def test_a_model_of_other_shapes_names_the_fields_that_differ(trained_run):
    """A `--model.hidden_dim` other than the trained one failed in the restore with a leaf's
    shapes (exit 1, traceback in the log); it is the configuration error naming the field."""
    _, config, _, Vocab = trained_run
    wider = dataclasses.replace(
        config, model=dataclasses.replace(config.model, hidden_dim=2 * config.model.hidden_dim)
    )
    with pytest.raises(lm.config.SetupConfigError) as info:
        load_model_for_eval(wider, _eval_trainer(config), Vocab)
    assert str(info.value).startswith("the model config does not match checkpoint ")
    assert (
        f"model.hidden_dim: {2 * config.model.hidden_dim} "
        f"(checkpoint: {config.model.hidden_dim})" in str(info.value)
    )


def test_recorded_architecture_differences_name_each_field_and_skip_unknown_ones(caplog):
    """The record is compared as an HF checkpoint's config is: the same function under another
    spelling is no difference; runtime fields and fields lm added since are not compared."""
    from lm.lm_run import _recorded_architecture_differences
    from lm.models import Gpt2Config, LlamaConfig

    given = LlamaConfig(
        hidden_dim=32, intermediate_dim=64, num_layers=1, num_heads=4, num_kv_heads=2
    )
    saved = model_architecture(given)
    assert _recorded_architecture_differences(given, saved, "ckpt") == []
    assert saved["activation_function"] == "silu"
    swish = {**saved, "activation_function": "swish", "head_dim": 8, "brand_new_field": 1}
    assert _recorded_architecture_differences(given, swish, "ckpt") == []
    # a runtime field is the given config's, whatever the checkpoint recorded
    longer = dataclasses.replace(given, seq_len=4096, attn_backend="vanilla")
    assert _recorded_architecture_differences(longer, saved, "ckpt") == []
    theta = dataclasses.replace(given, rope=dataclasses.replace(given.rope, theta=5e5))
    assert _recorded_architecture_differences(theta, saved, "ckpt") == [
        "model.rope: {type: default, theta: 500000.0, factor: 1.0} (checkpoint: {type: "
        "default, theta: 10000.0, factor: 1.0})"
    ]
    wider = dataclasses.replace(given, hidden_dim=64)
    assert _recorded_architecture_differences(wider, saved, "ckpt") == [
        "model.hidden_dim: 64 (checkpoint: 32)"
    ]
    assert _recorded_architecture_differences(Gpt2Config(), saved, "ckpt") == [
        "model.type: gpt2 (checkpoint: llama)"
    ]
    # a record this lm cannot decode is not compared, and says so
    caplog.set_level(logging.WARNING, logger="lm.lm_run")
    odd = {**saved, "activation_function": "no_such_activation"}
    assert _recorded_architecture_differences(given, odd, "ckpt") == []
    assert "ckpt records a model architecture this lm cannot read" in caplog.text


def test_missing_checkpoint_names_the_path(trained_run, tmp_path):
    _, config, _, Vocab = trained_run
    missing = dataclasses.replace(config, checkpoint_path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"checkpoint_path '.*nowhere'"):
        load_model_for_eval(missing, _eval_trainer(config), Vocab)


def test_a_local_checkpoint_path_must_be_a_directory(tmp_path):
    """Checked by eval_lm and the export before the tokenizer and model are set up; a file
    used to fail in the checkpoint reader without naming the flag."""
    from lm.lm_run import check_checkpoint_path

    (tmp_path / "afile").write_text("")
    check_checkpoint_path(str(tmp_path))
    check_checkpoint_path("memory://somewhere")  # remote: checked when read
    for name, what in [("afile", "is a file"), ("nowhere", "does not exist")]:
        with pytest.raises(lm.config.FieldError) as info:
            check_checkpoint_path(str(tmp_path / name))
        assert str(info.value).startswith(f"checkpoint_path: {tmp_path / name} {what}; give a run")


def test_checkpoint_path_is_required():
    """Without the note that a problem is about a default: not setting it is the problem."""
    with pytest.raises(lm.config.ConfigError, match="checkpoint_path: is required") as info:
        lm.config.parse(EvalLmConfig, args=["--model.type", "gpt2"])
    assert "default" not in str(info.value), str(info.value)


def test_max_eval_batches_0_evaluates_every_batch(caplog):
    """0 turns train_lm's evaluation off; a run config that trained that way made eval_lm fail
    after loading the model, blaming the validation set's size."""
    from lm.main.eval_lm import eval_batch_cap

    with caplog.at_level(logging.INFO, logger="lm.main.eval_lm"):
        assert eval_batch_cap(0) is None
    assert "evaluating every batch of each validation set" in caplog.text
    assert eval_batch_cap(None) is None and eval_batch_cap(3) == 3


def _reference(model, windows, tokenizer) -> tuple[float, int, int]:
    """Pooled cross-entropy from the model's logits in float64, and the UTF-8 bytes of the
    predicted tokens' decoded text."""
    Batch = hax.Axis("batch", len(windows))
    ids = np.stack([np.asarray(w.tokens.array) for w in windows])
    segments = np.stack([np.asarray(w.segment_ids.array) for w in windows])
    loss_mask = np.stack([np.asarray(w.loss_mask.array) for w in windows])
    example = LmExample(
        tokens=hax.named(jax.numpy.asarray(ids), (Batch, model.Pos)),
        loss_mask=hax.named(jax.numpy.asarray(loss_mask), (Batch, model.Pos)),
        segment_ids=hax.named(jax.numpy.asarray(segments), (Batch, model.Pos)),
    )
    mask = loss_mask[:, :-1]  # the last position predicts nothing
    logits = np.asarray(
        model(example.tokens, AttentionMask.from_example(example)).array, dtype=np.float64
    )[:, :-1]
    top = logits.max(-1, keepdims=True)
    logz = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    nll = logz - np.take_along_axis(logits, ids[:, 1:, None], -1)[..., 0]
    num_bytes = sum(
        len(tokenizer.decode(ids[i, 1:][mask[i]].tolist(), skip_special_tokens=True).encode())
        for i in range(len(windows))
    )
    return float(nll[mask].sum()), int(mask.sum()), num_bytes


@pytest.fixture(scope="session")
def first_batch_result(trained_run):
    """evaluate_lm on the first eval batch (8 windows over the 8 fake devices)."""
    _, config, _, Vocab = trained_run
    trainer = _eval_trainer(config)
    tokenizer = config.data.the_tokenizer
    with trainer:
        model, _ = load_model_for_eval(config, trainer, Vocab)
        dataset = config.data.validation_sets(config.model.Pos)[""]
        result = evaluate_lm(
            trainer,
            model,
            dataset,
            byte_lengths=token_byte_lengths(tokenizer, Vocab.size),
            max_batches=1,
        )
    return model, dataset, result


def test_evaluate_matches_a_float64_reference(trained_run, first_batch_result):
    _, config, _, _ = trained_run
    model, dataset, result = first_batch_result
    assert trained_run[1].trainer.EvalBatch.size == 8 and result.num_batches == 1
    windows = dataset.get_batch(list(range(8)))
    # the windows cross document boundaries, so some positions are masked out
    assert any(np.asarray(w.segment_ids.array).max() > 0 for w in windows)
    total, tokens, num_bytes = _reference(model, windows, config.data.the_tokenizer)
    assert result.num_tokens == tokens < 8 * 31
    assert result.num_bytes == num_bytes
    assert result.loss == pytest.approx(total / tokens, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / tokens), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(total / (math.log(2) * num_bytes), rel=1e-5)
    metrics = result.metrics()
    assert metrics["eval/loss"] == result.loss and metrics["eval/bpb"] == result.bits_per_byte


def test_a_vocabulary_padded_for_the_mesh_gives_the_same_loss(trained_run, first_batch_result):
    """Rows added to the vocabulary for the mesh (here 3 of them, filled with large values)
    get no probability with valid_vocab: the loss is that of the unpadded model."""
    import haliax as hax
    import jax

    _, config, _, Vocab = trained_run
    model, dataset, result = first_batch_result
    padded = model.resize_vocab(Vocab.size + 3, key=jax.random.PRNGKey(0))

    def loud_padding(x):  # the padding rows of every vocab-sized table: large values
        if not (hax.is_named_array(x) and "vocab" in [a.name for a in x.axes]):
            return x
        rows = hax.arange(x.resolve_axis("vocab")) >= Vocab.size
        return hax.where(rows, 5.0 * x["vocab", 0], x)

    padded = jax.tree_util.tree_map(loud_padding, padded, is_leaf=hax.is_named_array)
    trainer = _eval_trainer(config)
    with trainer:
        got = evaluate_lm(trainer, padded, dataset, max_batches=1, valid_vocab=Vocab.size)
        unmasked = evaluate_lm(trainer, padded, dataset, max_batches=1)
    # (the barely trained model's logits are near uniform: 3 more rows move its loss by ~4e-5)
    assert got.loss == pytest.approx(result.loss, rel=1e-6)
    assert unmasked.loss != pytest.approx(result.loss, rel=1e-5)


# ---------------------------------------------------------------------------- bytes per token

TEXTS = [
    "def f(x):\n\treturn x ** 2  # square\n",
    "naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어",
    "emoji 🙂🚀 and a flag 🇫🇷, zero-width\u200bjoiner, NBSP\u00a0here, soft\u00adhyphen",
    "control \x00\x01\x7f bytes, CRLF\r\nand trailing spaces   ",
    "",
]


def test_byte_level_alphabet_is_the_gpt2_one():
    from tokenizers import pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    reference = {ch: b for b, ch in bytes_to_unicode().items()}
    assert _byte_level_alphabet() == reference
    assert set(_byte_level_alphabet()) == set(pre_tokenizers.ByteLevel.alphabet())


@pytest.mark.parametrize("text", TEXTS)
def test_byte_lengths_sum_to_the_utf8_length(text):
    tokenizer = load_builtin_tokenizer()
    lengths = token_byte_lengths(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


def test_byte_lengths_special_tokens_and_padding():
    tokenizer = load_builtin_tokenizer()
    lengths = token_byte_lengths(tokenizer, len(tokenizer) + 8)
    assert lengths.dtype == np.int32 and len(lengths) == len(tokenizer) + 8
    assert lengths[tokenizer.eos_token_id] == 0
    assert (lengths[len(tokenizer) :] == 0).all()
    assert (lengths[: len(tokenizer)] > 0).sum() == len(tokenizer) - 1
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        token_byte_lengths(tokenizer, 10)


def test_byte_lengths_of_a_word_level_tokenizer_decode_each_token(caplog):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "héllo": 1, "wörld": 2, "!": 3}, "[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with caplog.at_level(logging.WARNING, logger="lm.main.eval_lm"):
        lengths = token_byte_lengths(tokenizer)
    assert lengths.tolist() == [0, 6, 6, 1]
    assert "approximate" in caplog.text


# ---------------------------------------------------------------------------- entry point


@pytest.mark.entry
def test_eval_lm_cli_prints_and_logs(trained_run, first_batch_result, subprocess_env, repo_root):
    root, config, _, _ = trained_run
    _, _, result = first_batch_result
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm.main.eval_lm",
            "--config_path",
            str(root / "run.yaml"),
            "--checkpoint_path",
            config.checkpoint_path,
            # one device in the subprocess: 8 batches of 1 are the same 8 windows
            "--trainer.max_eval_batches",
            "8",
        ],
        env=subprocess_env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    # the run trained with EMA, and its config sets trainer.model_averaging
    assert lines[0].startswith("Evaluated ")
    assert lines[0].endswith("step-1 (step 1, averaged weights):")
    header, row = lines[1].split(), lines[2].split()
    assert header == ["set", "loss", "perplexity", "bits/byte", "tokens", "batches"]
    assert row[0] == "(default)"
    assert float(row[1]) == pytest.approx(result.loss, abs=1e-4)
    assert float(row[3]) == pytest.approx(result.bits_per_byte, abs=1e-4)
    assert row[4] == f"{result.num_tokens:,}" and row[5] == "8"

    records = read_json_log(str(root / "logs" / "evalrun" / "metrics.jsonl"))
    logged = [r for r in records if r["event"] == "log" and "eval/bpb" in r["metrics"]]
    assert len(logged) == 1 and logged[0]["step"] == 1
    assert logged[0]["metrics"]["eval/loss"] == pytest.approx(result.loss, rel=1e-5)
    assert logged[0]["metrics"]["eval/tokens"] == result.num_tokens


def test_tags_pool_their_sets_tokens_and_bytes():
    from lm.main.eval_lm import EvalResult, pool_by_tag

    a = EvalResult("a", total_loss=30.0, num_tokens=10, num_bytes=40, num_batches=2, seconds=1.0)
    b = EvalResult("b", total_loss=10.0, num_tokens=10, num_bytes=20, num_batches=1, seconds=0.5)
    c = EvalResult("c", total_loss=8.0, num_tokens=4, num_bytes=None, num_batches=1, seconds=0.2)
    pooled = pool_by_tag({"a": a, "b": b, "c": c}, {"a": ["web", "all"], "b": ["all"], "c": ["x"]})
    assert sorted(pooled) == ["all", "web", "x"]
    assert pooled["all"].loss == 2.0  # 40 nats over 20 tokens, not the mean of 3.0 and 1.0
    assert pooled["all"].bits_per_byte == pytest.approx(40.0 / (math.log(2) * 60))
    assert pooled["all"].num_batches == 3 and pooled["all"].prefix == "eval/all"
    assert pooled["web"].loss == a.loss
    assert pooled["x"].bits_per_byte is None  # a set without bytes: no pooled bits per byte
    assert pool_by_tag({"a": a}, {"a": [], "zzz": ["t"]}) == {}


@pytest.mark.torch
def test_an_hf_initialized_run_is_loaded_with_the_checkpoints_architecture(tmp_path):
    """`use_hf_model_config: true` with a YAML model of just its type: eval_lm builds the
    checkpoint's architecture (Llama 3.1 RoPE, its norm eps, all 128 vocabulary rows) and
    the YAML's seq_len, as train_lm trained it, instead of LlamaConfig's defaults."""
    from test_export_lm_to_hf import (
        hf_llama_checkpoint,
        lm_logits,
        save_lm_checkpoint,
        torch_logits,
    )

    source = tmp_path / "src"
    hf = hf_llama_checkpoint(source)
    (tmp_path / "run.yaml").write_text(
        f"model: {{type: llama, seq_len: 32}}\n"
        f"initialize_from_hf: {source}\n"
        "use_hf_model_config: true\n"
        f"data: {{tokenizer: {source}}}\n"
    )
    config = lm.config.parse(
        EvalLmConfig, str(tmp_path / "run.yaml"), args=["--checkpoint_path", str(tmp_path / "c")]
    )
    run_model = config.run_model()
    saved = run_model.converter.load_pretrained(str(source), config=run_model.config)
    save_lm_checkpoint(saved, tmp_path / "c")
    trainer = _eval_trainer(config)
    Vocab = hax.Axis("vocab", run_model.vocab_size)  # the parameter mapping does not shard it
    model, _ = load_model_for_eval(config, trainer, Vocab)
    assert model.config == run_model.config and model.config.seq_len == 32
    ids = np.random.default_rng(0).integers(0, 101, (2, 32))
    np.testing.assert_allclose(lm_logits(model, ids), torch_logits(hf, ids), atol=1e-4, rtol=1e-4)
