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
    DefaultRotaryEmbeddingsConfig,
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


@pytest.mark.parametrize("marker", ["metadata.json", "manifest.json"])
def test_an_export_into_a_run_checkpoint_directory_is_refused(llama_model, tmp_path, marker):
    # checkpoints/<run_id>: its step-N folders are lm checkpoints (a torn save has only the
    # manifest); config.json and the weights must not land beside them.
    run_dir = tmp_path / "run"
    (run_dir / "step-2").mkdir(parents=True)
    (run_dir / "step-2" / marker).write_text('{"step": 2}')
    converter = llama_model.config.hf_checkpoint_converter()
    with pytest.raises(
        ValueError,
        match=rf"^output_dir: {run_dir} is a run's checkpoint directory: it holds lm checkpoints "
        rf"\(step-2/{marker}\); export to another directory",
    ):
        converter.save_pretrained(llama_model, str(run_dir))
    assert sorted(os.listdir(run_dir)) == ["step-2"]
    # a step-N folder that is no checkpoint (nothing of lm's in it) is the user's own
    (tmp_path / "mine" / "step-1").mkdir(parents=True)
    converter.save_pretrained(llama_model, str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "config.json").exists()


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
    shapes, _ = read_hf_weights("memory://export/llama", shapes_only=True)
    assert {k: v.shape for k, v in shapes.items()} == {k: v.shape for k, v in weights.items()}
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
    shapes, _ = read_hf_weights(str(tmp_path / "bin"), shapes_only=True)  # memory-mapped
    assert {k: v.shape for k, v in shapes.items()} == {k: v.shape for k, v in weights.items()}
    converter.check_pretrained(str(tmp_path / "bin"), config=llama_model.config)

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


def test_check_pretrained_reads_only_headers_and_finds_what_loading_would(llama_model, tmp_path):
    """`shapes_only` gives every tensor's name, shape and dtype (stand-ins holding no memory)
    from the safetensors headers; `check_pretrained` fails where `load_pretrained` would."""
    converter = llama_model.config.hf_checkpoint_converter()
    ckpt = tmp_path / "ckpt"
    converter.save_pretrained(llama_model, str(ckpt), max_shard_size="2KB")
    weights, source = read_hf_weights(str(ckpt))
    shapes, same_source = read_hf_weights(str(ckpt), shapes_only=True)
    assert same_source == source and source.endswith("model.safetensors.index.json")
    assert {k: (v.shape, v.dtype) for k, v in shapes.items()} == {
        k: (v.shape, v.dtype) for k, v in weights.items()
    }
    assert all(all(s == 0 for s in v.strides) for v in shapes.values())  # no memory behind them
    converter.check_pretrained(str(ckpt), config=llama_model.config)

    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shard = ckpt / sorted(set(index["weight_map"].values()))[1]
    whole = shard.read_bytes()
    header_len = int.from_bytes(whole[:8], "little")
    for cut, message in [
        (len(whole) - 1, "has inconsistent offsets"),  # the last tensor's data lacks a byte
        (8 + header_len // 2, r"truncated safetensors header \("),
        (4, "not a safetensors file"),
    ]:
        shard.write_bytes(whole[:cut])
        for check in (
            lambda: converter.check_pretrained(str(ckpt), config=llama_model.config),
            lambda: converter.load_pretrained(str(ckpt)),
        ):
            with pytest.raises(ValueError, match=f"{shard}: .*{message}"):
                check()
    shard.write_bytes(whole[:8] + b"[1, 2]" + b" " * (header_len - 6) + whole[8 + header_len :])
    with pytest.raises(ValueError, match="malformed safetensors header: not a JSON object"):
        converter.check_pretrained(str(ckpt), config=llama_model.config)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"missing file: {shard}"):
        converter.check_pretrained(str(ckpt), config=llama_model.config)

    # weights of another size under the right config.json: their shapes are told apart
    wider = dataclasses.replace(llama_model.config, intermediate_dim=64)
    converter.save_pretrained(random_model(wider, Vocab), str(tmp_path / "wider"))
    (tmp_path / "wider" / "config.json").write_text((ckpt / "config.json").read_text())
    with pytest.raises(ValueError, match=r"shape mismatches: model\.layers\.0\.mlp\.down_proj"):
        converter.check_pretrained(str(tmp_path / "wider"), config=llama_model.config)


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
    # A given config of another architecture is refused by its fields, before any weight is
    # read (test_a_given_config_of_another_architecture_is_refused) ...
    with pytest.raises(ValueError, match=r"intermediate_dim: 64 \(checkpoint: 48\)"):
        converter.load_pretrained(str(tmp_path), config=wider)
    # ... and weights that do not fit their own config.json by their shapes.
    converter.save_pretrained(random_model(wider, Vocab), str(tmp_path / "wider"))
    (tmp_path / "wider" / "config.json").write_text((tmp_path / "config.json").read_text())
    with pytest.raises(
        ValueError, match=r"shape mismatches: model\.layers\.0\.mlp\.down_proj\.weight: \(32, 64\)"
    ):
        converter.load_pretrained(str(tmp_path / "wider"))


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


def test_load_pretrained_pads_a_vocabulary_its_shards_do_not_divide_on_the_host(
    llama_model, tmp_path
):
    """A 101-row vocabulary sharded 4 ways: placing it as read failed inside jax ("axis 0
    is partitioned 4 times, but the dimension size is 101"); with `vocab_size` the rows are
    padded on the host first, the checkpoint's own rows kept as they are."""
    from jax.sharding import Mesh

    converter = llama_model.config.hf_checkpoint_converter()
    converter.save_pretrained(llama_model, str(tmp_path))
    mesh = Mesh(np.array(jax.devices()[4:8]).reshape(1, 4), ("data", "model"))
    with jax.set_mesh(mesh):
        back = converter.load_pretrained(
            str(tmp_path),
            axis_mapping={"vocab": "model"},
            vocab_size=104,
            key=jax.random.PRNGKey(3),
        )
    assert back.Vocab.size == 104
    table = back.embeddings.token_embeddings.weight.array
    assert len(table.addressable_shards) == 4 and table.addressable_shards[0].data.shape[0] == 26
    original = np.asarray(llama_model.embeddings.token_embeddings.weight.array)
    np.testing.assert_array_equal(np.asarray(table)[:VOCAB], original)
    assert np.isfinite(np.asarray(table)[VOCAB:]).all()


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


# ------------------------------------------------------------------ HF config variants


def _hf_checkpoint(hf_config, path, seed=0):
    """A random transformers model of `hf_config` saved by transformers to `path`."""
    hf = hf_model_from_config(hf_config, seed=seed)
    hf.save_pretrained(path)
    return hf


@pytest.mark.torch
@pytest.mark.parametrize(
    "hf_kwargs",
    [
        dict(scale_attn_weights=False),
        dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True),
        dict(activation_function="gelu_python"),
    ],
    ids=["unscaled", "unscaled_inverse_layer_idx", "gelu_python"],
)
def test_gpt2_config_variants_match_hf_both_ways(hf_kwargs, tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config

    hf_config = GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, **hf_kwargs
    )
    hf = _hf_checkpoint(hf_config, tmp_path / "hf")
    converter = HFCheckpointConverter.for_checkpoint(str(tmp_path / "hf"))
    model = converter.load_pretrained(str(tmp_path / "hf"))
    tokens = _tokens()
    ours = _logits(model, tokens)
    np.testing.assert_allclose(ours, hf_logits(hf, tokens.array), atol=1e-4, rtol=1e-4)

    converter.save_pretrained(model, str(tmp_path / "ours"))
    exported = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert exported["scale_attn_weights"] == hf_kwargs.get("scale_attn_weights", True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    np.testing.assert_allclose(hf_logits(reloaded, tokens.array), ours, atol=1e-4, rtol=1e-4)


def test_gelu_python_is_lms_exact_gelu():
    from lm.models.layers.activations import ActivationFunctionEnum

    parsed = ActivationFunctionEnum.parse("gelu_python", field="activation_function")
    assert parsed is ActivationFunctionEnum.gelu


@pytest.mark.torch
@pytest.mark.parametrize("qwen", ["qwen2", "qwen3"])
def test_qwen_use_sliding_window_on_no_layer_is_full_attention(qwen, tmp_path):
    """HF slides the window only on layers >= max_window_layers: none of them here."""
    from transformers import Qwen2Config as HfQwen2
    from transformers import Qwen3Config as HfQwen3

    cls = {"qwen2": HfQwen2, "qwen3": HfQwen3}[qwen]
    common = dict(
        vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        use_sliding_window=True, sliding_window=8,
    )  # fmt: skip
    hf = _hf_checkpoint(cls(**common, max_window_layers=2), tmp_path / "full")
    model = HFCheckpointConverter.for_checkpoint(str(tmp_path / "full")).load_pretrained(
        str(tmp_path / "full")
    )
    tokens = _tokens()
    np.testing.assert_allclose(
        _logits(model, tokens), hf_logits(hf, tokens.array), atol=1e-4, rtol=1e-4
    )
    cls(**common, max_window_layers=1).save_pretrained(tmp_path / "sliding")
    with pytest.raises(
        ValueError,
        match=r"max_window_layers \(1\) below num_hidden_layers \(2\) slides the window on "
        r"layers \[1\]",
    ):
        HFCheckpointConverter.for_checkpoint(str(tmp_path / "sliding")).config_from_hf_checkpoint()


# ------------------------------------------------------- a given config must be the checkpoint's

ARCH = dict(LLAMA, num_kv_heads=2)
ARCHITECTURE_MISMATCHES = {
    # name: (checkpoint config, given config, the error's field text)
    "rope": (
        LlamaConfig(**ARCH, rope=Llama3RotaryEmbeddingsConfig(original_max_position_embeddings=16)),
        LlamaConfig(**ARCH),
        "rope: {type: default, theta: 10000.0, factor: 1.0} (checkpoint: {type: llama3, theta: "
        "500000.0, factor: 8.0",
    ),
    "rope_theta": (
        Qwen2Config(**ARCH, rope=DefaultRotaryEmbeddingsConfig(theta=1e6)),
        Qwen2Config(**ARCH),
        "rope: {type: default, theta: 10000.0, factor: 1.0} (checkpoint: {type: default, "
        "theta: 1000000.0, factor: 1.0})",
    ),
    "eps": (
        LlamaConfig(**ARCH, layer_norm_epsilon=1e-4),
        LlamaConfig(**ARCH),
        "layer_norm_epsilon: 1e-05 (checkpoint: 0.0001)",
    ),
    "activation": (
        Gpt2Config(
            seq_len=64, hidden_dim=32, num_layers=2, num_heads=4, activation_function="gelu"
        ),
        Gpt2Config(seq_len=64, hidden_dim=32, num_layers=2, num_heads=4),
        "activation_function: gelu_new (checkpoint: gelu)",
    ),
    "tied_given_untied_checkpoint": (
        LlamaConfig(**ARCH),
        LlamaConfig(**ARCH, tie_word_embeddings=True),
        "tie_word_embeddings: true (checkpoint: false)",
    ),
    "bias": (
        LlamaConfig(**ARCH, use_bias=True),
        LlamaConfig(**ARCH),
        "use_bias: false (checkpoint: true)",
    ),
    "window": (
        MistralConfig(**ARCH, sliding_window=8),
        MistralConfig(**ARCH, sliding_window=None),
        "sliding_window: null (checkpoint: 8)",
    ),
    "qk_norm_and_eps": (
        Qwen3Config(**ARCH, head_dim=16),
        Qwen3Config(**ARCH, head_dim=16, use_qk_norm=False, layer_norm_epsilon=1e-5),
        "layer_norm_epsilon: 1e-05 (checkpoint: 1e-06); use_qk_norm: false (checkpoint: true)",
    ),
    "gpt2_seq_len_beyond_the_position_table": (
        Gpt2Config(seq_len=64, hidden_dim=32, num_layers=2, num_heads=4),
        Gpt2Config(seq_len=128, hidden_dim=32, num_layers=2, num_heads=4),
        "seq_len: 128 (checkpoint: 64 learned positions; at most 64)",
    ),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", list(ARCHITECTURE_MISMATCHES))
def test_a_given_config_of_another_architecture_is_refused(name, tmp_path):
    """Same tensor shapes, other function: loading would silently change the logits."""
    import re

    checkpoint, given, text = ARCHITECTURE_MISMATCHES[name]
    _hf_checkpoint(checkpoint.to_hf_config(VOCAB), tmp_path)
    converter = checkpoint.hf_checkpoint_converter()
    with pytest.raises(ValueError) as info:
        converter.load_pretrained(str(tmp_path), config=given)
    message = str(info.value)
    assert f"{tmp_path}/config.json describes another model than the given" in message
    assert re.search(re.escape(text), message), message
    assert "use_hf_model_config: true" in message
    assert converter.load_pretrained(str(tmp_path)).config == dataclasses.replace(
        checkpoint, gradient_checkpointing=True
    )


@pytest.mark.torch
def test_runtime_fields_of_a_given_config_are_free(tmp_path):
    """seq_len (RoPE), kernel, remat and layer scan do not change the function."""
    checkpoint = CASES["llama_gqa_tied_llama3_rope"]
    hf = _hf_checkpoint(checkpoint.to_hf_config(VOCAB), tmp_path)
    given = dataclasses.replace(
        checkpoint,
        seq_len=32,
        attn_backend="vanilla",
        gradient_checkpointing=False,
        scan_layers=False,
        cross_entropy_block_size=16,
        head_dim=8,  # hidden_dim / num_heads: the same as null
        activation_function="swish",  # silu under another name
    )
    model = checkpoint.hf_checkpoint_converter().load_pretrained(str(tmp_path), config=given)
    tokens = _tokens(seq=32)
    np.testing.assert_allclose(
        _logits(model, tokens), hf_logits(hf, tokens.array), atol=1e-4, rtol=1e-4
    )


def test_a_checkpoint_config_lm_cannot_use_is_a_setup_error_naming_initialize_from_hf(tmp_path):
    """They ended the run with exit 1 (a wrong type, without a hint) or a transformers
    traceback (a config.json its strict config classes refuse)."""
    from lm.config import SetupConfigError
    from lm.lm_run import resolve_run_model

    LlamaConfig(**ARCH).to_hf_config(VOCAB).save_pretrained(tmp_path / "llama")
    with pytest.raises(SetupConfigError) as info:
        resolve_run_model(Gpt2Config(), tokenizer_size=VOCAB, hf_checkpoint=str(tmp_path / "llama"))
    assert str(info.value).startswith(f"initialize_from_hf: {tmp_path}/llama cannot be used: ")
    assert "model_type is 'llama' but this converter is for 'gpt2'" in str(info.value)
    assert "It is a checkpoint of lm's `type: llama`: set model.type: llama" in str(info.value)

    (tmp_path / "bad").mkdir()
    data = json.loads((tmp_path / "llama" / "config.json").read_text())
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**data, "attention_bias": "false"}))
    with pytest.raises(SetupConfigError) as info:
        resolve_run_model(
            LlamaConfig(), tokenizer_size=VOCAB, hf_checkpoint=str(tmp_path / "bad"),
            use_hf_model_config=True,
        )  # fmt: skip
    assert "transformers cannot read it as a 'llama' config (" in str(info.value)
    assert "\n" not in str(info.value)


def test_runtime_fields_written_as_their_default_are_kept_over_the_checkpoints():
    """use_hf_model_config: `embed_pdrop: 0.0` in the YAML (GPT-2's default) over an HF
    checkpoint's 0.1 was dropped in silence: the run trained with dropout turned back on."""
    import lm.config
    from lm.models.hf.compat import architecture_differences, with_user_runtime_fields

    checkpoint = Gpt2Config(seq_len=64, hidden_dim=32, num_layers=2, num_heads=4, embed_pdrop=0.1)
    user = lm.config.parse(Gpt2Config, args=["--embed_pdrop", "0.0", "--seq_len", "32"])
    assert lm.config.fields_set(user) == {"embed_pdrop", "seq_len"}
    merged = with_user_runtime_fields(checkpoint, user)
    assert (merged.embed_pdrop, merged.seq_len, merged.hidden_dim) == (0.0, 32, 32)
    # built in Python (or replaced): only values other than the defaults say "set"
    assert lm.config.fields_set(dataclasses.replace(user)) is None
    assert with_user_runtime_fields(checkpoint, dataclasses.replace(user)).embed_pdrop == 0.1
    # an architecture field written as its default is a conflict, not taken as unset
    eps = lm.config.parse(Gpt2Config, args=["--layer_norm_epsilon", "1e-5"])
    other = dataclasses.replace(checkpoint, layer_norm_epsilon=1e-6)
    assert architecture_differences(eps, other, set_only=True) == [
        "layer_norm_epsilon: 1e-05 (checkpoint: 1e-06)"
    ]


def test_yarn_mscale_without_mscale_all_dim_is_not_an_architecture_difference():
    """lm's YaRN default `mscale: 1.0` against an HF checkpoint without one: the same
    attention factor (mscale acts only with mscale_all_dim), so not a mismatch."""
    from lm.models.hf.compat import architecture_differences
    from lm.models.layers.rotary import YarnRotaryEmbeddingsConfig

    def yarn(**kw):
        rope = YarnRotaryEmbeddingsConfig(factor=4.0, original_max_position_embeddings=16, **kw)
        return LlamaConfig(**ARCH, rope=rope)

    assert yarn().rope.frequencies(8)[1] == yarn(mscale=None).rope.frequencies(8)[1]
    assert architecture_differences(yarn(), yarn(mscale=None)) == []
    both = yarn(mscale=1.0, mscale_all_dim=0.5)  # now mscale changes the attention factor
    assert architecture_differences(both, yarn(mscale=None, mscale_all_dim=0.5)) != []


@pytest.mark.torch
def test_gpt2_at_a_shorter_seq_len_keeps_the_first_learned_positions(tmp_path):
    from transformers import AutoModelForCausalLM

    checkpoint = CASES["gpt2"]  # 64 positions
    hf = _hf_checkpoint(checkpoint.to_hf_config(VOCAB), tmp_path / "hf")
    short = dataclasses.replace(checkpoint, seq_len=32)
    converter = checkpoint.hf_checkpoint_converter()
    model = converter.load_pretrained(str(tmp_path / "hf"), config=short)
    assert model.embeddings.position_embeddings.weight.array.shape == (32, 32)
    tokens = _tokens(seq=32)
    np.testing.assert_allclose(
        _logits(model, tokens), hf_logits(hf, tokens.array), atol=1e-4, rtol=1e-4
    )
    # The export holds the table it has: n_positions is the new seq_len.
    converter.save_pretrained(model, str(tmp_path / "ours"), source_checkpoint=str(tmp_path / "hf"))
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["n_positions"] == 32
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    np.testing.assert_allclose(
        hf_logits(reloaded, tokens.array), _logits(model, tokens), atol=1e-4, rtol=1e-4
    )


# ------------------------------------------- an export carries over its source checkpoint's metadata


@pytest.mark.torch
def test_an_export_keeps_the_source_checkpoints_token_ids_context_and_generation_config(
    tmp_path, transformers_warnings
):
    """A fine-tune of an HF checkpoint at a shorter context, exported with the tokenizer:
    eos_token_id [2, 0], pad_token_id, max_position_embeddings and generation_config.json
    come from the source; without the source they are the tokenizer's and seq_len."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    checkpoint = CASES["llama_mha_untied"]  # seq_len 64
    hf_config = checkpoint.to_hf_config(VOCAB, {"bos_token_id": 1, "eos_token_id": [2, 0]})
    hf_config.pad_token_id = 3
    _hf_checkpoint(hf_config, tmp_path / "src")
    generation = GenerationConfig(
        bos_token_id=1, eos_token_id=[2, 0], pad_token_id=3, do_sample=True, top_p=0.9
    )
    generation.save_pretrained(tmp_path / "src")
    converter = checkpoint.hf_checkpoint_converter()
    model = converter.load_pretrained(
        str(tmp_path / "src"), config=dataclasses.replace(checkpoint, seq_len=32)
    )
    tokenizer = _word_tokenizer(dict(bos_token=1, eos_token=2))  # no pad token

    converter.save_pretrained(
        model, str(tmp_path / "out"), tokenizer=tokenizer, source_checkpoint=str(tmp_path / "src")
    )
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (exported["bos_token_id"], exported["eos_token_id"], exported["pad_token_id"]) == (
        1,
        [2, 0],
        3,
    )
    assert exported["max_position_embeddings"] == 64
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text()) == json.loads(
        (tmp_path / "src" / "generation_config.json").read_text()
    )
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.generation_config.eos_token_id == [2, 0]
    tokens = _tokens(batch=1, seq=32)
    np.testing.assert_allclose(
        hf_logits(reloaded, tokens.array), _logits(model, tokens), atol=1e-4, rtol=1e-4
    )
    assert not [m for m in transformers_warnings if "token_id" in m], transformers_warnings

    converter.save_pretrained(model, str(tmp_path / "plain"), tokenizer=tokenizer)
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert (plain["eos_token_id"], plain["pad_token_id"], plain["max_position_embeddings"]) == (
        2,
        None,
        32,
    )
    assert not (tmp_path / "plain" / "generation_config.json").exists()


@pytest.mark.torch
def test_source_token_ids_that_disagree_with_the_vocab_or_tokenizer_are_not_kept(tmp_path):
    checkpoint = CASES["llama_mha_untied"]
    hf_config = checkpoint.to_hf_config(VOCAB, {"eos_token_id": [2, 0]})
    hf_config.pad_token_id = 3
    _hf_checkpoint(hf_config, tmp_path / "src")
    (tmp_path / "src" / "generation_config.json").write_text('{"eos_token_id": [2, 500]}')
    converter = checkpoint.hf_checkpoint_converter()
    model = converter.load_pretrained(str(tmp_path / "src"))
    # The tokenizer's EOS (7) is not among the source's [2, 0]: the tokenizer's is exported;
    # its PAD (9) replaces the source's 3; an id past the vocabulary keeps the
    # generation config out.
    tokenizer = _word_tokenizer(dict(eos_token=7, pad_token=9))
    converter.save_pretrained(
        model, str(tmp_path / "out"), tokenizer=tokenizer, source_checkpoint=str(tmp_path / "src")
    )
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (exported["eos_token_id"], exported["pad_token_id"]) == (7, 9)
    assert not (tmp_path / "out" / "generation_config.json").exists()


def test_a_failed_write_leaves_no_truncated_file(tmp_path):
    """A full disk during an export left a cut-off model.safetensors (which from_pretrained
    would try to load) and printed a traceback. The file is written aside and renamed: the
    previous export's file stays whole, and the error names the file."""
    import errno

    from fsspec.implementations.local import LocalFileSystem

    from lm.models.hf.converter import HfSaveError, _write

    class FullDisk(LocalFileSystem):
        def open(self, path, mode="rb", **kwargs):
            handle = open(path, mode)  # noqa: SIM115 (closed by the wrapper below)

            class Writer:
                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    handle.close()

                def write(self, data):
                    handle.write(data[:10])
                    raise OSError(errno.ENOSPC, "No space left on device")

            return Writer()

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the previous export")
    with pytest.raises(HfSaveError) as info:
        _write(FullDisk(), str(target), b"x" * 1000)
    assert str(info.value).startswith(
        f"could not write {target}: No space left on device. The HF checkpoint in {tmp_path} "
        "is incomplete (no file in it is cut short)"
    )
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    _write(LocalFileSystem(), str(target), b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
