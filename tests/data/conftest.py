"""Fixtures for data tests.

The builtin tokenizer is trained once per machine into the real cache root
(`$LM_CACHE_DIR`, else `~/.cache/lm`) and reused across sessions; everything else
(caches, corpora) is built from a few KB of text in tmp dirs.
"""

from __future__ import annotations

import gzip
import json
import pathlib

import pytest

from lm.data import CacheOptions, load_builtin_tokenizer

LOCAL = CacheOptions(backend="local")

DOCS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "x = 1",
    "import os\nprint(os.getcwd())\n" * 3,
    "A longer document " * 40,
    "short",
]


@pytest.fixture(scope="session")
def builtin_tokenizer():
    return load_builtin_tokenizer()


@pytest.fixture(scope="session")
def write_jsonl():
    """`write_jsonl(path, docs, key="text")`: one JSON object per line (.gz/.zst compressed
    by extension)."""
    return _write_jsonl


def _write_jsonl(path: pathlib.Path, docs, key: str = "text") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({key: d}) + "\n" for d in docs)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(lines.encode()))
    elif path.name.endswith(".zst"):
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    else:
        path.write_text(lines)
    return path


@pytest.fixture
def jsonl_corpus(tmp_path) -> pathlib.Path:
    """Three jsonl shards (train) and one validation shard in tmp_path/corpus."""
    root = tmp_path / "corpus"
    for i in range(3):
        _write_jsonl(
            root / f"train.{i}.jsonl", [f"shard {i} doc {j}: " + DOCS[j] for j in range(6)]
        )
    _write_jsonl(root / "val.0.jsonl", ["validation doc " + d for d in DOCS])
    return root


@pytest.fixture
def hub_host_unresolvable(monkeypatch) -> str:
    """The HF hub's host does not resolve (DNS fails), proxies are unset and offline mode is
    off; returns the host name, regex-escaped, for matching messages that name it."""
    import re
    import socket

    import huggingface_hub.constants

    def unresolvable(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return re.escape(huggingface_hub.constants.ENDPOINT.split("://", 1)[1].split("/")[0])
