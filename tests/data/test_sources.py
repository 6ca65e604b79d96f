"""URL expansion, file formats, bad input, HF datasets."""

from __future__ import annotations

import dataclasses
import json
import re

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lm.data import LMDatasetConfig
from lm.data.cache import CacheOptions, build_or_load_cache, read_ledger
from lm.data.hf_source import HfSource
from lm.data.sources import StdlibSource, UrlSource, detect_format, expand_urls
from lm.data.tokenizer import DocumentEncoder

LOCAL = CacheOptions(backend="local")


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


def test_every_missing_file_of_a_source_is_named_at_once(tmp_path, write_jsonl):
    """Only the first missing file of a brace range was named (part-4 of part-{1..5}, not
    part-5): a fix-and-rerun loop per file."""
    for i in (1, 2, 3):
        write_jsonl(tmp_path / f"part-{i}.jsonl", ["x"])
    pattern = str(tmp_path / "part-{1..5}.jsonl")
    with pytest.raises(ValueError) as info:
        expand_urls([pattern], field="data.train_urls")
    p4, p5 = (repr(str(tmp_path / f"part-{i}.jsonl")) for i in (4, 5))
    assert str(info.value) == (
        f"data.train_urls: 2 missing shards: {p4}, {p5} (from pattern {pattern!r})"
    )
    # many: the first 10 are named, the rest counted
    with pytest.raises(ValueError) as info:
        expand_urls([str(tmp_path / "part-{1..18}.jsonl")], field="data.train_urls")
    message = str(info.value)
    assert message.startswith("data.train_urls: 15 missing shards: ")
    assert "part-13.jsonl'" in message and "part-14.jsonl" not in message
    assert "(+5 more) (from pattern" in message
    # several patterns: each file with the pattern that named it
    other = str(tmp_path / "other-{1..2}.jsonl")
    with pytest.raises(ValueError) as info:
        expand_urls([pattern, other], field="data.train_urls")
    o1 = repr(str(tmp_path / "other-1.jsonl"))
    assert str(info.value).startswith(
        f"data.train_urls: 4 missing shards: {p4} (from {pattern!r}), {p5} (from {pattern!r}), "
        f"{o1} (from {other!r}), "
    )


def test_a_relative_glob_gives_relative_paths(tmp_path, write_jsonl, monkeypatch):
    """fsspec returns a glob's matches as absolute paths: a cache's ledger then recorded the
    directory the project was in, and refused the cache once the project moved. Matches now
    keep the pattern's form, as brace-expanded names always did."""
    project = tmp_path / "project"
    for name in ("a.jsonl", "b.jsonl", "sub/c.jsonl"):
        write_jsonl(project / "data" / name, [name])
    monkeypatch.chdir(project)
    for pattern, expected in [
        ("data/*.jsonl", ["data/a.jsonl", "data/b.jsonl"]),
        ("./data/*.jsonl", ["./data/a.jsonl", "./data/b.jsonl"]),
        ("data/**/c.jsonl", ["data/sub/c.jsonl"]),
        ("*/a.jsonl", ["data/a.jsonl"]),
        ("../project/data/[ab].jsonl", ["../project/data/a.jsonl", "../project/data/b.jsonl"]),
        (
            str(project / "data/*.jsonl"),
            [str(project / "data/a.jsonl"), str(project / "data/b.jsonl")],
        ),
        (f"file://{project}/data/a*.jsonl", [f"file://{project}/data/a.jsonl"]),
    ]:
        assert [u for u, _ in expand_urls([pattern])] == expected, pattern
    source = UrlSource.from_patterns(["data/*.jsonl", "data/sub/c.jsonl"])
    assert source.urls == ("data/a.jsonl", "data/b.jsonl", "data/sub/c.jsonl")
    assert _docs(source, 1) == ["b.jsonl"]
    # the same files listed from a copy of the project elsewhere: the same source
    import shutil

    shutil.copytree(project, tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    moved = UrlSource.from_patterns(["data/*.jsonl", "data/sub/c.jsonl"])
    assert moved.urls == source.urls and moved.fingerprint() == source.fingerprint()
    with pytest.raises(ValueError, match=r"'data/a\.jsonl' is listed twice"):
        UrlSource.from_patterns(["data/a.jsonl", "data/*.jsonl"])


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.jsonl.zst", "d.json"])
def test_json_line_formats(tmp_path, name, write_jsonl):
    docs = ["first doc", "ünïcode ☃", "multi\nline"]
    write_jsonl(tmp_path / name, docs)
    source = UrlSource.from_patterns([str(tmp_path / name)])
    assert _docs(source) == docs


def test_a_file_named_twice_is_an_error(tmp_path, write_jsonl):
    """`[a.jsonl, a*.jsonl]` trained on a.jsonl twice, and the cache's ledger (one record per
    file) then took the second copy's shard for finished after a resume."""
    write_jsonl(tmp_path / "a.jsonl", ["a"])
    write_jsonl(tmp_path / "b.jsonl", ["b"])
    a = str(tmp_path / "a.jsonl")
    with pytest.raises(ValueError) as info:
        expand_urls(
            [a, str(tmp_path / "b.jsonl"), str(tmp_path / "a*.jsonl")], field="data.train_urls"
        )
    assert str(info.value).startswith(
        f"data.train_urls: {a!r} is listed twice (patterns {a!r} and "
        f"{str(tmp_path / 'a*.jsonl')!r} both name it)"
    )
    with pytest.raises(ValueError, match="pattern '.*{a,a}.jsonl' names it twice"):
        expand_urls([str(tmp_path / "{a,a}.jsonl")])
    with pytest.raises(ValueError, match="is listed twice"):
        expand_urls([a, "file://" + a])
    assert [u for u, _ in expand_urls([str(tmp_path / "{a,b}.jsonl")])] == [
        a,
        str(tmp_path / "b.jsonl"),
    ]


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.txt"])
def test_a_byte_order_mark_at_the_start_is_dropped(tmp_path, name):
    """A .jsonl starting with a BOM was rejected with Python's `decode using utf-8-sig`
    hint; a .txt kept U+FEFF in its first document."""
    body = (
        '{"text": "first"}\n{"text": "second"}\n' if name.endswith(".jsonl") else "first\nsecond\n"
    )
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert _docs(UrlSource.from_patterns([str(tmp_path / name)])) == ["first", "second"]


def test_multi_frame_zstd_reads_every_frame(tmp_path):
    import zstandard

    lines = [json.dumps({"text": f"doc {i}"}) + "\n" for i in range(3000)]
    compress = zstandard.ZstdCompressor().compress
    frames = [compress("".join(lines[i : i + 1000]).encode()) for i in (0, 1000, 2000)]
    (tmp_path / "f.jsonl.zst").write_bytes(b"".join(frames))
    docs = _docs(UrlSource.from_patterns([str(tmp_path / "f.jsonl.zst")]))
    assert docs == [f"doc {i}" for i in range(3000)]


@pytest.mark.parametrize(
    "name", ["t.jsonl.zst", "t.txt.zst", "t.jsonl.gz", "t.txt.bz2", "t.txt.xz"]
)
@pytest.mark.parametrize("skip_bad_lines", [False, True])
def test_a_truncated_compressed_file_is_an_error_naming_it(tmp_path, name, skip_bad_lines):
    """A `.zst` cut short used to read as a shorter file (zstandard's stream reader ends a
    truncated frame quietly: a corpus lost documents with no message); the other formats
    raised Python's EOFError, naming no file, under a traceback. Skipping bad lines does not
    skip a damaged file."""
    import bz2
    import gzip
    import lzma

    import zstandard

    compress = {
        ".zst": zstandard.ZstdCompressor().compress,
        ".gz": gzip.compress,
        ".bz2": bz2.compress,
        ".xz": lzma.compress,
    }["." + name.rsplit(".", 1)[1]]
    docs = [f"document number {i} " + "word " * (i % 40) for i in range(2000)]
    if ".jsonl" in name:
        data = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    else:
        data = "".join(d + "\n" for d in docs).encode()
    whole = compress(data)
    path = tmp_path / name
    path.write_bytes(whole[: len(whole) * 6 // 10])
    source = UrlSource.from_patterns([str(path)], skip_bad_lines=skip_bad_lines)
    with pytest.raises(ValueError) as info:
        _docs(source, on_bad_line=lambda problem: None)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot decompress it as "), message
    assert "the file is truncated or damaged" in message
    (tmp_path / "plain.jsonl.gz").write_bytes(data)  # not gzip at all
    with pytest.raises(ValueError, match=r"plain.jsonl.gz: cannot decompress it as gzip \(Bad"):
        _docs(UrlSource.from_patterns([str(tmp_path / "plain.jsonl.gz")]))


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
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    glob = str(tmp_path / "*.data")
    with pytest.raises(ValueError, match=r"^train_urls\[1\] \(from '.*\*\.data'\): cannot tell"):
        UrlSource.from_patterns([str(tmp_path / "d.jsonl"), glob], field="train_urls")
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


# ---------------------------------------------------------------------------- bad records


def _build(tmp_path, source, encoder=None, name="c"):
    return build_or_load_cache(
        str(tmp_path / name), source, encoder or DocumentEncoder("builtin"), LOCAL
    )


@pytest.mark.parametrize(
    "value, kind",
    [
        (None, "null"),
        (12345, r"an int \(12345\)"),
        (2.5, r"a float \(2\.5\)"),
        (True, r"a bool \(true\)"),
        (["a", "b"], "a list of 2 items"),
        ({"a": 1}, "a dict with keys a"),
    ],
)
def test_a_text_that_is_not_a_string_is_a_bad_line(tmp_path, value, kind):
    """null, numbers, lists and dicts are not text: an error naming the file, the line and
    what was found (never their Python repr tokenized), or skipped and counted."""
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps({"text": v}) for v in ["ok", value, "fine"]) + "\n")
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(str(path))}:2: the document is {kind}, not a string \(text_key "
        r"'text'\) \(set skip_bad_lines: true to skip such lines\)$",
    ):
        _build(tmp_path, UrlSource.from_patterns([str(path)]))
    lenient = UrlSource.from_patterns([str(path)], skip_bad_lines=True)
    cache = _build(tmp_path, lenient, name="lenient")
    assert cache.num_docs == 2
    assert read_ledger(str(tmp_path / "lenient")).finished[str(path)].skipped_lines == 1


def test_a_null_in_a_parquet_or_hf_text_column_is_a_bad_row(tmp_path):
    import datasets

    pq.write_table(pa.table({"text": ["ok", None, "fine"]}), tmp_path / "a.parquet")
    with pytest.raises(
        ValueError,
        match=r"a\.parquet: row 1: the document is null, not a string \(column 'text'\) \(set "
        "skip_bad_lines",
    ):
        _build(tmp_path, UrlSource.from_patterns([str(tmp_path / "a.parquet")]))
    lenient = UrlSource.from_patterns([str(tmp_path / "a.parquet")], skip_bad_lines=True)
    assert _build(tmp_path, lenient, name="lenient").num_docs == 2

    datasets.Dataset.from_dict({"text": ["ok", "fine", None]}).save_to_disk(str(tmp_path / "hf"))
    source = HfSource.load(str(tmp_path / "hf"), None, "train")
    with pytest.raises(
        ValueError,
        match=rf"^HF dataset {re.escape(str(tmp_path / 'hf'))} split train row 2: the document is "
        r"null, not a string \(column 'text'\) \(set skip_bad_lines",
    ):
        _build(tmp_path, source, name="hf")
    lenient = HfSource.load(str(tmp_path / "hf"), None, "train", skip_bad_lines=True)
    assert lenient.fingerprint() != source.fingerprint()
    cache = _build(tmp_path, lenient, name="hf-lenient")
    assert cache.num_docs == 2


@pytest.mark.parametrize(
    "name, column",
    [("bad.jsonl", 15), ("bad.jsonl.gz", 15), ("bad.txt", 5), ("bad.txt.gz", 5)],
)
def test_invalid_utf8_is_a_bad_line(tmp_path, name, column):
    """In JSON lines and plain text alike (text files used to replace such bytes silently)."""
    import gzip

    if ".jsonl" in name:
        data = b'{"text": "ok"}\n{"text": "bad \xff byte"}\n{"text": "fine"}\n'
    else:
        data = b"ok\nbad \xff byte\nfine\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(str(path))}:2: invalid UTF-8 \(byte 0xff at column {column}\) \(set "
        r"skip_bad_lines: true to skip such lines\)$",
    ):
        _docs(UrlSource.from_patterns([str(path)]))
    skipped = []
    lenient = UrlSource.from_patterns([str(path)], skip_bad_lines=True)
    assert _docs(lenient, on_bad_line=skipped.append) == ["ok", "fine"]
    assert skipped == [f"{path}:2: invalid UTF-8 (byte 0xff at column {column})"]


def test_a_lone_surrogate_is_replaced_and_logged(tmp_path, builtin_tokenizer, caplog):
    """`"\\ud800"` is valid JSON but no text a tokenizer takes: it becomes U+FFFD, and the
    file and line are logged."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "lone \\ud800 surrogate"}\n{"text": "a pair \\ud83d\\ude00"}\n')
    with caplog.at_level("WARNING", logger="lm.data"):
        cache = _build(tmp_path, UrlSource.from_patterns([str(path)]))
    tokens = cache.read_ranges([(0, cache.num_tokens)])[0].tolist()
    eos = builtin_tokenizer.eos_token_id
    expected = [
        *builtin_tokenizer("lone \ufffd surrogate")["input_ids"],
        eos,
        *builtin_tokenizer("a pair \U0001f600")["input_ids"],
        eos,
    ]
    assert tokens == expected
    assert f"{path}:1: replaced lone UTF-16 surrogates" in caplog.text
    assert f"{path}: replaced lone UTF-16 surrogates with U+FFFD in 1 lines" in caplog.text


def test_a_glob_that_matches_only_directories_says_so(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "a.jsonl", ["a"])
    (tmp_path / "dironly" / "sub.jsonl").mkdir(parents=True)
    for patterns in (
        [str(tmp_path / "a.jsonl"), str(tmp_path / "dironly" / "*.jsonl")],
        [str(tmp_path / "dironly" / "*.jsonl")],
    ):
        with pytest.raises(
            ValueError,
            match=rf"^data\.train_urls: the glob {re.escape(repr(patterns[-1]))} matched no files "
            rf"\(only directories: {re.escape(str(tmp_path / 'dironly' / 'sub.jsonl'))}\); give "
            "the files, or a glob that matches the files inside those directories$",
        ):
            UrlSource.from_patterns(patterns, field="data.train_urls")


# ---------------------------------------------------------------------------- HF splits


def test_a_bare_saved_dataset_is_the_train_split_and_has_no_validation(tmp_path, caplog):
    import datasets

    datasets.Dataset.from_dict({"text": ["x", "y", "z"]}).save_to_disk(str(tmp_path / "bare"))
    cfg = LMDatasetConfig(id=str(tmp_path / "bare"), cache_dir=str(tmp_path / "c"))
    assert _docs(cfg.source_for("train")) == ["x", "y", "z"]
    with caplog.at_level("WARNING", logger="lm.data"):
        assert cfg.source_for("validation") is None
    assert (
        f"data: no validation set (HF dataset {str(tmp_path / 'bare')!r} has no split "
        "'validation': it is a single Dataset (saved with Dataset.save_to_disk), which has no "
        "splits" in caplog.text
    )
    other = dataclasses.replace(cfg, train_split="fit")
    with pytest.raises(
        ValueError,
        match=r"^data\.train_split: HF dataset .* has no split 'fit': it is a single Dataset "
        r"\(saved with Dataset\.save_to_disk\), which has no splits and is used whole as the "
        r"train split\. Leave train_split at 'train', or save a DatasetDict to choose splits$",
    ):
        other.source_for("train")


def test_a_data_files_folder_without_a_validation_file_has_no_validation_set(
    tmp_path, write_jsonl, caplog
):
    write_jsonl(tmp_path / "files" / "train.jsonl", ["f0", "f1"])
    cfg = LMDatasetConfig(id=str(tmp_path / "files"), cache_dir=str(tmp_path / "c"))
    assert _docs(cfg.source_for("train")) == ["f0", "f1"]
    with caplog.at_level("WARNING", logger="lm.data"):
        assert cfg.source_for("validation") is None
    assert (
        f"data: no validation set (HF dataset directory {str(tmp_path / 'files')!r} has no "
        "split 'validation'; datasets says: Unknown split" in caplog.text
    )
    with pytest.raises(ValueError, match=r"^data\.train_split: .* has no split 'fit'"):
        dataclasses.replace(cfg, train_split="fit").source_for("train")


def test_a_hub_dataset_fails_fast_when_the_hub_host_does_not_resolve(
    monkeypatch, hub_host_unresolvable
):
    """datasets would retry for ~30 s; one DNS lookup says the hub is unreachable, and only
    the local HF cache is tried."""
    import datasets
    import huggingface_hub.constants

    def load_dataset(*args, **kwargs):
        assert datasets.config.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE, (
            "the hub must not be tried when its host does not resolve"
        )
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode)")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    host = hub_host_unresolvable
    with pytest.raises(
        ValueError,
        match=rf"^HF dataset 'someorg/no-such-dataset' is not a local directory and not in the "
        rf"local HF cache, and the hub \(.*\) cannot be reached: its host {host} does not "
        r"resolve \(.*Name or service not known\)\. Point id at a local dataset directory",
    ):
        HfSource.load("someorg/no-such-dataset", None, "train")
    assert not datasets.config.HF_HUB_OFFLINE and not huggingface_hub.constants.HF_HUB_OFFLINE
