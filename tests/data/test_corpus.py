"""The embedded corpus (stdlib sources) and the builtin tokenizer."""

from __future__ import annotations

import hashlib
import sysconfig
import threading

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lm.data import builtin_tokenizer as bt
from lm.data import corpus


def test_split_is_a_hash_of_the_relative_path():
    # Reference: bucket = first 8 bytes of sha256(relpath), little endian, mod 1000; < 20 -> val.
    for rel in ["os.py", "json/__init__.py", "test/test_os.py", "a/b/c.py"]:
        bucket = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "little") % 1000
        assert corpus.split_of(rel) == ("validation" if bucket < 20 else "train")


def test_fake_stdlib_excludes_site_packages_and_sorts(tmp_path):
    root = tmp_path / "lib"
    for rel in ["b.py", "a.py", "pkg/z.py", "pkg/notes.txt", "site-packages/numpy/x.py"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    files = corpus.corpus_files(root=root)
    assert [f.relpath for f in files] == ["a.py", "b.py", "pkg/z.py"]
    assert all(f.size == 6 for f in files)
    both = corpus.corpus_files("train", root=root) + corpus.corpus_files("validation", root=root)
    assert sorted(f.relpath for f in both) == ["a.py", "b.py", "pkg/z.py"]


def test_real_stdlib_split_is_deterministic_and_disjoint():
    assert str(corpus.stdlib_root()) == sysconfig.get_paths()["stdlib"]
    files = corpus.corpus_files()
    rels = [f.relpath for f in files]
    assert len(files) > 500
    assert rels == sorted(rels)
    assert not any("site-packages" in r for r in rels)
    train = corpus.corpus_files("train")
    val = corpus.corpus_files("validation")
    assert {f.relpath for f in train}.isdisjoint(f.relpath for f in val)
    assert len(train) + len(val) == len(files)
    assert 0.01 < len(val) / len(files) < 0.04
    assert [f.relpath for f in val] == [r for r in rels if corpus.split_of(r) == "validation"]
    assert corpus.corpus_fingerprint("train") == corpus.corpus_fingerprint("train")
    assert corpus.corpus_fingerprint("train") != corpus.corpus_fingerprint("validation")


def test_undecodable_files_are_read_deterministically():
    # The stdlib ships a few deliberately non-UTF-8 files; they must still read the same way.
    bad = [f for f in corpus.corpus_files() if f.relpath.startswith("test/encoded_modules/")]
    for f in bad:
        text = corpus.read_document(f.relpath)
        assert text == corpus.read_document(f.relpath)
        assert isinstance(text, str) and text


def test_builtin_tokenizer_round_trips_and_loads_as_hf(builtin_tokenizer):
    tok_dir = bt.builtin_tokenizer_path()
    assert (tok_dir / "tokenizer.json").exists()
    fast = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    auto = AutoTokenizer.from_pretrained(str(tok_dir))
    assert len(fast) == len(builtin_tokenizer) == bt.DEFAULT_VOCAB_SIZE
    assert fast.eos_token == "<|endoftext|>" and fast.eos_token_id == auto.eos_token_id
    text = 'def f(x):\n    """Docstring, ünïcödé, 東京."""\n\treturn x ** 2  # comment\n'
    ids = fast(text)["input_ids"]
    assert fast.decode(ids) == text
    assert auto(text)["input_ids"] == ids == builtin_tokenizer(text)["input_ids"]
    # Trained on Python code: common keywords are single tokens and compression is real.
    assert len(fast("return")["input_ids"]) == 1
    source = corpus.read_document("os.py")
    assert len(source) / len(fast(source)["input_ids"]) > 3.0


def test_builtin_fingerprint_without_transformers_equals_the_loaded_tokenizers(builtin_tokenizer):
    """Cache checks fingerprint the builtin tokenizer from its tokenizer.json alone; the value
    must be the one computed from the tokenizer loaded through transformers, so caches built
    either way stay valid."""
    from lm.data.tokenizer import (
        DocumentEncoder,
        builtin_content_fingerprint,
        tokenizer_fingerprint,
    )

    assert builtin_content_fingerprint() == tokenizer_fingerprint(builtin_tokenizer)
    fast = DocumentEncoder("builtin").fingerprint()
    encoder = DocumentEncoder("builtin")
    _ = encoder.hf_tokenizer  # loaded: the slow path would hash this object
    assert fast == encoder.fingerprint()
    assert DocumentEncoder("builtin").vocab_length() == len(builtin_tokenizer)


def test_builtin_tokenizer_is_built_once_under_concurrency(tmp_path, monkeypatch):
    # A tiny corpus keeps training fast; two threads race to build the same tokenizer.
    root = tmp_path / "lib"
    root.mkdir()
    for i in range(5):
        (root / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 20)
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus, "stdlib_root", lambda: root)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(bt.ensure_builtin_tokenizer(300)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].parent == tmp_path / "cache" / "tokenizers"
    assert [p.name for p in results[0].parent.iterdir()] == [results[0].name]  # no temp dirs left
    tok = PreTrainedTokenizerFast.from_pretrained(str(results[0]))
    assert tok.decode(tok("return x * 3")["input_ids"]) == "return x * 3"


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path))
    assert bt.cache_root() == tmp_path
    monkeypatch.delenv("LM_CACHE_DIR")
    assert bt.cache_root().parts[-2:] == (".cache", "lm")


def test_an_lm_cache_dir_that_is_a_file_is_named(monkeypatch, tmp_path):
    """It failed with `[Errno 20] Not a directory: .../tokenizers`, naming no variable."""
    from lm.config import SetupConfigError

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "afile"))
    with pytest.raises(SetupConfigError) as info:
        bt.ensure_builtin_tokenizer(300)
    assert str(info.value) == (
        f"LM_CACHE_DIR ({tmp_path}/afile): {tmp_path}/afile/tokenizers cannot be a directory: "
        f"{tmp_path}/afile, on its path, is a file; the builtin tokenizer is cached there. "
        "Point LM_CACHE_DIR at a directory this process can write"
    )


@pytest.mark.parametrize("split", ["bogus"])
def test_bad_split(split):
    with pytest.raises(ValueError, match="split must be one of"):
        corpus.corpus_files(split)
