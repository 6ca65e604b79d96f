"""Mixtures: deterministic block sampling, weight schedules, config wiring."""

from __future__ import annotations

import collections

import haliax as hax
import jax
import numpy as np
import pytest

from lm.data import (
    CacheOptions,
    ListDataset,
    LMDatasetSourceConfig,
    LMMixtureDatasetConfig,
    MixtureDataset,
    MixtureStage,
)
from lm.data.mixture import block_counts
from lm.schedule import BatchSchedule, ScheduleStep


def _reference_counts(weights, block):
    """Largest remainder, ties to the earlier component (written independently here)."""
    total = sum(weights)
    quotas = [w / total * block for w in weights]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (counts[i] - quotas[i], i))
    for i in order[: block - sum(counts)]:
        counts[i] += 1
    return counts


@pytest.mark.parametrize(
    "weights, block",
    [([0.7, 0.3], 10), ([1, 1, 1], 10), ([0.5, 0.25, 0.25, 0.0], 7), ([3, 1], 2048), ([0.2], 5)],
)
def test_block_counts_are_the_largest_remainder(weights, block):
    counts = block_counts(weights, block)
    assert counts.tolist() == _reference_counts(weights, block)
    assert counts.sum() == block


def _tagged(name, n):
    return ListDataset([(name, i) for i in range(n)])


def test_every_block_has_exact_counts_and_components_read_in_order():
    mix = MixtureDataset(
        {"a": _tagged("a", 1000), "b": _tagged("b", 1000), "c": _tagged("c", 1000)},
        [MixtureStage(0, {"a": 0.5, "b": 0.3, "c": 0.2})],
        block_size=20,
        seed=11,
    )
    assert not mix.is_finite()
    items = mix.get_batch(range(200))
    for b in range(10):
        names = collections.Counter(n for n, _ in items[b * 20 : (b + 1) * 20])
        assert names == {"a": 10, "b": 6, "c": 4}
    for name, per_block in (("a", 10), ("b", 6), ("c", 4)):
        local = [i for n, i in items if n == name]
        assert sorted(local) == list(range(10 * per_block))  # each example once, nothing skipped
        assert local != sorted(local)  # shuffled inside blocks
    # Any subset (as a resumed run or another process asks) matches the full table.
    picks = [199, 0, 57, 58, 120]
    assert mix.get_batch(picks) == [items[i] for i in picks]
    same = MixtureDataset(
        {"a": _tagged("a", 1000), "b": _tagged("b", 1000), "c": _tagged("c", 1000)},
        [MixtureStage(0, {"a": 0.5, "b": 0.3, "c": 0.2})],
        block_size=20,
        seed=11,
    )
    assert same.get_batch(range(200)) == items
    other = MixtureDataset(
        {"a": _tagged("a", 1000), "b": _tagged("b", 1000), "c": _tagged("c", 1000)},
        [MixtureStage(0, {"a": 0.5, "b": 0.3, "c": 0.2})],
        block_size=20,
        seed=12,
    )
    assert other.get_batch(range(200)) != items


def test_components_restart_when_exhausted():
    mix = MixtureDataset(
        {"small": _tagged("s", 3), "big": _tagged("b", 100)},
        [MixtureStage(0, {"small": 0.5, "big": 0.5})],
        block_size=4,
        seed=0,
    )
    small = [i for n, i in mix.get_batch(range(40)) if n == "s"]
    assert len(small) == 20 and collections.Counter(small) == {0: 7, 1: 7, 2: 6}


def test_weight_schedule_switches_at_the_next_block_boundary():
    comps = {"a": _tagged("a", 10_000), "b": _tagged("b", 10_000)}
    mix = MixtureDataset(
        comps,
        [MixtureStage(0, {"a": 1.0}), MixtureStage(100, {"a": 0.25, "b": 0.75})],
        block_size=16,
        seed=3,
    )
    items = mix.get_batch(range(160))
    # Block 6 covers 96..111 and starts before 100: still stage 0. Block 7 (112..) switches.
    assert all(n == "a" for n, _ in items[:112])
    for b in range(7, 10):
        assert collections.Counter(n for n, _ in items[b * 16 : (b + 1) * 16]) == {"a": 4, "b": 12}
    a_local = [i for n, i in items if n == "a"]
    assert sorted(a_local) == list(range(112 + 3 * 4))  # component a continues where it was
    assert sorted(i for n, i in items if n == "b") == list(range(36))


def test_mixture_errors():
    with pytest.raises(ValueError, match=r"give \['rare'\] no example per block of 16"):
        MixtureDataset(
            {"big": _tagged("b", 10), "rare": _tagged("r", 10)},
            [MixtureStage(0, {"big": 0.999, "rare": 0.001})],
            block_size=16,
            seed=0,
        )
    with pytest.raises(ValueError, match="component 'empty' is empty"):
        MixtureDataset({"empty": ListDataset([])}, [MixtureStage(0, {"empty": 1.0})], 4, 0)
    with pytest.raises(TypeError, match="infinite"):
        len(MixtureDataset({"a": _tagged("a", 3)}, [MixtureStage(0, {"a": 1.0})], 4, 0))


@pytest.fixture
def mixture_corpus(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "web" / "w.jsonl", [f"web page number {i} " * 8 for i in range(40)])
    write_jsonl(tmp_path / "web_val.jsonl", [f"held out web page {i} " * 8 for i in range(5)])
    write_jsonl(
        tmp_path / "code" / "c.jsonl",
        [f"def f{i}(x):\n    return x + {i}\n" * 4 for i in range(40)],
    )
    write_jsonl(tmp_path / "empty.jsonl", [])
    return tmp_path


def _mixture(root, **kw):
    defaults = dict(
        configs={
            "web": LMDatasetSourceConfig(
                train_urls=[str(root / "web" / "*.jsonl")],
                validation_urls=[str(root / "web_val.jsonl")],
            ),
            "code": LMDatasetSourceConfig(train_urls=[str(root / "code" / "*.jsonl")]),
            "heldout": LMDatasetSourceConfig(validation_urls=[str(root / "web_val.jsonl")]),
        },
        train_weights={"web": 0.75, "code": 0.25},
        mixture_block_size=8,
        cache_dir=str(root / "cache"),
        cache_options=CacheOptions(backend="local"),
    )
    defaults.update(kw)
    return LMMixtureDatasetConfig(**defaults)


def test_mixture_config_train_and_validation_sets(mixture_corpus, builtin_tokenizer):
    cfg = _mixture(mixture_corpus)
    Pos = hax.Axis("position", 32)
    with pytest.raises(ValueError, match="needs key= or data.data_seed"):
        cfg.train_set(Pos)
    train = cfg.train_set(Pos, key=jax.random.PRNGKey(0))
    batch = train.get_batch(range(64))
    code_ids = set(builtin_tokenizer("def f")["input_ids"])
    is_code = [bool(code_ids & set(ex.tokens.array.tolist())) for ex in batch]
    assert sum(is_code) == 16  # 2 of every block of 8
    again = cfg.train_set(Pos, key=jax.random.PRNGKey(0)).get_batch(range(64))
    assert all(
        np.array_equal(x.tokens.array, y.tokens.array) for x, y in zip(batch, again, strict=True)
    )
    evals = cfg.validation_sets(Pos)
    assert sorted(evals) == ["heldout", "web"]
    assert (mixture_corpus / "cache" / "web" / "train" / "ledger.json").exists()
    assert (mixture_corpus / "cache" / "heldout" / "validation" / "ledger.json").exists()
    assert not (mixture_corpus / "cache" / "heldout" / "train").exists()


def test_mixture_weight_schedule_uses_the_batch_schedule(mixture_corpus):
    cfg = _mixture(mixture_corpus, train_weights=[(0, {"web": 1.0}), (2, {"code": 1.0})])
    Pos = hax.Axis("position", 32)
    with pytest.raises(ValueError, match="needs batch_schedule="):
        cfg.train_set(Pos, key=jax.random.PRNGKey(0))
    schedule = BatchSchedule([ScheduleStep(0, 8), ScheduleStep(1, 16)])
    train = cfg.train_set(Pos, key=jax.random.PRNGKey(0), batch_schedule=schedule)
    # Step 2 starts at example 8 + 16 = 24, a block boundary: from there on only code.
    code = train.get_batch(range(24, 40))
    webs = train.get_batch(range(0, 24))
    decode = cfg.the_tokenizer.decode
    assert all("return" in decode(ex.tokens.array.tolist()) for ex in code)
    assert all("web page" in decode(ex.tokens.array.tolist()) for ex in webs)


def test_mixture_component_with_no_data_is_an_error(mixture_corpus):
    cfg = _mixture(
        mixture_corpus,
        configs={
            "web": LMDatasetSourceConfig(train_urls=[str(mixture_corpus / "web" / "*.jsonl")]),
            "empty": LMDatasetSourceConfig(train_urls=[str(mixture_corpus / "empty.jsonl")]),
        },
        train_weights={"web": 0.5, "empty": 0.5},
    )
    with pytest.raises(ValueError, match=r"data.configs.empty \(training\) has 0 tokens"):
        cfg.train_set(hax.Axis("position", 32), key=jax.random.PRNGKey(0))
    missing = _mixture(
        mixture_corpus,
        configs={
            "web": LMDatasetSourceConfig(train_urls=[str(mixture_corpus / "nope" / "*.jsonl")])
        },
        train_weights={"web": 1.0},
    )
    with pytest.raises(
        ValueError, match=r"data.configs.web.train_urls: the glob .* matched no files"
    ):
        missing.train_set(hax.Axis("position", 32), key=jax.random.PRNGKey(0))


def test_the_train_split_of_an_unweighted_component_is_not_tokenized(mixture_corpus, caplog):
    """A component without a train weight is validation only, but build_caches (train_lm and
    cache_dataset) tokenized its train split too: hours for a large corpus never sampled."""
    cfg = _mixture(mixture_corpus, train_weights={"web": 1.0, "code": 0.0})
    with caplog.at_level("INFO", logger="lm.data.config"):
        caches = cfg.build_caches()
    assert sorted(caches) == ["heldout/validation", "web/train", "web/validation"]
    assert not (mixture_corpus / "cache" / "code").exists()
    assert "not tokenizing the train split of code: no weight in data.train_weights" in caplog.text
    train = cfg.train_set(hax.Axis("position", 32), key=jax.random.PRNGKey(0))
    assert len(train.get_batch(range(8))) == 8
    assert not (mixture_corpus / "cache" / "code").exists()
