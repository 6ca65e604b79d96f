"""Data configs: YAML parsing, validation errors, the embedded default, train/validation sets."""

from __future__ import annotations

import dataclasses
import io
import pathlib
import sys

import draccus
import fsspec
import haliax as hax
import jax
import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

import lm.config
from lm.data import (
    CacheOptions,
    LMDatasetConfig,
    LMDatasetSourceConfig,
    LMMixtureDatasetConfig,
    corpus,
)

DataConfig = LMDatasetConfig | LMMixtureDatasetConfig
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "config" / "data"
LOCAL = CacheOptions(backend="local")


@dataclasses.dataclass(frozen=True)
class Run:
    data: DataConfig = dataclasses.field(default_factory=LMDatasetConfig)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_data_yaml_parses_and_round_trips(path, tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"data: !include {path}\n")
    cfg = draccus.parse(Run, config_path=str(run_yaml), args=[]).data
    expected = LMMixtureDatasetConfig if "configs" in path.read_text() else LMDatasetConfig
    assert type(cfg) is expected
    dumped = io.StringIO()
    draccus.dump(cfg, dumped)
    assert draccus.load(expected, io.StringIO(dumped.getvalue())) == cfg


def test_reference_cases_hf_and_mixture_yaml():
    hf = draccus.load(
        DataConfig, io.StringIO("id: dlwh/wikitext_103_detokenized\ncache_dir: gs://b/c\n")
    )
    assert isinstance(hf, LMDatasetConfig) and hf.id == "dlwh/wikitext_103_detokenized"
    mix = draccus.load(
        DataConfig,
        io.StringIO(
            "configs:\n  owt: {train_urls: ['gs://b/owt.{1..2}.jsonl.gz']}\n"
            "  wiki: {id: dlwh/wikitext_103_detokenized}\n"
            "train_weights: {owt: 0.6, wiki: 0.4}\ntokenizer: gpt2\ncache_dir: gs://b/mix\n"
        ),
    )
    assert isinstance(mix, LMMixtureDatasetConfig)
    assert mix.weight_stages == [(0, {"owt": 0.6, "wiki": 0.4})]
    assert mix.cache_dir_for("wiki", "train") == "gs://b/mix/wiki/train"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"tokenizer": "passthrough"},
            r"vocab_size: got null, expected a positive int with tokenizer: passthrough",
        ),
        (
            {"vocab_size": 100},
            r"vocab_size: got 100, but vocab_size is only for tokenizer: passthrough; "
            r"tokenizer 'builtin' has its own vocabulary",
        ),
        ({"shuffle": 0}, r"shuffle: got 0, expected true, false or a positive era length"),
        (
            {"permutation_type": "fiestel"},
            r"permutation_type: got 'fiestel', expected one of feistel, linear; "
            r"did you mean 'feistel'\?$",
        ),
        (
            {"builtin": "stdlb"},
            r"^builtin: unknown builtin corpus 'stdlb'.*did you mean 'stdlib'",
        ),
        ({"builtin": "stdlib", "train_urls": ["a.jsonl"]}, r"set only one kind of source"),
        ({"train_urls": "a.jsonl"}, r"train_urls: got 'a.jsonl', expected a list of URLs"),
        ({"ignore_token_id": -1}, r"ignore_token_id: got -1, expected a token id >= 0"),
        ({"tokenizer": ""}, r"tokenizer: got '', expected a non-empty name or path"),
        ({"cache_dir": ""}, r"cache_dir: got '', expected a non-empty path or URL"),
        ({"text_key": ""}, r"text_key: got '', expected a non-empty string"),
        # the shuffles take 64 bits of the seed: 2**64 + 1 repeated seed 1's order
        ({"data_seed": -1}, r"data_seed: got -1, expected an integer from 0 to"),
        ({"data_seed": 2**64 + 1}, r"data_seed: got 18446744073709551617, expected"),
        ({"data_seed": 2**64 - 1}, None),
        ({"cache_options": CacheOptions(backend="local", num_workers=1)}, None),
    ],
)
def test_single_source_validation(kwargs, match):
    if match is None:
        LMDatasetConfig(**kwargs)
        return
    with pytest.raises(ValueError, match=match):  # a FieldError, reported at the field
        LMDatasetConfig(**kwargs)


def test_cache_options_validation():
    with pytest.raises(ValueError, match=r"^backend: got 'spark', expected 'ray' or 'local'$"):
        CacheOptions(backend="spark")
    with pytest.raises(ValueError, match=r"^num_workers: got 0, expected a positive int or null"):
        CacheOptions(num_workers=0)
    with pytest.raises(ValueError, match=r"^batch_size: got 0, expected a positive int$"):
        CacheOptions(batch_size=0)


def test_every_bad_cache_option_is_reported_in_one_run():
    with pytest.raises(lm.config.ConfigError) as caught:
        lm.config.decode(
            LMDatasetConfig,
            {"cache_options": {"backend": "spark", "batch_size": 0, "num_workers": 0}},
            path="data",
        )
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("data.cache_options.backend", "expected one of 'ray', 'local', got 'spark' (a string)"),
        ("data.cache_options.num_workers", "got 0, expected a positive int or null"),
        ("data.cache_options.batch_size", "got 0, expected a positive int"),
    ]
    with pytest.raises(ValueError) as caught:  # from Python too; a count is an int
        CacheOptions(num_workers=2.5, batch_size=True)
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("num_workers", "got 2.5, expected a positive int or null"),
        ("batch_size", "got true, expected a positive int"),
    ]


def _src(**kw):
    return LMDatasetSourceConfig(**kw)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"configs": {}, "train_weights": {"a": 1.0}}, "^configs: must name at least one source$"),
        (
            {"configs": {"a": _src(builtin="stdlib")}, "train_weights": {"b": 1.0}},
            r"^train_weights.b: unknown component 'b'; components: a$",
        ),
        (
            {"configs": {"web": _src(builtin="stdlib")}, "train_weights": {"webb": 1.0}},
            r"did you mean 'web'",
        ),
        (
            {"configs": {"a": _src(builtin="stdlib")}, "train_weights": {"a": -1.0}},
            r"weight of 'a' must be >= 0",
        ),
        (
            {"configs": {"a": _src(builtin="stdlib")}, "train_weights": {"a": 0.0}},
            "^train_weights: all weights are zero$",
        ),
        (
            {"configs": {"a": _src(builtin="stdlib")}, "train_weights": {}},
            "^train_weights: must give at least one component a weight$",
        ),
        (
            {"configs": {"a": _src(builtin="stdlib")}, "train_weights": []},
            r"^train_weights: must have at least one \[step, weights\] stage$",
        ),
        (
            {
                "configs": {"a": _src(builtin="stdlib"), "b": _src()},
                "train_weights": {"a": 1, "b": 1},
            },
            r"^configs.b: has train weight > 0 but no training source",
        ),
        (
            {"configs": {"a": _src(validation_urls=["v.jsonl"])}, "train_weights": {"a": 1}},
            r"^configs.a: has train weight > 0 but no training source",
        ),
        (
            {"configs": {"a": _src(builtin="stdlib")}, "train_weights": [(5, {"a": 1.0})]},
            r"^train_weights\[0\]\[0\]: the first stage must start at step 0, not 5$",
        ),
        (
            {
                "configs": {"a": _src(builtin="stdlib")},
                "train_weights": [(0, {"a": 1.0}), (0, {"a": 2.0})],
            },
            r"^train_weights\[1\]\[0\]: stage steps must increase, got 0 then 0$",
        ),
        (
            {
                "configs": {"a": _src(builtin="stdlib")},
                "train_weights": [(0, {"a": 1.0}), (10, {"a": 0.0})],
            },
            r"^train_weights\[1\]\[1\]: all weights are zero \(at step 10\)$",
        ),
        (
            {"configs": {"a/b": _src(builtin="stdlib")}, "train_weights": {"a/b": 1}},
            "^configs.a/b: component name 'a/b' must be non-empty without '/'$",
        ),
        (
            {
                "configs": {"a": _src(builtin="stdlib")},
                "train_weights": {"a": 1},
                "mixture_block_size": 0,
            },
            "^mixture_block_size: got 0, expected a positive number of examples$",
        ),
        (
            {
                "configs": {"a": _src(builtin="stdlib")},
                "train_weights": {"a": 1},
                "stop_strategy": "x",
            },
            "^stop_strategy: only 'restart' is supported, got 'x'$",
        ),
    ],
)
def test_mixture_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LMMixtureDatasetConfig(**kwargs)


def test_every_bad_data_field_is_reported_in_one_run(config_problems):
    """One run names each bad field of `data:` at its own path and line, not the first one
    only; checks that need valid fields (the mixture blocks) wait for them."""
    found = config_problems(
        Run,
        "data:\n  train_urls: [a.jsonl, s4://b/x.jsonl]\n  text_key: ''\n  tags: [web, web]\n"
        "  permutation_type: fiestel\n  ignore_token_id: -1\n  vocab_size: 10\n",
    )
    assert set(found) == {
        "data.train_urls[1]",
        "data.text_key",
        "data.tags",
        "data.permutation_type",
        "data.ignore_token_id",
        "data.vocab_size",
    }
    assert found["data.permutation_type"][0] == "run.yaml:5"
    assert found["data.tags"][1] == "'web' is listed more than once"
    found = config_problems(
        Run,
        "data:\n  configs:\n    a: {builtin: stdlib}\n    x/y: {builtin: stdlib}\n"
        "  train_weights: {a: -1, b: 1, x/y: 1}\n  mixture_block_size: 0\n  stop_strategy: x\n"
        "  shuffle: -5\n",
    )
    assert set(found) == {
        "data.configs.x/y",
        "data.train_weights.a",
        "data.train_weights.b",
        "data.mixture_block_size",
        "data.stop_strategy",
        "data.shuffle",
    }
    assert found["data.train_weights.b"][1].startswith("unknown component 'b'; components: a, x/y")
    assert found["data.mixture_block_size"] == (
        "run.yaml:6",
        "got 0, expected a positive number of examples",
    )


def test_default_is_the_embedded_corpus_with_the_builtin_tokenizer(
    tmp_path, builtin_tokenizer, caplog
):
    cfg = LMDatasetConfig(cache_dir=str(tmp_path / "cache"), cache_options=LOCAL)
    assert cfg.tokenizer == "builtin" and not cfg.has_source()
    assert cfg.effective_source.builtin == "stdlib"
    assert isinstance(cfg.the_tokenizer, PreTrainedTokenizerBase) and len(cfg.the_tokenizer) == 8192
    Pos = hax.Axis("position", 256)
    with caplog.at_level("INFO", logger="lm.data"):
        sets = cfg.validation_sets(Pos)
    assert "using the embedded corpus (builtin: stdlib)" in caplog.text
    val = sets[""]
    first = corpus.corpus_files("validation")[0]
    text = builtin_tokenizer.decode(val[0].tokens.array.tolist())
    assert corpus.read_document(first.relpath).startswith(text)
    assert len(val) == val.cache.num_tokens // 256 > 100
    assert (tmp_path / "cache" / "validation" / "ledger.json").exists()


def test_single_source_train_and_validation_sets(tmp_path, jsonl_corpus, builtin_tokenizer):
    cfg = LMDatasetConfig(
        train_urls=[str(jsonl_corpus / "train.{0..2}.jsonl")],
        validation_urls=[str(jsonl_corpus / "val.*.jsonl")],
        cache_dir=str(tmp_path / "cache"),
        cache_options=LOCAL,
        shuffle=True,
    )
    Pos = hax.Axis("position", 16)
    with pytest.raises(ValueError, match="data.shuffle is True but train_set got no key"):
        cfg.train_set(Pos)
    key = jax.random.PRNGKey(0)
    train = cfg.train_set(Pos, key=key)
    plain = dataclasses.replace(cfg, shuffle=False).train_set(Pos)
    n = len(train)
    assert n == len(plain) > 5
    shuffled = [ex.tokens.array.tolist() for ex in train.get_batch(range(n))]
    ordered = [ex.tokens.array.tolist() for ex in plain.get_batch(range(n))]
    assert sorted(shuffled) == sorted(ordered) and shuffled != ordered
    again = [ex.tokens.array.tolist() for ex in cfg.train_set(Pos, key=key).get_batch(range(n))]
    assert again == shuffled
    # data_seed overrides the trainer's key: the order no longer depends on it.
    seeded = dataclasses.replace(cfg, data_seed=5)
    a = [ex.tokens.array.tolist() for ex in seeded.train_set(Pos, key=key).get_batch(range(n))]
    b = [
        ex.tokens.array.tolist()
        for ex in seeded.train_set(Pos, key=jax.random.PRNGKey(9)).get_batch(range(n))
    ]
    assert a == b and a != shuffled
    assert set(cfg.validation_sets(Pos)) == {""}
    with pytest.raises(ValueError, match="fewer than one window of seq_len=4096"):
        cfg.train_set(hax.Axis("position", 4096), key=key)
    # Windows carry segment ids: every window that spans a document boundary restarts them.
    segs = np.stack([ex.segment_ids.array for ex in plain.get_batch(range(n))])
    assert segs.max() >= 1 and (segs[:, 0] == 0).all()


def test_docs_show_every_data_yaml_verbatim():
    docs = (CONFIG_DIR.parents[1] / "docs" / "data.md").read_text()
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        assert f'title="config/data/{path.name}"\n{path.read_text()}```' in docs, path.name


def test_passthrough_the_tokenizer_is_an_hf_tokenizer():
    cfg = LMDatasetConfig(tokenizer="passthrough", vocab_size=100, enforce_eos=False)
    tok = cfg.the_tokenizer
    assert isinstance(tok, PreTrainedTokenizerBase) and len(tok) == 100
    assert tok("5 17 3")["input_ids"] == [5, 17, 3]
    assert tok.decode([5, 17, 3]) == "5 17 3"
    with pytest.raises(ValueError, match="outside"):
        tok("5 100")


# ---------------------------------------------------------------------------- URLs (DAT-01)


def _decode_problems(data: dict) -> list[str]:
    """The problems `lm.config` reports for `data:` (empty when it decodes)."""
    try:
        lm.config.decode(DataConfig, data, path="data")
    except lm.config.ConfigError as e:
        return [str(p) for p in e.problems]
    return []


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            {"train_urls": ["a.jsonl", "s4://b/x.jsonl"]},
            "data.train_urls[1]: unknown protocol 's4' in 's4://b/x.jsonl' (did you mean 's3://'?)",
        ),
        (
            {"validation_urls": ["gcs:/b/val.jsonl"]},
            "data.validation_urls[0]: 'gcs:/b/val.jsonl' looks like a URL with a malformed "
            "scheme (a URL starts with '<protocol>://'); did you mean 'gcs://b/val.jsonl'?",
        ),
        (
            {"train_urls": ["GS://b/x.jsonl"]},
            "data.train_urls[0]: unknown protocol 'GS' in 'GS://b/x.jsonl' (did you mean 'gs://'?)",
        ),
        (
            # TensorStore writes the cache: gcs:// (gcsfs's alias) is not one of its protocols.
            {"cache_dir": "gcs://b/cache"},
            "data.cache_dir: unsupported protocol 'gcs' in 'gcs://b/cache' (did you mean 'gs://'?); "
            "expected a local path or a file://, memory://, gs:// or s3:// URL",
        ),
        ({"tokenizer": "gs:/b/tok"}, "data.tokenizer: 'gs:/b/tok' looks like a URL"),
        (
            {"configs": {"web": {"train_urls": ["memroy://x.jsonl"]}}, "train_weights": {"web": 1}},
            "data.configs.web.train_urls[0]: unknown protocol 'memroy' in 'memroy://x.jsonl' "
            "(did you mean 'memory://'?)",
        ),
        (
            {
                "configs": {"web": {"builtin": "stdlib", "cache_dir": "https://h/c"}},
                "train_weights": {"web": 1},
            },
            "data.configs.web.cache_dir: unsupported protocol 'https'",
        ),
    ],
)
def test_unknown_url_protocols_are_config_errors_at_the_field(data, expected):
    problems = _decode_problems(data)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize(
    "url",
    [
        "memory://corpus/train.jsonl",
        "file:///data/train.{1..4}.jsonl",
        "/data/train.jsonl",
        "~/data/*.jsonl.gz",
        "relative/train.jsonl",
        "notes:2024/train.jsonl",  # a colon in a local name is not a URL
        "gs://b/x.{1..128}-of-128.jsonl.gz",
        "s3://b/x.jsonl",
        "https://host/x.jsonl",
        "simplecache::gs://b/x.jsonl",
    ],
)
def test_local_memory_and_known_urls_parse(url):
    assert _decode_problems({"train_urls": [url]}) == []
    assert _decode_problems({"builtin": "stdlib", "cache_dir": "memory://caches/c"}) == []


def _without(*missing: str):
    """`fsspec.get_filesystem_class` as if the packages of `missing` protocols were absent."""
    real = fsspec.get_filesystem_class

    def get_filesystem_class(protocol):
        if protocol in missing:
            raise ImportError(f"Please install the package for {protocol}")
        return real(protocol)

    return get_filesystem_class


def test_gs_without_gcsfs_parses_but_fails_before_reading_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setattr(fsspec, "get_filesystem_class", _without("gs", "s3"))
    opened = []
    monkeypatch.setattr(fsspec.core, "url_to_fs", lambda *a, **k: opened.append(a))
    cfg = lm.config.decode(
        DataConfig,
        {
            "train_urls": ["gs://b/train.{1..2}.jsonl"],
            "validation_urls": [str(tmp_path / "val.jsonl")],
            "cache_dir": "gs://b/cache",
        },
        path="data",
    )  # a gs:// config still parses without gcsfs
    Pos = hax.Axis("position", 16)
    expected = (
        r"^data.cache_dir, data.train_urls\[0\]: gs:// needs gcsfs, which is not installed in "
        r"this Python \(.*\); install it with pip install 'lm\[gcs\]'$"
    )
    for use in (
        lambda: cfg.train_set(Pos),
        lambda: cfg.validation_sets(Pos),
        lambda: cfg.build_caches(),
        lambda: cfg.the_vocab_size,
        cfg.check_filesystems,
    ):
        with pytest.raises(ValueError, match=expected):
            use()
    assert opened == []  # nothing was opened

    mixture = LMMixtureDatasetConfig(
        configs={
            "web": _src(train_urls=["s3://b/web.jsonl"], cache_dir="s3://b/web-cache"),
            "code": _src(builtin="stdlib"),
        },
        train_weights={"web": 1, "code": 1},
        tokenizer="gs://b/tokenizer",
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(ValueError) as info:
        mixture.train_set(Pos, key=jax.random.PRNGKey(0))
    assert str(info.value).splitlines() == [
        "data.tokenizer: gs:// needs gcsfs, which is not installed in this Python "
        f"({sys.executable}); install it with pip install 'lm[gcs]'",
        "data.configs.web.train_urls[0], data.configs.web.cache_dir: s3:// needs s3fs, which is "
        f"not installed in this Python ({sys.executable}); install it with pip install 'lm[s3]'",
    ]


def test_filesystem_check_passes_when_the_package_imports(monkeypatch):
    class FakeGCS:
        protocol = "gs"

    real = fsspec.get_filesystem_class
    monkeypatch.setattr(fsspec, "get_filesystem_class", lambda p: FakeGCS if p == "gs" else real(p))
    LMDatasetConfig(train_urls=["gs://b/x.jsonl"], cache_dir="gs://b/c").check_filesystems()
    LMDatasetConfig(train_urls=["memory://x.jsonl"], cache_dir="memory://c").check_filesystems()


# ---------------------------------------------------------------------------- tags (DAT-04)


def test_tags_from_the_command_line_and_yaml_round_trip(tmp_path):
    cfg = lm.config.parse(Run, args=["--data.tags", "[web, english]"]).data
    assert isinstance(cfg, LMDatasetConfig) and cfg.tags == ["web", "english"]
    assert cfg.validation_tags() == {"": ["web", "english"]}
    assert LMDatasetConfig().tags == [] and LMDatasetConfig().validation_tags() == {"": []}
    dumped = io.StringIO()
    draccus.dump(cfg, dumped)
    assert draccus.load(LMDatasetConfig, io.StringIO(dumped.getvalue())) == cfg


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            {"tags": ["web", "a/b"]},
            "data.tags[1]: got 'a/b', expected a non-empty name without '/'",
        ),
        ({"tags": [""]}, "data.tags[0]: got '', expected a non-empty name"),
        ({"tags": ["web", "web"]}, "data.tags: 'web' is listed more than once"),
        ({"tags": "web"}, "data.tags"),
        (
            {
                "configs": {
                    "web": {"builtin": "stdlib", "tags": ["english", "code"]},
                    "code": {"builtin": "stdlib"},
                },
                "train_weights": {"web": 1},
            },
            "data.configs.web.tags[1]: 'code' is the name of another component",
        ),
    ],
)
def test_bad_tags_are_config_errors_at_the_field(data, expected):
    problems = _decode_problems(data)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_mixture_validation_sets_carry_their_tags(tmp_path, jsonl_corpus):
    val = str(jsonl_corpus / "val.*.jsonl")
    cfg = LMMixtureDatasetConfig(
        configs={
            "web": _src(validation_urls=[val], tags=["english", "web"]),
            "books": _src(validation_urls=[val], tags=["english"]),
            "code": _src(train_urls=[str(jsonl_corpus / "train.*.jsonl")], tags=["python"]),
            "plain": _src(validation_urls=[val]),
        },
        train_weights={"code": 1},
        cache_dir=str(tmp_path / "cache"),
        cache_options=LOCAL,
    )
    tags = cfg.validation_tags()
    # A component's own name is not repeated as a tag: its set already logs eval/<name>/...
    assert tags == {"web": ["english"], "books": ["english"], "code": ["python"], "plain": []}
    sets = cfg.validation_sets(hax.Axis("position", 16))
    assert sorted(sets) == ["books", "plain", "web"] and set(sets) <= set(tags)
    # Tags do not change what is cached: the same cache serves a config without them.
    untagged = dataclasses.replace(
        cfg, configs={n: dataclasses.replace(c, tags=[]) for n, c in cfg.configs.items()}
    )
    assert untagged.cache_dir_for("web", "validation") == cfg.cache_dir_for("web", "validation")
    assert sorted(untagged.validation_sets(hax.Axis("position", 16))) == sorted(sets)


def test_empty_source_files_are_named_when_there_are_too_few_tokens(tmp_path, write_jsonl):
    (tmp_path / "empty.jsonl").write_text("")
    Pos = hax.Axis("position", 16)
    cfg = LMDatasetConfig(
        train_urls=[str(tmp_path / "empty.jsonl")],
        cache_dir=str(tmp_path / "cache"),
        cache_options=LOCAL,
    )
    with pytest.raises(
        ValueError,
        match=r"the training data has 0 tokens \(0 documents\), fewer than one window of "
        r"seq_len=16; the only file of data\.train_urls has no documents: .*empty\.jsonl; add "
        r"data or lower seq_len",
    ):
        cfg.train_set(Pos)
    write_jsonl(tmp_path / "short.jsonl", ["x"])
    (tmp_path / "bad.jsonl").write_text("not json\n")
    mixture = LMMixtureDatasetConfig(
        configs={
            "web": _src(train_urls=[str(tmp_path / "{empty,bad,short}.jsonl")], skip_bad_lines=True)
        },
        train_weights={"web": 1},
        cache_dir=str(tmp_path / "mix"),
        cache_options=LOCAL,
        data_seed=0,
    )
    with pytest.raises(
        ValueError,
        match=r"data\.configs\.web \(training\) has \d+ tokens \(1 documents\), fewer than one "
        r"window of seq_len=16; 2 of the 3 files of data\.configs\.web\.train_urls have no "
        r"documents \(1 bad lines skipped\): .*empty\.jsonl, .*bad\.jsonl; add data",
    ):
        mixture.train_set(Pos)


@pytest.mark.parametrize(
    "weights, field, shown",
    [
        ({"a": float("inf"), "b": 1}, "data.train_weights.a", "inf"),
        ({"a": float("nan"), "b": 1}, "data.train_weights.a", "nan"),
        (
            [[0, {"a": 1, "b": 1}], [100, {"a": 1, "b": float("inf")}]],
            "data.train_weights[1][1].b",
            "inf",
        ),
    ],
)
def test_a_weight_that_is_not_finite_is_an_error_at_its_field(weights, field, shown):
    """An infinite weight passed the >= 0 check and failed later with an IndexError."""
    data = {
        "configs": {"a": {"builtin": "stdlib"}, "b": {"builtin": "stdlib"}},
        "train_weights": weights,
    }
    problems = _decode_problems(data)
    name = field.rsplit(".", 1)[1]
    step = 0 if field.endswith(".a") else 100
    assert problems == [
        f"{field}: weight of {name!r} must be >= 0 and finite, got {shown} (at step {step}); "
        "weights are relative, e.g. 0.7 and 0.3"
    ]


def test_build_caches_finds_every_splits_files_before_building_any(tmp_path, write_jsonl):
    """A missing validation file was reported after the train cache was built (hours on a
    real corpus); a missing file of a mixture's last component after the others' caches."""
    write_jsonl(tmp_path / "train.jsonl", ["a document"] * 20)
    single = LMDatasetConfig(
        train_urls=[str(tmp_path / "train.jsonl")],
        validation_urls=[str(tmp_path / "missing.jsonl")],
        cache_dir=str(tmp_path / "cache"),
        cache_options=CacheOptions(backend="local"),
    )
    with pytest.raises(ValueError, match="data.validation_urls: missing shard"):
        single.build_caches()
    mixture = LMMixtureDatasetConfig(
        configs={
            "a": _src(train_urls=[str(tmp_path / "train.jsonl")]),
            "b": _src(train_urls=[str(tmp_path / "missing.jsonl")]),
        },
        train_weights={"a": 1.0, "b": 1.0},
        cache_dir=str(tmp_path / "mixture-cache"),
        cache_options=CacheOptions(backend="local"),
    )
    with pytest.raises(ValueError, match="data.configs.b.train_urls: missing shard"):
        mixture.build_caches()
    assert not (tmp_path / "cache").exists() and not (tmp_path / "mixture-cache").exists()


@pytest.mark.parametrize(
    "weights, where",
    [
        ({"a": 1000, "b": 1}, "train_weights"),
        ([[0, {"a": 1}], [10, {"a": 1000, "b": 1}]], "train_weights[1] (step 10)"),
    ],
)
def test_a_block_too_small_for_a_weight_is_an_error_naming_both_fields(weights, where):
    """It was `mixture stage 0: weights ... give ['b'] no example per block of 64`, when the
    first batch was drawn, naming neither field."""
    data = {
        "configs": {"a": {"builtin": "stdlib"}, "b": {"builtin": "stdlib"}},
        "train_weights": weights,
        "mixture_block_size": 64,
    }
    # 501 is the smallest block whose largest-remainder counts give b one example
    assert _decode_problems(data) == [
        f"data.mixture_block_size: 64 examples per block give ['b'] no example with {where} "
        "{'a': 1000.0, 'b': 1.0}, so they would never be sampled: raise "
        "mixture_block_size (with 501 each gets at least one) or their weights in "
        "train_weights"
    ]
    assert _decode_problems({**data, "mixture_block_size": 501}) == []
