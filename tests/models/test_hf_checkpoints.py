"""HF round trips: transformers checkpoints in, our checkpoints out (reloaded in transformers)."""

import dataclasses
import json
import os

import equinox as eqx
import fsspec
import haliax as hax
import jax
import numpy as np
import pytest
from helpers import random_model
from hf_oracle import assert_trees_equal, hf_logits, hf_model_from_config

from lm.models import (
    Gpt2Config,
    Llama3RotaryEmbeddingsConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)
from lm.models.hf.converter import SAFETENSORS_FILE, HFCheckpointConverter, read_hf_weights
from lm.units import parse_size

VOCAB = 101
Vocab = hax.Axis("vocab", VOCAB)
LLAMA = dict(seq_len=64, hidden_dim=32, intermediate_dim=48, num_layers=2, num_heads=4)

CASES = {
    "gpt2": Gpt2Config(seq_len=64, hidden_dim=32, num_layers=2, num_heads=4),
    "llama_mha_untied": LlamaConfig(**LLAMA, num_kv_heads=4),
    "llama_gqa_tied_llama3_rope": LlamaConfig(
        **LLAMA,
        num_kv_heads=2,
        tie_word_embeddings=True,
        rope=Llama3RotaryEmbeddingsConfig(original_max_position_embeddings=16),
    ),
    "mistral_window": MistralConfig(**LLAMA, num_kv_heads=2, sliding_window=8),
    "qwen2": Qwen2Config(**LLAMA, num_kv_heads=2),
    "qwen3": Qwen3Config(**LLAMA, num_kv_heads=1, head_dim=16),
}


def _tokens(batch=2, seq=64, seed=1):
    ids = jax.random.randint(jax.random.PRNGKey(seed), (batch, seq), 0, VOCAB)
    return hax.named(ids, ("batch", "position"))


_logits = eqx.filter_jit(lambda model, tokens: model(tokens).array)


@pytest.mark.torch
@pytest.mark.parametrize("name", list(CASES))
def test_hf_round_trip(name, tmp_path):
    from transformers import AutoModelForCausalLM

    config = CASES[name]
    tokens = _tokens()

    # HF -> lm: a random transformers model saved by transformers, loaded by us.
    hf = hf_model_from_config(config.to_hf_config(VOCAB))
    hf.save_pretrained(tmp_path / "hf")
    converter = config.hf_checkpoint_converter()
    assert converter.config_from_hf_checkpoint(str(tmp_path / "hf")) == dataclasses.replace(
        config, gradient_checkpointing=True
    )
    model = converter.load_pretrained(str(tmp_path / "hf"), config=config)
    ours = _logits(model, tokens)
    np.testing.assert_allclose(ours, hf_logits(hf, tokens.array), atol=1e-4, rtol=1e-4)

    # lm -> HF: our export, reloaded by transformers.
    converter.save_pretrained(model, str(tmp_path / "ours"))
    reloaded_hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(reloaded_hf).__name__ == config.hf_architecture
    np.testing.assert_allclose(hf_logits(reloaded_hf, tokens.array), ours, atol=1e-4, rtol=1e-4)

    # Our export read back by us is bit-exact.
    again = converter.load_pretrained(str(tmp_path / "ours"), config=config)
    assert_trees_equal(eqx.filter(model, eqx.is_array), eqx.filter(again, eqx.is_array))


@pytest.fixture(scope="module")
def llama_model():
    return random_model(CASES["llama_gqa_tied_llama3_rope"], Vocab)


@pytest.mark.torch
def test_sharded_safetensors_reload_in_hf_and_bit_exact(llama_model, tmp_path):
    from transformers import AutoModelForCausalLM

    converter = llama_model.config.hf_checkpoint_converter()
    converter.save_pretrained(llama_model, str(tmp_path), max_shard_size=1024)
    shards = sorted(p for p in os.listdir(tmp_path) if p.endswith(".safetensors"))
    assert len(shards) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    back = converter.load_pretrained(str(tmp_path))
    assert_trees_equal(eqx.filter(llama_model, eqx.is_array), eqx.filter(back, eqx.is_array))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens = _tokens(batch=1)
    np.testing.assert_allclose(
        hf_logits(hf, tokens.array), _logits(llama_model, tokens), atol=1e-4, rtol=1e-4
    )


@pytest.mark.torch
def test_an_export_over_an_earlier_one_leaves_only_its_own_weights(llama_model, tmp_path):
    """A single-file export over a sharded one (and back) must not leave the other form's
    files: HF would load the stale ones, lm the new ones."""
    from transformers import AutoModelForCausalLM

    other = random_model(CASES["llama_gqa_tied_llama3_rope"], Vocab, seed=7)
    converter = llama_model.config.hf_checkpoint_converter()
    converter.save_pretrained(other, str(tmp_path), max_shard_size=1024)
    (tmp_path / "pytorch_model.bin").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("mine")
    converter.save_pretrained(llama_model, str(tmp_path))
    weights = sorted(p for p in os.listdir(tmp_path) if "model" in p and "tokenizer" not in p)
    assert weights == ["model.safetensors"]
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not a weight file: kept
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens = _tokens(batch=1)
    np.testing.assert_allclose(
        hf_logits(hf, tokens.array), _logits(llama_model, tokens), atol=1e-4, rtol=1e-4
    )
    converter.save_pretrained(other, str(tmp_path), max_shard_size=1024)
    assert SAFETENSORS_FILE not in os.listdir(tmp_path)
    back = converter.load_pretrained(str(tmp_path))
    assert_trees_equal(eqx.filter(other, eqx.is_array), eqx.filter(back, eqx.is_array))


def test_an_export_into_a_checkpoint_directory_is_refused(llama_model, tmp_path):
    (tmp_path / "metadata.json").write_text('{"step": 3}')
    converter = llama_model.config.hf_checkpoint_converter()
    with pytest.raises(ValueError, match=r"holds an lm checkpoint \(metadata.json\); export to"):
        converter.save_pretrained(llama_model, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["metadata.json"]


def test_padded_vocab_is_trimmed_on_export(tmp_path):
    config = CASES["llama_mha_untied"]
    padded = random_model(config, hax.Axis("vocab", 128))
    converter = config.hf_checkpoint_converter()
    converter.save_pretrained(padded, str(tmp_path), vocab_size=VOCAB)
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == VOCAB
    back = converter.load_pretrained(str(tmp_path))
    assert back.Vocab.size == VOCAB
    np.testing.assert_array_equal(back.get_lm_head().array, padded.get_lm_head().array[:VOCAB])
    np.testing.assert_array_equal(
        back.embeddings.token_embeddings.weight.array,
        padded.embeddings.token_embeddings.weight.array[:VOCAB],
    )
    with pytest.raises(
        ValueError, match=r"vocab_size \(200\) is larger than the model's vocabulary \(128\)"
    ):
        converter.save_pretrained(padded, str(tmp_path / "x"), vocab_size=200)


def test_save_and_load_through_fsspec_memory(llama_model):
    converter = llama_model.config.hf_checkpoint_converter()
    converter.save_pretrained(llama_model, "memory://export/llama", dtype="bfloat16")
    weights, source = read_hf_weights("memory://export/llama")
    assert source.endswith("model.safetensors")
    assert {str(w.dtype) for w in weights.values()} == {"bfloat16"}
    back = converter.load_pretrained("memory://export/llama")
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(llama_model, eqx.is_array)),
        jax.tree_util.tree_leaves(eqx.filter(back, eqx.is_array)),
        strict=True,
    ):
        np.testing.assert_array_equal(
            np.asarray(b), np.asarray(a.astype("bfloat16")).astype(np.float32)
        )
    assert HFCheckpointConverter.for_checkpoint("memory://export/llama").config_class is LlamaConfig


class NotATensor:
    """An arbitrary pickled object: torch.load(weights_only=True) must refuse it."""


@pytest.mark.torch
def test_pytorch_bin_checkpoints_load_and_pickles_are_refused(llama_model, tmp_path):
    import torch

    converter = llama_model.config.hf_checkpoint_converter()
    converter.save_pretrained(llama_model, str(tmp_path / "st"))
    weights, _ = read_hf_weights(str(tmp_path / "st"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(
        {k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
        tmp_path / "bin" / "pytorch_model.bin",
    )
    back = converter.load_pretrained(str(tmp_path / "bin"))
    assert_trees_equal(eqx.filter(llama_model, eqx.is_array), eqx.filter(back, eqx.is_array))

    torch.save({"weights": NotATensor()}, tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing to load"):
        converter.load_pretrained(str(tmp_path / "bin"))


def test_missing_or_malformed_checkpoint_files_are_named(llama_model, tmp_path):
    converter = llama_model.config.hf_checkpoint_converter()
    with pytest.raises(FileNotFoundError, match=f"missing file: {tmp_path}/nothing/config.json"):
        converter.load_pretrained(str(tmp_path / "nothing"))
    converter.save_pretrained(llama_model, str(tmp_path / "ckpt"), max_shard_size="2KB")
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[0]
    os.remove(tmp_path / "ckpt" / victim)
    with pytest.raises(FileNotFoundError, match=f"missing file: .*{victim}"):
        converter.load_pretrained(str(tmp_path / "ckpt"))
    os.remove(tmp_path / "ckpt" / "model.safetensors.index.json")
    with pytest.raises(FileNotFoundError, match="no weights in .*expected model.safetensors"):
        converter.load_pretrained(str(tmp_path / "ckpt"))
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        converter.load_pretrained(str(tmp_path / "ckpt"))


def test_wrong_architecture_and_hub_ids_offline_are_clear_errors(llama_model, tmp_path):
    llama_model.config.hf_checkpoint_converter().save_pretrained(llama_model, str(tmp_path))
    with pytest.raises(ValueError, match="model_type is 'llama' but this converter is for 'gpt2'"):
        Gpt2Config().hf_checkpoint_converter().load_pretrained(str(tmp_path))
    with pytest.raises(
        FileNotFoundError,
        match="not a local directory, and fetching it as a Hugging Face Hub repo failed",
    ):
        HFCheckpointConverter(LlamaConfig).load_pretrained("no-such-org/no-such-model")


def test_checkpoint_shapes_must_match_the_given_config(llama_model, tmp_path):
    converter = llama_model.config.hf_checkpoint_converter()
    converter.save_pretrained(llama_model, str(tmp_path))
    wider = dataclasses.replace(llama_model.config, intermediate_dim=64)
    with pytest.raises(
        ValueError, match=r"shape mismatches: model\.layers\.0\.mlp\.down_proj\.weight: \(32, 48\)"
    ):
        converter.load_pretrained(str(tmp_path), config=wider)


def test_tokenizer_is_saved_and_loaded(llama_model, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"<unk>": VOCAB - 1}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    converter = llama_model.config.hf_checkpoint_converter()
    converter.save_pretrained(llama_model, str(tmp_path), tokenizer=tokenizer)
    assert (tmp_path / "tokenizer.json").exists()
    loaded = converter.load_tokenizer(str(tmp_path))
    assert loaded("w3 w7 zzz")["input_ids"] == [3, 7, VOCAB - 1]


@pytest.mark.parametrize("flag", ["hybrid_norm", "input_embedding_norm"])
def test_llama_features_hf_cannot_express_raise(flag):
    config = dataclasses.replace(CASES["llama_mha_untied"], **{flag: True})
    with pytest.raises(
        ValueError, match="hybrid_norm and input_embedding_norm have no HF equivalent"
    ):
        config.to_hf_config(VOCAB)


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2KiB") == 2048
    assert parse_size(1234) == 1234
    with pytest.raises(ValueError, match="cannot read 'lots' as a size"):
        parse_size("lots")


def test_load_pretrained_stages_on_the_host_and_places_each_shard(
    llama_model, tmp_path, monkeypatch
):
    # A 2x2 mesh on devices 4-7 whose device 4 is also the default device, as an accelerator
    # is: the full tensors must be cast and unstacked on the host's CPU device, never on it.
    from jax.sharding import Mesh, NamedSharding

    import lm.models.hf.compat as compat

    converter = llama_model.config.hf_checkpoint_converter()
    converter.save_pretrained(llama_model, str(tmp_path))
    devices = jax.devices()[4:8]
    mesh = Mesh(np.array(devices).reshape(2, 2), ("data", "model"))
    mapping = {"embed": "data", "mlp": "model", "heads": "model"}
    staged = []
    original = compat._on_host

    def recording(arrays, dtype, host):
        out = original(arrays, dtype, host)
        staged.extend(out.values())
        return out

    monkeypatch.setattr(compat, "_on_host", recording)
    with jax.set_mesh(mesh), jax.default_device(devices[0]):
        back = converter.load_pretrained(str(tmp_path), axis_mapping=mapping)

    host = jax.local_devices(backend="cpu")[0]
    assert staged and all(a.devices() == {host} for a in staged)
    params = eqx.filter(back, eqx.is_array, is_leaf=lambda x: isinstance(x, hax.NamedArray))
    for leaf in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, hax.NamedArray)):
        expected = NamedSharding(mesh, hax.partitioning.pspec_for_axis(leaf.axes, mapping))
        assert leaf.array.sharding.is_equivalent_to(expected, leaf.array.ndim)
        if any(ax.name in mapping for ax in leaf.axes):
            shard = leaf.array.addressable_shards[0].data
            assert shard.size < leaf.array.size  # each device holds only its part
    assert_trees_equal(eqx.filter(llama_model, eqx.is_array), eqx.filter(back, eqx.is_array))


def test_load_pretrained_with_a_mapping_but_no_mesh_is_a_clear_error(llama_model, tmp_path):
    converter = llama_model.config.hf_checkpoint_converter()
    converter.save_pretrained(llama_model, str(tmp_path))
    with pytest.raises(ValueError, match="axis_mapping but no mesh"):
        converter.load_pretrained(str(tmp_path), axis_mapping={"embed": "data"})


def _word_tokenizer(specials: dict[str, int]):
    """A word-level tokenizer over VOCAB ids whose named special tokens sit at given ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"<unk>": VOCAB - 1}
    names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    for field, token_id in specials.items():
        del vocab[f"w{token_id}"]
        vocab[names[field]] = token_id
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", **{f: names[f] for f in specials}
    )


@pytest.fixture
def transformers_warnings():
    """Warnings transformers logs (its logger does not propagate to caplog), with its
    `warning_once` memory cleared so an earlier test cannot hide one."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    yield records
    hf_logger.removeHandler(handler)


def _reloaded_ids(path) -> tuple:
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(path))
    return hf_config.bos_token_id, hf_config.eos_token_id, hf_config.pad_token_id


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "specials, expected",
    [
        (dict(bos_token=3, eos_token=7, pad_token=9), (3, 7, 9)),
        (dict(eos_token=0), (None, 0, None)),  # the builtin tokenizer's layout, minus BOS
        ({}, (None, None, None)),  # passthrough-like: no special tokens at all
    ],
    ids=["bos_eos_pad", "eos_only", "none"],
)
def test_special_token_ids_come_from_the_tokenizer(
    name, specials, expected, tmp_path, transformers_warnings
):
    model = random_model(CASES[name], Vocab)
    tokenizer = _word_tokenizer(specials)
    CASES[name].hf_checkpoint_converter().save_pretrained(model, str(tmp_path), tokenizer=tokenizer)
    assert _reloaded_ids(tmp_path) == expected
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == expected
    assert not [m for m in transformers_warnings if "token_id" in m], transformers_warnings


def test_builtin_tokenizer_ids_and_passthrough_none(tmp_path, transformers_warnings):
    from lm.data import load_builtin_tokenizer
    from lm.data.tokenizer import passthrough_tokenizer

    builtin = load_builtin_tokenizer()
    config = CASES["gpt2"]
    model = random_model(config, hax.Axis("vocab", len(builtin)))
    converter = config.hf_checkpoint_converter()
    converter.save_pretrained(model, str(tmp_path / "b"), tokenizer=builtin)
    eos = builtin.convert_tokens_to_ids("<|endoftext|>")
    assert _reloaded_ids(tmp_path / "b") == (eos, eos, None)
    small = random_model(config, Vocab)
    converter.save_pretrained(small, str(tmp_path / "p"), tokenizer=passthrough_tokenizer(VOCAB))
    assert _reloaded_ids(tmp_path / "p") == (None, None, None)
    assert not [m for m in transformers_warnings if "token_id" in m], transformers_warnings


@pytest.mark.parametrize("name, expected", [("gpt2", (None, None, None)), ("qwen2", (None,) * 3)])
def test_without_a_tokenizer_out_of_vocab_defaults_become_none(
    name, expected, tmp_path, transformers_warnings
):
    # GPT-2's default <|endoftext|> id (50256) is not in a 101-token vocabulary.
    CASES[name].hf_checkpoint_converter().save_pretrained(
        random_model(CASES[name], Vocab), str(tmp_path)
    )
    assert _reloaded_ids(tmp_path) == expected
    assert not [m for m in transformers_warnings if "token_id" in m], transformers_warnings


def test_without_a_tokenizer_in_vocab_defaults_are_kept(llama_model, tmp_path):
    llama_model.config.hf_checkpoint_converter().save_pretrained(llama_model, str(tmp_path))
    assert _reloaded_ids(tmp_path) == (1, 2, None)  # HF Llama's defaults


def test_out_of_vocab_special_token_ids_are_errors(llama_model, tmp_path):
    converter = llama_model.config.hf_checkpoint_converter()
    big = _word_tokenizer({"eos_token": 5})
    big.add_special_tokens({"bos_token": "<new-bos>"})  # id 101: beyond the model's 101 tokens
    with pytest.raises(ValueError, match=r"tokenizer's bos_token_id \(101\) is outside the vocab"):
        converter.save_pretrained(llama_model, str(tmp_path / "a"), tokenizer=big)
    with pytest.raises(
        ValueError, match=r"config_overrides\['eos_token_id'\] \(50256\) is outside the vocab"
    ):
        converter.save_pretrained(
            llama_model, str(tmp_path / "b"), config_overrides={"eos_token_id": 50256}
        )
    converter.save_pretrained(
        llama_model, str(tmp_path / "c"), tokenizer=big, config_overrides={"bos_token_id": 4}
    )
    assert _reloaded_ids(tmp_path / "c") == (4, 5, None)  # overrides win over the tokenizer


def test_saving_to_a_file_is_a_clear_error(llama_model, tmp_path):
    converter = llama_model.config.hf_checkpoint_converter()
    target = tmp_path / "export_file"
    target.write_text("keep me")
    with pytest.raises(ValueError, match=rf"^output_dir: {target} is a file, not a directory"):
        converter.save_pretrained(llama_model, str(target))
    with pytest.raises(
        ValueError, match=rf"cannot be a directory: {target}, on its path, is a file"
    ):
        converter.save_pretrained(llama_model, str(target / "sub" / "dir"))
    assert target.read_text() == "keep me"
    with fsspec.open("memory://export-file/x", "wb") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match=r"output_dir: memory://export-file/x is a file"):
        converter.save_pretrained(llama_model, "memory://export-file/x")
