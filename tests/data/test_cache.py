"""The tokenized TensorStore cache: contents, ledger, fingerprints, crash resume."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lm.data import build_progress, cache_arrays
from lm.data import cache as cache_mod
from lm.data.cache import CacheOptions, TokenCache, build_or_load_cache, read_ledger
from lm.data.sources import UrlSource
from lm.data.tokenizer import DocumentEncoder

LOCAL = CacheOptions(backend="local", batch_size=2)


def _reference(tokenizer, docs, eos=True):
    out = []
    for d in docs:
        ids = tokenizer(d)["input_ids"]
        out.append(ids + [tokenizer.eos_token_id] if eos else ids)
    return out


def test_cache_holds_every_document_with_eos(tmp_path, jsonl_corpus, builtin_tokenizer):
    source = UrlSource.from_patterns([str(jsonl_corpus / "train.{0..2}.jsonl")])
    enc = DocumentEncoder("builtin")
    cache = build_or_load_cache(str(tmp_path / "c"), source, enc, LOCAL)
    docs = [d for i in range(3) for d in source.open_shard(i)]
    expected = _reference(builtin_tokenizer, docs)
    assert cache.num_docs == len(docs) == 18
    assert cache.num_tokens == sum(map(len, expected))
    flat = cache.read_ranges([(0, cache.num_tokens)])[0]
    assert flat.tolist() == [t for e in expected for t in e]
    ends = np.cumsum([len(e) for e in expected])
    assert cache.doc_ends.tolist() == ends.tolist()
    # Ranges across shard boundaries, empty ranges and single tokens.
    a, b = int(cache.shard_starts[1]) - 3, int(cache.shard_starts[2]) + 2
    got = cache.read_ranges([(a, b), (5, 5), (7, 8)])
    assert (
        got[0].tolist() == flat[a:b].tolist() and got[1].size == 0 and got[2].tolist() == [flat[7]]
    )
    with pytest.raises(IndexError):
        cache.read_ranges([(0, cache.num_tokens + 1)])

    ledger = json.loads((tmp_path / "c" / "ledger.json").read_text())
    assert ledger["complete"] is True and len(ledger["finished"]) == 3
    assert ledger["tokenizer_fingerprint"] == enc.fingerprint()
    assert ledger["source_fingerprint"] == source.fingerprint()
    assert sum(s["num_tokens"] for s in ledger["finished"].values()) == cache.num_tokens


def test_reopening_reuses_and_mismatches_are_errors(tmp_path, jsonl_corpus, write_jsonl):
    path = str(tmp_path / "c")
    source = UrlSource.from_patterns([str(jsonl_corpus / "train.*.jsonl")])
    build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    calls = []
    orig = cache_mod.build_shard
    try:
        cache_mod.build_shard = lambda *a, **k: calls.append(a) or orig(*a, **k)
        again = build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    finally:
        cache_mod.build_shard = orig
    assert calls == [] and again.num_docs == 18

    with pytest.raises(
        ValueError, match=r"does not match this config \(tokenizer: cache built with builtin"
    ):
        build_or_load_cache(path, source, DocumentEncoder("builtin", enforce_eos=False), LOCAL)
    other = UrlSource.from_patterns([str(jsonl_corpus / "train.{0..1}.jsonl")])
    with pytest.raises(
        ValueError, match=r"sources: cache built from .*3 shards\], config asks for .*2 shards"
    ):
        build_or_load_cache(path, other, DocumentEncoder("builtin"), LOCAL)
    # A source file that changed size is a different source, even with the same names.
    write_jsonl(jsonl_corpus / "train.0.jsonl", ["changed"])
    changed = UrlSource.from_patterns([str(jsonl_corpus / "train.*.jsonl")])
    with pytest.raises(ValueError, match="delete this one to rebuild"):
        build_or_load_cache(path, changed, DocumentEncoder("builtin"), LOCAL)


def test_crash_resume_rebuilds_only_unfinished_shards(tmp_path, write_jsonl, monkeypatch):
    for i in range(5):
        write_jsonl(tmp_path / "src" / f"s{i}.jsonl", [f"shard {i} document {j}" for j in range(4)])
    source = UrlSource.from_patterns([str(tmp_path / "src" / "s{0..4}.jsonl")])
    path = str(tmp_path / "c")
    built = []
    orig = cache_mod.build_shard

    def crashing(cache_dir, index, *a, **k):
        if index == 3:
            raise RuntimeError("simulated crash while building shard 3")
        built.append(index)
        return orig(cache_dir, index, *a, **k)

    monkeypatch.setattr(cache_mod, "build_shard", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    ledger = read_ledger(path)
    assert not ledger.complete and len(ledger.finished) == 3 and built == [0, 1, 2]
    with pytest.raises(ValueError, match="not finished"):
        TokenCache(path)

    built.clear()
    monkeypatch.setattr(
        cache_mod, "build_shard", lambda c, i, *a, **k: built.append(i) or orig(c, i, *a, **k)
    )
    resumed = build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    assert built == [3, 4]
    fresh = build_or_load_cache(str(tmp_path / "fresh"), source, DocumentEncoder("builtin"), LOCAL)
    assert resumed.num_tokens == fresh.num_tokens
    assert (
        resumed.read_ranges([(0, resumed.num_tokens)])[0].tolist()
        == fresh.read_ranges([(0, fresh.num_tokens)])[0].tolist()
    )


def test_skipped_bad_lines_are_counted_in_the_ledger(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "good"}\nnot json\n{"text": "fine"}\n')
    source = UrlSource.from_patterns([str(tmp_path / "a.jsonl")], skip_bad_lines=True)
    cache = build_or_load_cache(str(tmp_path / "c"), source, DocumentEncoder("builtin"), LOCAL)
    assert cache.num_docs == 2
    assert read_ledger(str(tmp_path / "c")).finished[source.urls[0]].skipped_lines == 1
    strict = UrlSource.from_patterns([str(tmp_path / "a.jsonl")])
    with pytest.raises(ValueError, match=r"a\.jsonl:2: malformed JSON"):
        build_or_load_cache(str(tmp_path / "d"), strict, DocumentEncoder("builtin"), LOCAL)


def test_a_shard_without_documents_is_a_warning_naming_it(tmp_path, caplog):
    (tmp_path / "a.jsonl").write_text('{"text": "good"}\n')
    (tmp_path / "b.jsonl").write_text("")
    (tmp_path / "c.jsonl").write_text("not json\n")
    source = UrlSource.from_patterns([str(tmp_path / "*.jsonl")], skip_bad_lines=True)
    with caplog.at_level(logging.WARNING, logger="lm.data.cache"):
        cache = build_or_load_cache(str(tmp_path / "c"), source, DocumentEncoder("builtin"), LOCAL)
    assert cache.num_docs == 1
    found = [r.getMessage() for r in caplog.records if "holds no documents" in r.getMessage()]
    assert len(found) == 2, found
    assert "b.jsonl) holds no documents (the file or its texts are empty)" in found[0]
    assert "c.jsonl) holds no documents besides its 1 bad lines" in found[1]


def test_memory_cache_and_passthrough_ids(tmp_path):
    (tmp_path / "ids.jsonl").write_text('{"ids": [1, 2, 3]}\n{"ids": "4 5"}\n{"ids": [9]}\n')
    source = UrlSource.from_patterns([str(tmp_path / "ids.jsonl")], text_key="ids")
    enc = DocumentEncoder("passthrough", vocab_size=10, enforce_eos=False)
    cache = build_or_load_cache("memory://caches/pt", source, enc, LOCAL)
    assert cache.read_ranges([(0, 6)])[0].tolist() == [1, 2, 3, 4, 5, 9]
    assert cache.doc_ends.tolist() == [3, 5, 6]
    reopened = TokenCache("memory://caches/pt")
    assert reopened.num_tokens == 6
    with pytest.raises(ValueError, match=r"passthrough token id 9 is outside \[0, vocab_size=8\)"):
        build_or_load_cache(
            "memory://caches/pt8", source, DocumentEncoder("passthrough", 8, False), LOCAL
        )
    with pytest.raises(ValueError, match="memory.*backend: local"):
        build_or_load_cache("memory://caches/ray", source, enc, CacheOptions(backend="ray"))


def test_bos_eos_policy(builtin_tokenizer):
    eos = builtin_tokenizer.eos_token_id
    plain = builtin_tokenizer("hello world")["input_ids"]
    assert (
        DocumentEncoder("builtin", enforce_eos=False).encode_batch(["hello world"])[0].tolist()
        == plain
    )
    assert DocumentEncoder("builtin").encode_batch(["hello world"])[0].tolist() == plain + [eos]
    with_bos = DocumentEncoder("builtin", add_bos=True).encode_batch(["hello world"])[0].tolist()
    assert with_bos == [builtin_tokenizer.bos_token_id, *plain, eos]
    # Long documents are kept whole (chunking happens when windows are cut, not here).
    long_doc = "def f():\n    return 1\n" * 5000
    ids = DocumentEncoder("builtin").encode_batch([long_doc])[0]
    assert len(ids) > 20000 and ids[-1] == eos


def test_bos_policy_with_a_tokenizer_that_adds_bos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, "a": 3, "b": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    hf.save_pretrained(str(tmp_path / "tok"))
    name = str(tmp_path / "tok")
    assert DocumentEncoder(name).encode_batch(["a b"])[0].tolist() == [0, 3, 4, 1]
    assert DocumentEncoder(name, add_bos=True).encode_batch(["a b"])[0].tolist() == [0, 3, 4, 1]
    assert DocumentEncoder(name, add_bos=False).encode_batch(["a b"])[0].tolist() == [3, 4, 1]
    assert DocumentEncoder(name, enforce_eos=False).encode_batch(["b"])[0].tolist() == [0, 4]
    assert DocumentEncoder(name).fingerprint() != DocumentEncoder(name, add_bos=False).fingerprint()


def test_only_process_zero_builds_the_others_wait(tmp_path, jsonl_corpus, monkeypatch):
    import threading

    source = UrlSource.from_patterns([str(jsonl_corpus / "train.*.jsonl")])
    path = str(tmp_path / "c")
    builder = threading.Event()  # set in the thread that plays process 0
    local = threading.local()
    monkeypatch.setattr(cache_mod, "_is_builder_process", lambda: getattr(local, "is_zero", False))
    monkeypatch.setattr(cache_mod, "WAIT_POLL_S", 0.05)
    results = {}

    def process(rank):
        local.is_zero = rank == 0
        if rank == 0:
            builder.wait(10)  # start building only after the other process is waiting
        results[rank] = build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)

    waiter = threading.Thread(target=process, args=(1,))
    zero = threading.Thread(target=process, args=(0,))
    waiter.start()
    zero.start()
    time.sleep(0.3)
    assert waiter.is_alive() and read_ledger(path) is None  # waiting, wrote nothing
    builder.set()
    zero.join(30)
    waiter.join(30)
    assert results[0].num_tokens == results[1].num_tokens > 0


def test_ray_backend_without_ray_says_how_to_build_in_process(tmp_path, monkeypatch):
    """An image with its own packages (the GPU machines') may have no Ray: a clear error
    naming the local backend, not an ImportError traceback."""
    (tmp_path / "ids.jsonl").write_text('{"ids": [1, 2, 3]}\n')
    source = UrlSource.from_patterns([str(tmp_path / "ids.jsonl")], text_key="ids")
    enc = DocumentEncoder("passthrough", vocab_size=10, enforce_eos=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails
    with pytest.raises(ValueError, match="Ray is not installed.*backend: local"):
        build_or_load_cache(str(tmp_path / "cache"), source, enc, CacheOptions(backend="ray"))


def _three_shard_cache(tmp_path, write_jsonl):
    for i in range(3):
        write_jsonl(
            tmp_path / "src" / f"s{i}.jsonl", [f"shard {i} document {j} " * 20 for j in range(8)]
        )
    source = UrlSource.from_patterns([str(tmp_path / "src" / "s{0..2}.jsonl")])
    path = str(tmp_path / "c")
    return source, path, build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)


def test_a_missing_shard_is_an_error_naming_it_and_its_entry_can_be_rebuilt(
    tmp_path, write_jsonl, monkeypatch
):
    source, path, cache = _three_shard_cache(tmp_path, write_jsonl)
    expected_tokens = cache.read_ranges([(0, cache.num_tokens)])[0].tolist()
    shutil.rmtree(tmp_path / "c" / "shards" / "00002")
    # The ledger still says complete: opening checks every shard it lists.
    p = re.escape(path)
    message = (
        rf"cache shard {p}/shards/00002 is missing \(NOT_FOUND: .*\): the tokenized cache at "
        rf"{p} is damaged\. Delete {p} to rebuild the cache, or rebuild just this shard: "
        rf'remove "{re.escape(source.urls[2])}" from "finished" in {p}/ledger.json'
    )
    with pytest.raises(ValueError, match=message) as info:
        build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    assert "tensorstore_spec" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        TokenCache(path)

    # Following the advice rebuilds only that shard.
    ledger = json.loads((tmp_path / "c" / "ledger.json").read_text())
    del ledger["finished"][source.urls[2]]
    ledger["complete"] = False
    (tmp_path / "c" / "ledger.json").write_text(json.dumps(ledger))
    built = []
    orig = cache_mod.build_shard
    monkeypatch.setattr(
        cache_mod, "build_shard", lambda c, i, *a, **k: built.append(i) or orig(c, i, *a, **k)
    )
    rebuilt = build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    assert built == [2]
    assert rebuilt.read_ranges([(0, rebuilt.num_tokens)])[0].tolist() == expected_tokens


def test_a_truncated_chunk_read_mid_run_is_an_error_naming_the_shard(tmp_path, write_jsonl):
    _, path, _ = _three_shard_cache(tmp_path, write_jsonl)
    cache = TokenCache(path)  # opened before the damage, as in a running job
    (chunk,) = (tmp_path / "c" / "shards" / "00001" / "tokens" / "c").iterdir()
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    start = int(cache.shard_starts[1])
    assert cache.read_ranges([(0, start)])[0].size == start  # other shards still read
    with pytest.raises(
        ValueError,
        match=rf"cache shard {re.escape(path)}/shards/00001 cannot be read \(.*Zstd.*\): the "
        rf"tokenized cache at {re.escape(path)} is damaged or unreachable\. Delete",
    ):
        cache.read_ranges([(start - 2, start + 2)])


def test_a_ledger_that_disagrees_with_its_shards_is_an_error(tmp_path, write_jsonl):
    source, path, _ = _three_shard_cache(tmp_path, write_jsonl)
    p = re.escape(path)
    ledger_path = tmp_path / "c" / "ledger.json"
    good = ledger_path.read_text()
    ledger = json.loads(good)
    ledger["finished"][source.urls[1]]["num_docs"] += 1
    ledger_path.write_text(json.dumps(ledger))
    with pytest.raises(
        ValueError,
        match=rf"cache shard {p}/shards/00001 holds \d+ tokens in 8 documents but the ledger "
        rf"says \d+ in 9: the tokenized cache at {p} is damaged",
    ):
        TokenCache(path)
    ledger = json.loads(good)
    del ledger["finished"][source.urls[0]]
    ledger_path.write_text(json.dumps(ledger))
    with pytest.raises(ValueError, match=rf"cache at {p} is damaged: its ledger says complete"):
        TokenCache(path)


def _zeros_cache(tmp_path, write_jsonl):
    """One shard of passthrough ids: chunk 0 all zeros, chunk 1 ones, chunk 2 a short tail."""
    n = cache_mod.TOKENS_CHUNK
    docs = [[0] * n, [1] * n, [2] * 10]
    write_jsonl(tmp_path / "ids.jsonl", docs, key="ids")
    source = UrlSource.from_patterns([str(tmp_path / "ids.jsonl")], text_key="ids")
    enc = DocumentEncoder("passthrough", vocab_size=4, enforce_eos=False)
    path = str(tmp_path / "c")
    return path, build_or_load_cache(path, source, enc, LOCAL)


def test_every_chunk_is_stored_and_a_deleted_one_is_an_error(tmp_path, write_jsonl):
    """Format 2: a chunk of zeros is written like any other, so a chunk file that is not
    there is damage, and reading it is an error naming the shard, never zeros."""
    path, cache = _zeros_cache(tmp_path, write_jsonl)
    assert read_ledger(path).version == cache_mod.CACHE_FORMAT_VERSION == 2
    chunks = tmp_path / "c" / "shards" / "00000" / "tokens" / "c"
    assert sorted(p.name for p in chunks.iterdir()) == ["0", "1", "2"]
    n = cache_mod.TOKENS_CHUNK
    assert cache.read_ranges([(n - 2, n + 2)])[0].tolist() == [0, 0, 1, 1]
    (chunks / "0").unlink()
    assert cache.read_ranges([(n, n + 2)])[0].tolist() == [1, 1]
    with pytest.raises(
        ValueError,
        match=rf"cache shard {re.escape(path)}/shards/00000 has a missing chunk \(NOT_FOUND: "
        r".*tokens/c/0.*\): the tokenized cache at .* is damaged\. Delete",
    ):
        cache.read_ranges([(0, 4)])
    # and opening the cache again (as cache_dataset and every run do) finds it at once,
    # not when training reaches the chunk
    with pytest.raises(
        ValueError,
        match=rf"cache shard {re.escape(path)}/shards/00000 is missing chunk tokens/c/0: the "
        rf"tokenized cache at {re.escape(path)} is damaged\. Delete",
    ):
        TokenCache(path)


def test_a_flipped_bit_fails_the_chunk_checksum(tmp_path, write_jsonl):
    path, cache = _zeros_cache(tmp_path, write_jsonl)
    chunk = tmp_path / "c" / "shards" / "00000" / "tokens" / "c" / "1"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1  # the stored crc32c itself: the zstd frame still decodes
    chunk.write_bytes(bytes(data))
    n = cache_mod.TOKENS_CHUNK
    with pytest.raises(ValueError, match=r"shards/00000 cannot be read \(DATA_LOSS: .*Digest"):
        TokenCache(path).read_ranges([(n, n + 2)])


def _as_format_1(cache_dir) -> dict:
    """Mark the cache at `cache_dir` (a local path) as format 1; returns its ledger."""
    ledger_path = cache_dir / "ledger.json"
    ledger = json.loads(ledger_path.read_text())
    ledger["version"] = 1
    ledger_path.write_text(json.dumps(ledger))
    return ledger


def test_a_format_1_cache_still_reads_with_a_warning_and_an_unknown_format_is_refused(
    tmp_path, write_jsonl, caplog
):
    """Caches from before chunk checksums (format 1) read as before, with a warning that a
    damaged chunk may go unnoticed; a newer format than this code knows is refused."""
    path, _ = _zeros_cache(tmp_path, write_jsonl)
    ledger = _as_format_1(tmp_path / "c")
    with caplog.at_level("WARNING", logger="lm.data.cache"):
        old = TokenCache(path)
    (record,) = [r for r in caplog.records if "format version 1" in r.getMessage()]
    assert record.levelname == "WARNING" and "carry no checksums" in record.getMessage()
    assert old.read_ranges([(0, 3)])[0].tolist() == [0, 0, 0]
    ledger["version"] = 3
    (tmp_path / "c" / "ledger.json").write_text(json.dumps(ledger))
    with pytest.raises(ValueError, match=r"format version 3, this code reads versions \[1, 2\]"):
        build_or_load_cache(
            path,
            UrlSource.from_patterns([str(tmp_path / "ids.jsonl")], text_key="ids"),
            DocumentEncoder("passthrough", vocab_size=4, enforce_eos=False),
            LOCAL,
        )


def test_a_format_1_cache_missing_a_chunk_is_refused_on_open(tmp_path, write_jsonl):
    """Format 1 did not store all-zero chunks, so a deleted chunk read as zeros and the run
    trained on them: opening one now checks that every chunk its shape implies is there."""
    path, _ = _zeros_cache(tmp_path, write_jsonl)
    _as_format_1(tmp_path / "c")
    chunks = tmp_path / "c" / "shards" / "00000" / "tokens" / "c"
    (chunks / "0").unlink()
    p = re.escape(path)
    message = (
        rf"cache shard {p}/shards/00000 is missing chunk tokens/c/0: the tokenized cache at {p} "
        r"is damaged \(it has format version 1, which did not store chunks that were entirely "
        r"token id 0, so a rebuild is the way to be sure\)\. Delete .* to rebuild the cache, or "
        r'rebuild just this shard: remove ".*ids\.jsonl" from "finished"'
    )
    with pytest.raises(ValueError, match=message):
        TokenCache(path)
    (chunks / "2").unlink()
    with pytest.raises(ValueError, match=r"missing chunk tokens/c/0 \(and 1 more\): "):
        TokenCache(path)


def test_a_format_1_memory_cache_is_checked_too(tmp_path):
    """The chunk listing goes through TensorStore's kvstore, so it works for any URL."""
    import fsspec
    import tensorstore as ts

    (tmp_path / "ids.jsonl").write_text('{"ids": [1, 2, 3]}\n{"ids": [4]}\n')
    source = UrlSource.from_patterns([str(tmp_path / "ids.jsonl")], text_key="ids")
    enc = DocumentEncoder("passthrough", vocab_size=10, enforce_eos=False)
    path = "memory://caches/format1"
    build_or_load_cache(path, source, enc, LOCAL)
    fs = fsspec.filesystem("memory")
    ledger = json.loads(fs.cat_file(f"{path}/ledger.json"))
    ledger["version"] = 1
    fs.pipe_file(f"{path}/ledger.json", json.dumps(ledger).encode())
    assert TokenCache(path).read_ranges([(0, 4)])[0].tolist() == [1, 2, 3, 4]
    store = ts.KvStore.open(f"{path}/shards/00000/offsets/", context=cache_arrays.context())
    store.result().delete_range(ts.KvStore.KeyRange("c/0", "c/1")).result()
    with pytest.raises(ValueError, match=r"shards/00000 is missing chunk offsets/c/0: "):
        TokenCache(path)


def test_a_build_that_failed_before_any_shard_starts_over_with_new_settings(
    tmp_path, write_jsonl, caplog, monkeypatch
):
    """A failed build (here: the wrong text_key) with no finished shard is replaced by a
    rerun with the fixed config, not refused as a cache of another source."""
    write_jsonl(tmp_path / "a.jsonl", ["first document", "second document"], key="content")
    path = str(tmp_path / "c")
    wrong = UrlSource.from_patterns([str(tmp_path / "a.jsonl")])
    with pytest.raises(ValueError, match=r"a\.jsonl:1: no key 'text' \(text_key\)"):
        build_or_load_cache(path, wrong, DocumentEncoder("builtin"), LOCAL)
    assert not read_ledger(path).complete and not read_ledger(path).finished
    fixed = UrlSource.from_patterns([str(tmp_path / "a.jsonl")], text_key="content")

    # A process that is not the builder waits for process 0 to replace the ledger.
    import threading

    local = threading.local()
    monkeypatch.setattr(cache_mod, "_is_builder_process", lambda: getattr(local, "is_zero", True))
    monkeypatch.setattr(cache_mod, "WAIT_POLL_S", 0.05)
    waited = {}

    def other_process():
        local.is_zero = False
        waited["cache"] = build_or_load_cache(path, fixed, DocumentEncoder("builtin"), LOCAL)

    waiter = threading.Thread(target=other_process, daemon=True)
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()

    with caplog.at_level("INFO", logger="lm.data.cache"):
        cache = build_or_load_cache(path, fixed, DocumentEncoder("builtin"), LOCAL)
    waiter.join(30)
    assert cache.num_docs == 2 and waited["cache"].num_docs == 2
    assert (
        "is an unfinished build, with no finished shards, for other settings (sources: cache "
        "built from "
        in caplog.text
        and "starting it over for this config" in caplog.text
    )


def test_a_settings_mismatch_names_the_setting(tmp_path, write_jsonl):
    """With a shard finished, a failed build is not thrown away: a rerun with another
    text_key is refused, and the message shows the text_key of each side."""
    write_jsonl(tmp_path / "a.jsonl", ["one", "two"])
    write_jsonl(tmp_path / "b.jsonl", ["three"], key="content")
    path = str(tmp_path / "c")
    urls = [str(tmp_path / "{a,b}.jsonl")]
    with pytest.raises(ValueError, match=r"b\.jsonl:1: no key 'text'"):
        build_or_load_cache(path, UrlSource.from_patterns(urls), DocumentEncoder("builtin"), LOCAL)
    assert len(read_ledger(path).finished) == 1
    other = UrlSource.from_patterns(urls, text_key="content", skip_bad_lines=True)
    a = re.escape(str(tmp_path / "a.jsonl"))
    with pytest.raises(
        ValueError,
        match=rf"sources: cache built from {a} \(\+1 more\), text_key='text' \[\w+, 2 shards\], "
        rf"config asks for {a} \(\+1 more\), text_key='content', skip_bad_lines=true \[",
    ):
        build_or_load_cache(path, other, DocumentEncoder("builtin"), LOCAL)


def test_a_source_file_that_changed_size_is_named_as_such(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "a.jsonl", ["one", "two"])
    source = UrlSource.from_patterns([str(tmp_path / "a.jsonl")])
    path = str(tmp_path / "c")
    build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    write_jsonl(tmp_path / "a.jsonl", ["one", "two", "three"])
    changed = UrlSource.from_patterns([str(tmp_path / "a.jsonl")])
    with pytest.raises(ValueError, match=r"\(the same files and settings: a file changed size"):
        build_or_load_cache(path, changed, DocumentEncoder("builtin"), LOCAL)


# ---------------------------------------------------------------------------- the build lease

_BUILDER = """
import logging, pathlib, sys, time
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from lm.data import cache as cache_mod
from lm.data.sources import UrlSource
from lm.data.tokenizer import DocumentEncoder

corpus, cache_dir, ready, me = sys.argv[1:]
build_shard = cache_mod.build_shard


def slow_build_shard(*args, **kwargs):  # so that the two processes overlap for certain
    time.sleep(0.3)
    return build_shard(*args, **kwargs)


cache_mod.build_shard = slow_build_shard
source = UrlSource.from_patterns([corpus + "/train.*.jsonl"])
encoder = DocumentEncoder("builtin")
encoder.fingerprint()  # load the tokenizer before the start line
pathlib.Path(ready, me).touch()
while len(list(pathlib.Path(ready).iterdir())) < 2:
    time.sleep(0.01)
options = cache_mod.CacheOptions(backend="local", batch_size=2)
cache = cache_mod.build_or_load_cache(cache_dir, source, encoder, options)
print("TOKENS", cache.num_tokens, cache.read_ranges([(0, cache.num_tokens)])[0].sum())
"""


def test_two_processes_on_one_new_cache_build_it_once(tmp_path, jsonl_corpus, subprocess_env):
    """Two runs started at once on the same new cache_dir: one builds, the other waits for
    it (and says so), and both read the same finished cache."""
    (tmp_path / "ready").mkdir()
    script = tmp_path / "builder.py"
    script.write_text(_BUILDER)
    cache_dir = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(jsonl_corpus),
                str(cache_dir),
                str(tmp_path / "ready"),
                str(i),
            ],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    built = [out for out in outs if "Building the tokenized cache" in out]
    waited = [out for out in outs if "to finish building" in out]
    assert len(built) == 1 and len(waited) == 1 and built != waited, "\n".join(outs)
    pid = [p.pid for p, out in zip(procs, outs, strict=True) if out in built][0]
    assert re.search(
        rf"Waiting for process {pid} on {re.escape(socket.gethostname())} to finish building "
        rf"{re.escape(str(cache_dir))}",
        waited[0],
    ), waited[0]
    results = {line for out in outs for line in out.splitlines() if line.startswith("TOKENS")}
    reference = build_or_load_cache(
        str(tmp_path / "reference"),
        UrlSource.from_patterns([str(jsonl_corpus / "train.*.jsonl")]),
        DocumentEncoder("builtin"),
        LOCAL,
    )
    tokens = reference.read_ranges([(0, reference.num_tokens)])[0]
    assert results == {f"TOKENS {reference.num_tokens} {tokens.sum()}"}
    assert not (cache_dir / "build.lease").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lease(cache_dir, **fields):
    """A lease as a process of this host and pid namespace writes it (unless `fields` say
    otherwise)."""
    from lm.data import lease as lease_mod

    cache_dir.mkdir(parents=True, exist_ok=True)
    lease = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_space": lease_mod._pid_space(),
        "token": "theirs",
        "heartbeat": 0,
    }
    (cache_dir / "build.lease").write_text(json.dumps({**lease, **fields}))


def test_a_lease_from_another_pid_namespace_of_this_host_is_not_judged_by_its_pid():
    """Containers sharing the host's name (`--net=host`) do not share pids: a pid there says
    nothing here, so only the heartbeat timeout can make such a lease stale."""
    from lm.data.lease import LeaseState

    dead = _dead_pid()
    here = LeaseState(b"", socket.gethostname(), dead, None, "t", _pid_space_here())
    assert here.gone()
    elsewhere = LeaseState(b"", socket.gethostname(), dead, None, "t", "other-boot:1")
    assert not elsewhere.gone()


def _pid_space_here():
    from lm.data import lease as lease_mod

    return lease_mod._pid_space()


def test_a_lease_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path, jsonl_corpus, caplog):
    source = UrlSource.from_patterns([str(jsonl_corpus / "train.*.jsonl")])
    pid = _dead_pid()
    _write_lease(tmp_path / "c", pid=pid)
    with caplog.at_level("INFO", logger="lm.data"):
        cache = build_or_load_cache(str(tmp_path / "c"), source, DocumentEncoder("builtin"), LOCAL)
    assert cache.num_docs == 18
    assert f"Waiting for process {pid} on {socket.gethostname()} to finish building" in caplog.text
    assert f"is stale (process {pid} on {socket.gethostname()} is gone); taking the build over" in (
        caplog.text
    )
    assert not (tmp_path / "c" / "build.lease").exists()


def test_a_lease_whose_heartbeat_stops_is_taken_over_after_the_timeout(
    tmp_path, jsonl_corpus, caplog, monkeypatch
):
    """A lease of another host (its pid cannot be checked) is stale once its contents stop
    changing for lease.TIMEOUT_S by this process's clock; a live one is waited for."""
    from lm.data import lease

    monkeypatch.setattr(lease, "TIMEOUT_S", 0.5)
    monkeypatch.setattr(cache_mod, "WAIT_POLL_S", 0.05)
    source = UrlSource.from_patterns([str(jsonl_corpus / "train.*.jsonl")])
    _write_lease(tmp_path / "c", host="another-host", pid=1)
    start = time.monotonic()
    with caplog.at_level("INFO", logger="lm.data"):
        cache = build_or_load_cache(str(tmp_path / "c"), source, DocumentEncoder("builtin"), LOCAL)
    assert cache.num_docs == 18 and time.monotonic() - start >= 0.5
    assert "Waiting for process 1 on another-host to finish building" in caplog.text
    assert re.search(
        r"its heartbeat has not changed for \d+ s\); taking the build over", caplog.text
    )


def test_a_live_builder_is_waited_for_and_its_failure_taken_over(
    tmp_path, jsonl_corpus, caplog, monkeypatch
):
    """While another process's lease is fresh, nobody else builds; when it stops without
    finishing (its build failed), a waiting process builds the cache itself."""
    from lm.data import lease

    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(lease, "TIMEOUT_S", 1000)
    monkeypatch.setattr(cache_mod, "WAIT_POLL_S", 0.05)
    source = UrlSource.from_patterns([str(jsonl_corpus / "train.*.jsonl")])
    path = str(tmp_path / "c")
    held = lease.Lease.acquire(path)
    assert held is not None and lease.Lease.acquire(path) is None
    results = {}
    waiter = threading.Thread(
        target=lambda: results.update(
            cache=build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
        ),
        daemon=True,
    )
    with caplog.at_level("INFO", logger="lm.data"):
        waiter.start()
        time.sleep(1.0)  # many heartbeats: the lease is alive, nothing is built
        assert waiter.is_alive() and read_ledger(path) is None
        held.release()
        waiter.join(30)
    assert results["cache"].num_docs == 18
    assert f"process {os.getpid()} on {socket.gethostname()} stopped building" in caplog.text


# ---------------------------------------------------------------------------- source checksums


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.zst", "a.txt", "a.parquet"])
def test_the_ledger_records_each_source_files_size_mtime_and_checksum(tmp_path, write_jsonl, name):
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"document {i} " * 50 for i in range(40)]
    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table({"text": docs}), path)
    elif name.endswith(".txt"):
        path.write_text("\n".join(docs) + "\n")
    else:
        write_jsonl(path, docs)
    source = UrlSource.from_patterns([str(path)])
    build_or_load_cache(str(tmp_path / "c"), source, DocumentEncoder("builtin"), LOCAL)
    recorded = read_ledger(str(tmp_path / "c")).finished[str(path)].source_file
    assert recorded == {
        "size": path.stat().st_size,
        "mtime": str(path.stat().st_mtime),
        "blake2b": hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest(),
    }


def test_a_source_file_edited_in_place_is_refused_and_a_touched_one_reused(
    tmp_path, write_jsonl, caplog, monkeypatch
):
    """The same size is not the same file: a file whose modification time changed is hashed
    again; other bytes are an error, the same bytes (touched, copied) reuse the cache."""
    path = tmp_path / "a.jsonl"
    write_jsonl(path, ["one", "two"])
    os.utime(path, (1_000_000, 1_000_000))
    cache_dir = str(tmp_path / "c")
    enc = DocumentEncoder("builtin")
    build_or_load_cache(cache_dir, UrlSource.from_patterns([str(path)]), enc, LOCAL)

    def no_build(*args, **kwargs):
        raise AssertionError("the cache must be reused")

    monkeypatch.setattr(cache_mod, "build_shard", no_build)
    os.utime(path, (2_000_000, 2_000_000))  # touched: the same bytes
    with caplog.at_level("INFO", logger="lm.data.cache"):
        reused = build_or_load_cache(cache_dir, UrlSource.from_patterns([str(path)]), enc, LOCAL)
    assert reused.num_docs == 2
    assert "1 source files of the cache at" in caplog.text and "hold the same bytes" in caplog.text
    stamp = read_ledger(cache_dir).finished[str(path)].source_file
    assert stamp["mtime"] == str(path.stat().st_mtime)

    write_jsonl(path, ["one", "owt"])  # edited in place: the same size
    assert path.stat().st_size == stamp["size"]
    edited = UrlSource.from_patterns([str(path)])
    assert edited.fingerprint() == reused.ledger.source_fingerprint
    with pytest.raises(
        ValueError,
        match=rf"^the tokenized cache at {re.escape(cache_dir)} does not match this config: the "
        rf"source file {re.escape(str(path))} changed since the cache was built from it: it is "
        rf"{stamp['size']} bytes as before, but its contents differ \(blake2b {stamp['blake2b']} "
        r"when the cache was built, \w+ now; modified .* then, .* now\)\. Use another "
        r"cache_dir, or delete this one to rebuild it\.$",
    ):
        build_or_load_cache(cache_dir, edited, enc, LOCAL)

    # A cache from before checksums were recorded opens as before: sizes only.
    ledger = json.loads((tmp_path / "c" / "ledger.json").read_text())
    for stats in ledger["finished"].values():
        del stats["source_file"]
    (tmp_path / "c" / "ledger.json").write_text(json.dumps(ledger))
    assert build_or_load_cache(cache_dir, edited, enc, LOCAL).num_docs == 2


def test_memory_source_files_with_the_ray_backend_are_a_clear_error(tmp_path):
    import fsspec

    fsspec.filesystem("memory").pipe("/ray-srcs/ray.jsonl", b'{"text": "x"}\n')
    source = UrlSource.from_patterns(["memory://ray-srcs/ray.jsonl"])
    with pytest.raises(
        ValueError,
        match=r"^the source file 'memory://ray-srcs/ray\.jsonl' is in this process's memory, which "
        r"Ray workers cannot read; use cache_options\.backend: local$",
    ):
        build_or_load_cache(
            str(tmp_path / "c"), source, DocumentEncoder("builtin"), CacheOptions(backend="ray")
        )


def test_a_build_logs_its_progress(tmp_path, jsonl_corpus, caplog, monkeypatch):
    """Without a progress bar (train_lm) a build says how far it got every PROGRESS_LOG_S."""
    monkeypatch.setattr(build_progress, "PROGRESS_LOG_S", 0.0)
    source = UrlSource.from_patterns([str(jsonl_corpus / "train.*.jsonl")])
    path = str(tmp_path / "c")
    with caplog.at_level("INFO", logger="lm.data"):
        cache = build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    lines = [r.getMessage() for r in caplog.records if "shards done" in r.getMessage()]
    pattern = (
        rf"^Building the tokenized cache at {re.escape(path)}: (\d)/3 shards done, ([\d,]+) "
        r"tokens in ([\d,]+) documents so far \([\d,]+ tokens/s, [\d,]+ documents/s\)$"
    )
    found = [re.match(pattern, line) for line in lines]
    assert found and all(found), lines
    assert [m.group(1) for m in found][-1] == "3"
    assert found[-1].group(2) == f"{cache.num_tokens:,}" and found[-1].group(3) == "18"
    # within a shard, before it is done (batch_size=2: three batches per shard)
    assert any(m.group(1) == "0" and m.group(2) != "0" for m in found)


class _ObjectStore:
    """An object store's fsspec filesystem in memory (protocol `objstore://`), with or
    without a create-only `pipe_file`."""

    @staticmethod
    def register(conditional: bool):
        import fsspec
        from fsspec.implementations.memory import MemoryFileSystem

        class ObjectStoreFS(MemoryFileSystem):
            protocol = ("objstore",)
            store: dict = {}
            pseudo_dirs = [""]

            @classmethod
            def _strip_protocol(cls, path):
                return "/" + path.removeprefix("objstore://").lstrip("/")

            def pipe_file(self, path, value, **kwargs):
                if not conditional and kwargs:
                    raise TypeError(f"pipe_file() got unexpected keyword arguments {kwargs}")
                return super().pipe_file(path, value, **kwargs)

        fsspec.register_implementation("objstore", ObjectStoreFS, clobber=True)


@pytest.mark.parametrize("conditional", [True, False])
def test_the_lease_on_an_object_store_is_created_once(monkeypatch, conditional):
    from lm.data import lease

    monkeypatch.setattr(lease, "SETTLE_S", 0.0)
    _ObjectStore.register(conditional)
    cache_dir = f"objstore://bucket/cache-{conditional}"
    first = lease.Lease.acquire(cache_dir)
    assert first is not None and lease.Lease.acquire(cache_dir) is None
    state = lease.read(cache_dir)
    assert (state.pid, state.host, state.token) == (os.getpid(), socket.gethostname(), first.token)
    first.release()
    assert lease.read(cache_dir) is None
    second = lease.Lease.acquire(cache_dir)
    assert second is not None
    second.release()


# ---------------------------------------------------------------------------- audit fixes


def test_ctrl_c_during_a_local_build_stops_it_between_batches(tmp_path, write_jsonl, monkeypatch):
    """A SIGINT that lands in a gc callback (JAX's `_xla_gc_callback` runs in every gc of a
    build) raised KeyboardInterrupt there, where Python drops it: the build ran to the end
    and exited 0. Now SIGINT sets a flag that the build checks after each tokenizer batch."""
    import gc
    import signal

    from lm.data import lease

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    for i in range(3):
        write_jsonl(tmp_path / f"s{i}.jsonl", [f"shard {i} doc {j}" for j in range(20)])
    source = UrlSource.from_patterns([str(tmp_path / "s{0..2}.jsonl")])
    armed, sent = [], []

    def ctrl_c_inside_gc(phase, info):
        if phase == "start" and armed and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    encode_batch = DocumentEncoder.encode_batch

    def encode_then_collect(self, docs):
        out = encode_batch(self, docs)
        armed.append(True)  # the build is under way
        gc.collect()  # a gc during the build, as JAX's allocations trigger them
        return out

    monkeypatch.setattr(DocumentEncoder, "encode_batch", encode_then_collect)
    path = str(tmp_path / "c")
    gc.callbacks.append(ctrl_c_inside_gc)
    try:
        with pytest.raises(KeyboardInterrupt):
            build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    finally:
        gc.callbacks.remove(ctrl_c_inside_gc)
    assert sent
    ledger = read_ledger(path)
    assert not ledger.complete and not ledger.finished  # stopped in its first shard
    assert lease.read(path) is None  # released, as after a Ctrl-C with Ray
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    monkeypatch.undo()
    assert build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL).num_docs == 60


def test_local_paths_are_made_absolute_for_workers(tmp_path, write_jsonl, monkeypatch):
    """A Ray worker opens paths in its own working directory: relative source files, an HF
    data folder and a tokenizer directory reach it as absolute paths; URLs and hub ids stay."""
    from lm.data.hf_source import HfSource
    from lm.data.sources import absolute_local

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "data" / "a.jsonl", ["one"])
    write_jsonl(tmp_path / "data" / "b.jsonl", ["two"])
    source = UrlSource.from_patterns(["data/a.jsonl", "file://data/b.jsonl"])
    workers = source.for_workers()
    assert workers.urls == (str(tmp_path / "data" / "a.jsonl"), f"file://{tmp_path}/data/b.jsonl")
    assert workers.sizes == source.sizes and source.urls == ("data/a.jsonl", "file://data/b.jsonl")
    for url in ("gs://b/x.jsonl", "memory://x.jsonl", "simplecache::gs://b/x", "/abs/x.jsonl"):
        assert absolute_local(url) == url

    hf = HfSource("data", None, "train", num_rows=2)
    assert hf.for_workers().id == str(tmp_path / "data")
    assert HfSource("org/dataset", None, "train").for_workers().id == "org/dataset"

    (tmp_path / "tok").mkdir()  # a tokenizer directory, as far as paths go
    for name in ("tok", "./tok", "file://tok"):
        enc = DocumentEncoder(name)
        assert enc.for_workers() == DocumentEncoder(str(tmp_path / "tok"))
    for name in ("builtin", "gpt2", "gs://b/tok"):
        assert DocumentEncoder(name).for_workers() == DocumentEncoder(name)
    passthrough = DocumentEncoder("passthrough", vocab_size=8)
    assert passthrough.for_workers() is passthrough


def test_a_shard_built_from_a_file_of_another_size_is_not_recorded(tmp_path, write_jsonl):
    """What a Ray worker reading another file (a relative path resolved in its own working
    directory) looks like to the driver: the file it read is not the size listed."""
    write_jsonl(tmp_path / "a.jsonl", ["one", "two"])
    write_jsonl(tmp_path / "b.jsonl", ["three"])
    source = UrlSource.from_patterns([str(tmp_path / "{a,b}.jsonl")])
    listed = (tmp_path / "b.jsonl").stat().st_size
    write_jsonl(tmp_path / "b.jsonl", ["another file", "with more lines"])
    path = str(tmp_path / "c")
    with pytest.raises(
        ValueError,
        match=rf"^cache shard 1: its source file {re.escape(str(tmp_path / 'b.jsonl'))} was "
        rf"{listed} bytes when the sources were listed, but the file the build read was "
        rf"{(tmp_path / 'b.jsonl').stat().st_size} bytes: the builder read another file \(a Ray "
        r"worker resolves a relative path in its own working directory",
    ):
        build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    ledger = read_ledger(path)
    assert list(ledger.finished) == [str(tmp_path / "a.jsonl")] and not ledger.complete


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: d.update(finished=None), r'"finished" must be an object .*, got null'),
        (lambda d: d.update(shards="a.jsonl"), r'"shards" must be a list .*, got "a.jsonl"'),
        (lambda d: d.update(shards=[1]), r'"shards"\[0\] must be a shard name .*, got 1'),
        (lambda d: d.update(complete="yes"), r'"complete" must be true or false, got "yes"'),
        (lambda d: d.update(version=True), r'"version" must be an integer, got true'),
        (lambda d: d.pop("tokenizer"), r"the ledger has no field 'tokenizer'"),
        (lambda d: d.update(extra=1), r"the ledger has an unknown field 'extra'"),
        (
            lambda d: next(iter(d["finished"].values())).update(num_docs="3"),
            r'"finished"\[".*a.jsonl"\]\."num_docs" must be an integer >= 0, got "3"',
        ),
        (
            lambda d: next(iter(d["finished"].values())).update(source_file=[]),
            r'"finished"\[".*a.jsonl"\]\."source_file" must be an object or null, got \[\]',
        ),
    ],
)
def test_a_hand_edited_ledger_of_the_wrong_shape_is_unreadable(
    tmp_path, write_jsonl, edit, problem
):
    """Damage messages suggest editing ledger.json: `"finished": null` crashed with an
    AttributeError, `"shards"` as a string said the cache did not match the config."""
    write_jsonl(tmp_path / "a.jsonl", ["one", "two"])
    source = UrlSource.from_patterns([str(tmp_path / "a.jsonl")])
    path = str(tmp_path / "c")
    build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    ledger_path = tmp_path / "c" / "ledger.json"
    ledger = json.loads(ledger_path.read_text())
    edit(ledger)
    ledger_path.write_text(json.dumps(ledger))
    with pytest.raises(
        ValueError,
        match=rf"^the cache ledger {re.escape(str(ledger_path))} is unreadable \({problem}\); "
        "delete the cache directory to rebuild it$",
    ):
        build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)


def test_a_touched_hf_data_folder_names_the_datasets_fingerprint(tmp_path, write_jsonl):
    """For a local folder of data files, `datasets` fingerprints the files' modification
    times: a touched file no longer matches the cache, and the message said "a file changed
    size", which it did not."""
    from lm.data.hf_source import HfSource

    data = write_jsonl(tmp_path / "files" / "train.jsonl", ["f0", "f1", "f2"])
    os.utime(data, (1_000_000, 1_000_000))
    path = str(tmp_path / "c")
    source = HfSource.load(str(tmp_path / "files"), None, "train")
    build_or_load_cache(path, source, DocumentEncoder("builtin"), LOCAL)
    os.utime(data, (2_000_000, 2_000_000))
    touched = HfSource.load(str(tmp_path / "files"), None, "train")
    assert touched.data_fingerprint != source.data_fingerprint
    with pytest.raises(ValueError) as info:
        build_or_load_cache(path, touched, DocumentEncoder("builtin"), LOCAL)
    message = str(info.value)
    assert "changed size" not in message
    assert (
        "(the same HF dataset and settings, but the dataset's fingerprint changed since the "
        "cache was built: `datasets` computes it from the data, and for a local folder of data "
        "files from their modification times too, so a touched or copied file changes it even "
        "with the same bytes)"
    ) in message
