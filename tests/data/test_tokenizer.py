"""Loading `data.tokenizer`: every bad value is an error naming the field and the value."""

from __future__ import annotations

import os
import re

import pytest

from lm.data import LMDatasetConfig
from lm.data.tokenizer import DocumentEncoder, load_tokenizer

ALLOWED = re.escape(
    "; use 'builtin', 'passthrough', a Hugging Face tokenizer directory or a hub id"
)


def test_a_directory_without_tokenizer_files_is_named(tmp_path):
    (tmp_path / "not_a_tok").mkdir()
    (tmp_path / "not_a_tok" / "notes.txt").write_text("hello")
    path = str(tmp_path / "not_a_tok")
    with pytest.raises(
        ValueError,
        match=rf"^data\.tokenizer: {re.escape(path)} is a directory with no tokenizer files "
        rf"\(tokenizer\.json, tokenizer_config\.json, \.\.\.\){ALLOWED}$",
    ):
        _ = LMDatasetConfig(tokenizer=path).the_tokenizer


@pytest.mark.parametrize(
    "name, what",
    [
        ("{tmp}/missing", "does not exist"),
        ("./surely-missing-tokenizer-dir", "does not exist"),
        ("../surely-missing-tokenizer-dir", "does not exist"),
        ("file://{tmp}/missing", "does not exist"),
        ("{tmp}/tokenizer.json", "is a file, not a directory"),
    ],
)
def test_a_path_that_is_not_a_directory_is_not_looked_up_on_the_hub(
    tmp_path, monkeypatch, name, what
):
    (tmp_path / "tokenizer.json").write_text("{}")
    name = name.format(tmp=tmp_path)

    def no_hub(*args, **kwargs):
        raise AssertionError("a path must not be looked up on the hub")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_hub)
    with pytest.raises(ValueError, match=rf"^data\.tokenizer: {re.escape(name)} {what}{ALLOWED}$"):
        load_tokenizer(name)


def test_a_hub_id_fails_fast_when_the_hub_host_does_not_resolve(monkeypatch, hub_host_unresolvable):
    """huggingface_hub would retry for ~45 s; one DNS lookup says the hub is unreachable."""

    def not_cached(name, local_files_only=False, **kwargs):
        assert local_files_only, "the hub must not be tried when its host does not resolve"
        raise OSError(f"{name} is not in the cache")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", not_cached)
    host = hub_host_unresolvable
    with pytest.raises(
        ValueError,
        match=rf"^data\.tokenizer: 'someorg/no-such-tokenizer' is not a local directory and not "
        rf"in the local HF cache, and the hub \(.*\) cannot be reached: its host {host} does not "
        r"resolve \(.*Name or service not known\)\. Use 'builtin'",
    ):
        load_tokenizer("someorg/no-such-tokenizer")


def test_a_local_tokenizer_directory_still_loads(tmp_path, builtin_tokenizer):
    builtin_tokenizer.save_pretrained(str(tmp_path / "tok"))
    assert os.path.exists(tmp_path / "tok" / "tokenizer.json")
    tok = load_tokenizer(str(tmp_path / "tok"))
    assert tok("def f(): pass")["input_ids"] == builtin_tokenizer("def f(): pass")["input_ids"]


@pytest.mark.parametrize(
    "doc, problem",
    [
        (
            [1.0, 2.7],
            r"a passthrough document must be a flat list of int token ids; item 0 is a "
            r"float \(1\.0\)",
        ),
        ([3, True], r"item 1 is a bool \(true\)"),
        ([True, False], r"item 0 is a bool \(true\)"),
        ([1, [2]], r"item 1 is a list of 1 item"),
        ([1, None], r"item 1 is null"),
        (
            None,
            r"a passthrough document must be a list of int token ids or a string of "
            r"whitespace-separated ints, not null",
        ),
        ({"ids": [1]}, r"not a dict with keys ids"),
        (7, r"not an int \(7\)"),
        ("1 2.5", r"passthrough document is not whitespace-separated ints"),
        (
            [1, 2**70],
            r"passthrough token id 1180591620717411303424 is outside \[0, vocab_size=10\)",
        ),
    ],
)
def test_passthrough_takes_only_int_token_ids(doc, problem):
    """Floats were truncated (2.7 -> 2) and booleans taken as 0/1; null was a bare
    TypeError. Each is now a ValueError saying what was found."""
    enc = DocumentEncoder("passthrough", vocab_size=10, enforce_eos=False)
    assert re.search(problem, enc.document_problem(doc)), enc.document_problem(doc)
    with pytest.raises(ValueError, match=problem):
        enc.encode_batch([doc])
    assert enc.document_problem([1, 2, 9]) is None and enc.document_problem("1 2") is None
    assert enc.encode_batch([[1, 2, 9], "3 4"])[1].tolist() == [3, 4]


def test_a_passthrough_float_in_a_file_is_a_bad_line(tmp_path):
    from lm.data.cache import CacheOptions, build_or_load_cache
    from lm.data.sources import UrlSource

    path = tmp_path / "ids.jsonl"
    path.write_text('{"ids": [1, 2]}\n{"ids": [1.0, 2.7]}\n')
    source = UrlSource.from_patterns([str(path)], text_key="ids")
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(str(path))}:2: a passthrough document must be a flat list of int "
        r"token ids; item 0 is a float \(1\.0\) \(text_key 'ids'\) \(set skip_bad_lines",
    ):
        build_or_load_cache(
            str(tmp_path / "c"),
            source,
            DocumentEncoder("passthrough", vocab_size=10, enforce_eos=False),
            CacheOptions(backend="local"),
        )


def test_a_damaged_cached_builtin_tokenizer_is_named_with_the_way_out(tmp_path, monkeypatch):
    """A truncated tokenizer.json in the cache gave a 36-line traceback ending in `EOF while
    parsing a value`, naming no file."""
    from lm.data import builtin_tokenizer

    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "truncation": nu')
    monkeypatch.setattr(builtin_tokenizer, "ensure_builtin_tokenizer", lambda size: tmp_path)
    with pytest.raises(ValueError) as info:
        builtin_tokenizer.load_builtin_backend.__wrapped__(8192)
    message = str(info.value)
    assert message.startswith(f"the builtin tokenizer cached in {tmp_path} cannot be loaded (")
    assert message.endswith(
        "its files are damaged. Delete that directory; the next run trains the tokenizer "
        "again (~10 s) and gets the same one"
    )
