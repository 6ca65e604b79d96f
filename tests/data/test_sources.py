"""URL expansion, file formats, bad input, HF datasets."""

from __future__ import annotations

import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lm.data.sources import HfSource, StdlibSource, UrlSource, detect_format, expand_urls


def _docs(source, index=0, on_bad_line=None):
    return list(source.open_shard(index, on_bad_line))


def test_brace_ranges_alternatives_and_globs(tmp_path, write_jsonl):
    for i in range(1, 4):
        write_jsonl(tmp_path / f"train.{i}-of-3.jsonl", [f"doc {i}"])
    write_jsonl(tmp_path / "extra_a.jsonl", ["a"])
    write_jsonl(tmp_path / "extra_b.jsonl", ["b"])
    found = expand_urls([str(tmp_path / "train.{1..3}-of-3.jsonl")])
    assert [u for u, _ in found] == [str(tmp_path / f"train.{i}-of-3.jsonl") for i in (1, 2, 3)]
    assert all(size and size > 0 for _, size in found)
    found = expand_urls([str(tmp_path / "extra_{a,b}.jsonl"), str(tmp_path / "train.*.jsonl")])
    assert [u.rsplit("/", 1)[-1] for u, _ in found] == [
        "extra_a.jsonl",
        "extra_b.jsonl",
        "train.1-of-3.jsonl",
        "train.2-of-3.jsonl",
        "train.3-of-3.jsonl",
    ]
    file_url = f"file://{tmp_path}/train.{{1..2}}-of-3.jsonl"
    assert [u for u, _ in expand_urls([file_url])] == [
        f"file://{tmp_path}/train.1-of-3.jsonl",
        f"file://{tmp_path}/train.2-of-3.jsonl",
    ]


def test_zero_padded_ranges_and_memory_fs():
    fs = fsspec.filesystem("memory")
    for i in (1, 2):
        fs.pipe(f"/srcs/part-{i:03d}.jsonl", json.dumps({"text": f"m{i}"}).encode() + b"\n")
    found = expand_urls(["memory://srcs/part-{001..002}.jsonl"])
    assert [u for u, _ in found] == ["memory://srcs/part-001.jsonl", "memory://srcs/part-002.jsonl"]
    globbed = expand_urls(["memory://srcs/*.jsonl"])
    # fsspec writes memory paths with a root slash; both name the same files.
    assert [u.replace(":///", "://") for u, _ in globbed] == [u for u, _ in found]
    source = UrlSource.from_patterns(["memory://srcs/*.jsonl"])
    assert _docs(source, 1) == ["m2"]


def test_empty_glob_and_missing_shard_are_errors(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "a.1.jsonl", ["x"])
    with pytest.raises(
        ValueError, match=r"data.train_urls: the glob .*nothing\*.jsonl.* matched no files"
    ):
        expand_urls([str(tmp_path / "nothing*.jsonl")], field="data.train_urls")
    with pytest.raises(ValueError, match=r"missing shard .*a\.2\.jsonl.*from pattern"):
        expand_urls([str(tmp_path / "a.{1..2}.jsonl")])
    with pytest.raises(ValueError, match="is a directory"):
        expand_urls([str(tmp_path)])


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.jsonl.zst", "d.json"])
def test_json_line_formats(tmp_path, name, write_jsonl):
    docs = ["first doc", "ünïcode ☃", "multi\nline"]
    write_jsonl(tmp_path / name, docs)
    source = UrlSource.from_patterns([str(tmp_path / name)])
    assert _docs(source) == docs


def test_text_and_parquet_formats(tmp_path):
    (tmp_path / "a.txt").write_text("line one\n\nline two\n")
    pq.write_table(pa.table({"content": ["p1", "p2"], "n": [1, 2]}), tmp_path / "b.parquet")
    (tmp_path / "c.data").write_text("plain 1\nplain 2\n")
    assert _docs(UrlSource.from_patterns([str(tmp_path / "a.txt")])) == ["line one", "line two"]
    pq_source = UrlSource.from_patterns([str(tmp_path / "b.parquet")], text_key="content")
    assert _docs(pq_source) == ["p1", "p2"]
    with pytest.raises(ValueError, match="no column 'text'.*content, n"):
        _docs(UrlSource.from_patterns([str(tmp_path / "b.parquet")]))
    with pytest.raises(ValueError, match="cannot tell the format.*plaintext: true"):
        UrlSource.from_patterns([str(tmp_path / "c.data")])
    plain = UrlSource.from_patterns([str(tmp_path / "c.data")], plaintext=True)
    assert _docs(plain) == ["plain 1", "plain 2"]
    assert detect_format("gs://b/x.jsonl.zstd") == ("json", "zstd")


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"text": "ok"}\n{"text": "also ok"}\n{"text": broken\n{"other": 1}\n{"text": "end"}\n'
    )
    source = UrlSource.from_patterns([str(path)])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON.*skip_bad_lines"):
        _docs(source)
    skipped = []
    lenient = UrlSource.from_patterns([str(path)], skip_bad_lines=True)
    assert _docs(lenient, on_bad_line=skipped.append) == ["ok", "also ok", "end"]
    assert len(skipped) == 2
    assert "bad.jsonl:3" in skipped[0] and "bad.jsonl:4: no key 'text'" in skipped[1]
    assert lenient.fingerprint() != source.fingerprint()


def test_url_fingerprint_tracks_file_sizes(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "a.jsonl", ["one"])
    before = UrlSource.from_patterns([str(tmp_path / "a.jsonl")]).fingerprint()
    assert UrlSource.from_patterns([str(tmp_path / "a.jsonl")]).fingerprint() == before
    write_jsonl(tmp_path / "a.jsonl", ["one", "two"])
    assert UrlSource.from_patterns([str(tmp_path / "a.jsonl")]).fingerprint() != before


def test_hf_dataset_from_local_directory(tmp_path, write_jsonl):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(25)]}),
            "validation": datasets.Dataset.from_dict({"text": ["v0", "v1"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    src = HfSource.load(str(tmp_path / "saved"), None, "train")
    assert src.num_rows == 25 and len(src.shard_names()) == 1
    assert _docs(src) == [f"row {i}" for i in range(25)]
    assert _docs(HfSource.load(str(tmp_path / "saved"), None, "validation")) == ["v0", "v1"]
    with pytest.raises(ValueError, match="no split 'test'.*train, validation"):
        HfSource.load(str(tmp_path / "saved"), None, "test")
    with pytest.raises(ValueError, match="no column 'body'"):
        HfSource.load(str(tmp_path / "saved"), None, "train", text_key="body")
    # A folder of data files loads through datasets' packaged builders.
    write_jsonl(tmp_path / "files" / "train.jsonl", ["f0", "f1", "f2"])
    assert _docs(HfSource.load(str(tmp_path / "files"), None, "train")) == ["f0", "f1", "f2"]


def test_hf_hub_id_offline_is_a_clear_error(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="not a local directory.*local dataset directory"):
        HfSource.load("no-such-org/no-such-dataset", None, "train")


def test_stdlib_source_shards_cover_the_split():
    src = StdlibSource("validation")
    names = src.shard_names()
    assert names and all(n.startswith("stdlib:validation:") for n in names)
    docs = [d for i in range(len(names)) for d in src.open_shard(i)]
    from lm.data import corpus

    assert len(docs) == len(corpus.corpus_files("validation"))
