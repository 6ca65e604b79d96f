"""The cache ledger against a config: a cache is found again after its project moved, and a
mismatch names what differs (the first differing shard, the file that changed size)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import pytest

from lm.data import cache as cache_mod
from lm.data.cache import CacheOptions, build_or_load_cache, read_ledger
from lm.data.ledger import LEDGER_NAME, CacheLedger
from lm.data.sources import UrlSource
from lm.data.tokenizer import DocumentEncoder

LOCAL = CacheOptions(backend="local")
PATTERNS = ["data/part-{1..2}.jsonl", "data/*.jsonl.gz"]


@pytest.fixture
def project(tmp_path, write_jsonl):
    """A project directory holding its data (brace-named and globbed files) and caches."""
    root = tmp_path / "project"
    for i in (1, 2):
        write_jsonl(root / "data" / f"part-{i}.jsonl", [f"part {i} doc {j}" for j in range(3)])
    write_jsonl(root / "data" / "extra.jsonl.gz", ["extra doc"])
    return root


def _build(cache_dir: str = "c") -> tuple[list[int], object]:
    """Open (building if needed) the cache of PATTERNS; the shards it had to build, and it."""
    built = []
    orig = cache_mod.build_shard

    def counting(cache_dir, index, *a, **k):
        built.append(index)
        return orig(cache_dir, index, *a, **k)

    cache_mod.build_shard = counting
    try:
        source = UrlSource.from_patterns(PATTERNS)
        cache = build_or_load_cache(cache_dir, source, DocumentEncoder("builtin"), LOCAL)
    finally:
        cache_mod.build_shard = orig
    return built, cache


def test_a_cache_built_from_a_glob_is_found_after_the_project_moves(project, tmp_path, monkeypatch):
    """The ledger recorded the glob's matches as absolute paths: moved, the project's cache
    was refused (its source fingerprint had changed with the working directory)."""
    monkeypatch.chdir(project)
    built, cache = _build()
    assert built == [0, 1, 2]
    assert read_ledger("c").shards == [
        "data/part-1.jsonl",
        "data/part-2.jsonl",
        "data/extra.jsonl.gz",
    ]
    shutil.move(project, tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    built, again = _build()
    assert built == [] and again.num_docs == cache.num_docs == 7


def _as_built_by_an_older_lm(cache_dir: str, root) -> None:
    """Rewrite a ledger as lm wrote it when glob matches were absolute paths (in `root`)."""
    path = os.path.join(cache_dir, LEDGER_NAME)
    with open(path) as f:
        ledger = CacheLedger.from_json(f.read())
    old = [str(root / name) if name.endswith(".gz") else name for name in ledger.shards]
    source = UrlSource.from_patterns(PATTERNS)
    ledger.finished = {
        new: ledger.finished[name] for name, new in zip(ledger.shards, old, strict=True)
    }
    ledger.shards = old
    older = dataclasses.replace(source, urls=tuple(old))
    ledger.source, ledger.source_fingerprint = older.describe(), older.fingerprint()
    with open(path, "w") as f:
        f.write(ledger.to_json())


def test_a_cache_that_recorded_absolute_glob_matches_is_still_recognised(
    project, tmp_path, monkeypatch
):
    """Caches built before glob matches kept their pattern's form name them by absolute path:
    they are the same files, in this directory or the one the project moved from."""
    monkeypatch.chdir(project)
    _build()
    _as_built_by_an_older_lm("c", project)
    assert read_ledger("c").shards[2] == str(project / "data" / "extra.jsonl.gz")
    built, cache = _build()
    assert built == [] and cache.num_docs == 7
    shutil.move(project, tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    built, cache = _build()
    assert built == [] and cache.num_docs == 7
    # a file changed meanwhile is still a mismatch, named
    (tmp_path / "moved" / "data" / "part-2.jsonl").write_text('{"text": "shorter"}\n')
    with pytest.raises(ValueError, match=r"data/part-2\.jsonl was \d+ bytes then, 20 bytes now"):
        _build()


def test_a_shard_list_mismatch_names_the_first_differing_shard(project, monkeypatch, write_jsonl):
    """The message showed two descriptions (first file and count) that could look the same,
    with different hashes, and did not say which shard differed."""
    monkeypatch.chdir(project)
    _build()
    write_jsonl(project / "data" / "part-3.jsonl", ["three"])
    encoder = DocumentEncoder("builtin")
    more = UrlSource.from_patterns(["data/part-{1..3}.jsonl", "data/*.jsonl.gz"])
    with pytest.raises(ValueError) as info:
        build_or_load_cache("c", more, encoder, LOCAL)
    assert (
        "(the shard lists differ first at shard 2: 'data/extra.jsonl.gz' in the cache, "
        "'data/part-3.jsonl' in the config)"
    ) in str(info.value)
    fewer = UrlSource.from_patterns(["data/part-{1..2}.jsonl"])
    with pytest.raises(ValueError, match=r"\(the cache has 1 more shard, from 'data/extra"):
        build_or_load_cache("c", fewer, encoder, LOCAL)
    longer = UrlSource.from_patterns([*PATTERNS, "data/part-3.jsonl"])
    with pytest.raises(ValueError, match=r"\(the config lists 1 more shard, from 'data/part-3"):
        build_or_load_cache("c", longer, encoder, LOCAL)


def test_a_file_that_changed_size_is_named_with_both_sizes(project, monkeypatch):
    """The ledger records every finished shard's file size: the message said only "a file
    changed size"."""
    monkeypatch.chdir(project)
    _build()
    before = os.path.getsize(project / "data" / "part-1.jsonl")
    with open(project / "data" / "part-1.jsonl", "a") as f:
        f.write(json.dumps({"text": "one more"}) + "\n")
    after = os.path.getsize(project / "data" / "part-1.jsonl")
    with pytest.raises(ValueError) as info:
        _build()
    assert (
        "(the same files and settings: a file changed size since the cache was built: "
        f"data/part-1.jsonl was {before} bytes then, {after} bytes now)"
    ) in str(info.value)


def test_a_changed_file_not_built_yet_is_said_to_be_one(project, monkeypatch):
    """With a shard unfinished and every finished one's file as it was, the changed file is
    one of those not built yet."""
    monkeypatch.chdir(project)
    _build()
    ledger = read_ledger("c")
    del ledger.finished["data/extra.jsonl.gz"]
    ledger.complete = False
    with open(os.path.join("c", LEDGER_NAME), "w") as f:
        f.write(ledger.to_json())
    (project / "data" / "extra.jsonl.gz").write_bytes(b"")
    with pytest.raises(ValueError) as info:
        _build()
    assert re.search(
        r"a file changed size since the cache was built \(one of the 1 shards not built yet: "
        r"the finished ones' files kept their sizes\)",
        str(info.value),
    )


def test_the_config_source_is_never_written(project, monkeypatch):
    monkeypatch.chdir(project)
    _build()
    with open(os.path.join("c", LEDGER_NAME)) as f:
        assert "config_source" not in json.loads(f.read())
