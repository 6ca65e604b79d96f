"""AsyncDataset combinators, permutations and packed causal-LM windows."""

from __future__ import annotations

import haliax as hax
import jax
import numpy as np
import pytest

from lm.data import (
    CausalLmDataset,
    ListDataset,
    Permutation,
    build_or_load_cache,
    causal_loss_mask,
)
from lm.data.cache import CacheOptions
from lm.data.permutation import seed_from_key
from lm.data.sources import UrlSource
from lm.data.tokenizer import DocumentEncoder
from lm.models.lm_model import LmExample


@pytest.mark.parametrize("kind", ["feistel", "linear"])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_permutation_is_a_bijection(kind, n):
    perm = Permutation(n, seed=1234, kind=kind)
    out = perm(np.arange(n))
    assert sorted(out.tolist()) == list(range(n))
    # Any subset of indices maps consistently with the full table.
    sub = np.array([n - 1, 0, n // 2])
    assert perm(sub).tolist() == out[sub].tolist()


def test_permutation_is_deterministic_and_depends_on_the_seed():
    n = 10_000
    a = Permutation(n, 7)(np.arange(n))
    assert a.tolist() == Permutation(n, 7)(np.arange(n)).tolist()
    b = Permutation(n, 8)(np.arange(n))
    assert (a != b).mean() > 0.99
    # A real shuffle: few fixed points and neighbours land far apart.
    assert (a == np.arange(n)).sum() < 10
    assert np.median(np.abs(np.diff(a))) > n / 10
    with pytest.raises(IndexError):
        Permutation(n, 7)([n])
    with pytest.raises(ValueError, match="permutation_type must be one of"):
        Permutation(n, 7, "random")


def test_seed_from_key_accepts_raw_and_typed_keys():
    raw = jax.random.PRNGKey(3)
    typed = jax.random.key(3)
    assert seed_from_key(raw) == seed_from_key(typed)
    assert seed_from_key(raw) != seed_from_key(jax.random.PRNGKey(4))


def test_map_slice_shuffle_era_shuffle():
    base = ListDataset(list(range(100)))
    assert base.map(lambda x: x * 2).get_batch([3, 1]) == [6, 2]
    sliced = base.slice(10, 20)
    assert len(sliced) == 10 and sliced.get_batch([0, 9]) == [10, 19]
    with pytest.raises(IndexError):
        sliced.get_batch([10])
    assert len(base.slice(95, 200)) == 5

    key = jax.random.PRNGKey(0)
    shuffled = base.shuffle(key)
    perm = Permutation(100, seed_from_key(key))
    assert shuffled.get_batch(list(range(100))) == perm(np.arange(100)).tolist()
    assert sorted(shuffled.get_batch(list(range(100)))) == list(range(100))
    assert base.shuffle(key).get_batch([5, 6]) == shuffled.get_batch([5, 6])
    assert base.shuffle(jax.random.PRNGKey(1)).get_batch(list(range(100))) != shuffled.get_batch(
        list(range(100))
    )

    era = base.era_shuffle(30, key)
    got = era.get_batch(list(range(100)))
    for start in range(0, 100, 30):
        stop = min(start + 30, 100)
        assert sorted(got[start:stop]) == list(range(start, stop))  # stays inside its era
    assert got != list(range(100))
    linear = base.shuffle(key, perm_type="linear").get_batch(list(range(100)))
    assert sorted(linear) == list(range(100)) and linear != got


def test_era_shuffle_works_on_infinite_datasets():
    from lm.data.dataset import AsyncDataset

    class Naturals(AsyncDataset):
        def is_finite(self):
            return False

        def __len__(self):
            raise TypeError("infinite")

        def get_batch(self, indices):
            return list(indices)

    era = Naturals().era_shuffle(8, jax.random.PRNGKey(2))
    got = era.get_batch(list(range(1000, 1016)))
    assert sorted(got[:8]) == list(range(1000, 1008)) and sorted(got[8:]) == list(range(1008, 1016))
    with pytest.raises(TypeError, match="finite"):
        Naturals().shuffle(jax.random.PRNGKey(0))


def _reference_windows(docs: list[list[int]], seq_len: int):
    """Concatenate, cut, and number documents within each window: the packing spec."""
    flat = [t for d in docs for t in d]
    doc_of = [i for i, d in enumerate(docs) for _ in d]
    out = []
    for w in range(len(flat) // seq_len):
        s = w * seq_len
        seg = [doc_of[s + j] - doc_of[s] for j in range(seq_len)]
        out.append((flat[s : s + seq_len], seg))
    return out


@pytest.fixture
def packed(tmp_path):
    lines = "".join(
        f'{{"ids": {list(range(k * 10, k * 10 + n))}}}\n' for k, n in enumerate([3, 9, 1, 5, 12, 2])
    )
    (tmp_path / "ids.jsonl").write_text(lines)
    source = UrlSource.from_patterns([str(tmp_path / "ids.jsonl")], text_key="ids")
    enc = DocumentEncoder("passthrough", vocab_size=200, enforce_eos=False)
    cache = build_or_load_cache(str(tmp_path / "c"), source, enc, CacheOptions(backend="local"))
    docs = [list(range(k * 10, k * 10 + n)) for k, n in enumerate([3, 9, 1, 5, 12, 2])]
    return cache, docs


def test_packed_windows_and_segment_ids_match_the_reference(packed):
    cache, docs = packed
    Pos = hax.Axis("position", 5)
    ds = CausalLmDataset(cache, Pos)
    ref = _reference_windows(docs, 5)
    assert len(ds) == len(ref) == 32 // 5
    examples = ds.get_batch(list(range(len(ds)))[::-1])
    for ex, (tokens, seg) in zip(examples, ref[::-1], strict=True):
        assert ex.tokens.axes == (Pos,)
        assert ex.tokens.array.tolist() == tokens
        assert ex.segment_ids.array.tolist() == seg


def test_loss_mask_matches_lm_example_causal(packed):
    cache, _ = packed
    Pos = hax.Axis("position", 7)
    for ignore_id in (None, 41):
        ds = CausalLmDataset(cache, Pos, ignore_id=ignore_id)
        for ex in ds.get_batch(list(range(len(ds)))):
            oracle = LmExample.causal(
                hax.named(ex.tokens.array, (Pos,)),
                segment_ids=hax.named(ex.segment_ids.array, (Pos,)),
                ignore_id=ignore_id,
            )
            assert ex.loss_mask.array.dtype == np.bool_
            assert ex.loss_mask.array.tolist() == np.asarray(oracle.loss_mask.array).tolist()


def test_causal_loss_mask_batched_with_padding():
    tokens = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    seg = np.array([[0, 0, 1, 1], [0, 0, 0, -1]])
    assert causal_loss_mask(tokens, seg).tolist() == [
        [True, False, True, False],
        [True, True, False, False],
    ]
    assert causal_loss_mask(tokens, seg, ignore_id=3).tolist()[0] == [True, False, True, False]
    assert causal_loss_mask(tokens, seg, ignore_id=2).tolist()[0] == [False, False, True, False]


def test_seq_len_errors(packed):
    cache, _ = packed
    with pytest.raises(ValueError, match="at least 2"):
        CausalLmDataset(cache, hax.Axis("position", 1))
    assert len(CausalLmDataset(cache, hax.Axis("position", 64))) == 0
