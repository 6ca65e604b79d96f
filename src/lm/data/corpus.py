"""The embedded default corpus: the Python standard library's own source files.

Every machine with Python has it, so the default run needs no network and no download.
The corpus is every `.py` file under `sysconfig.get_paths()["stdlib"]`, except anything
under a `site-packages` directory (installed packages differ between machines; the
standard library does not). One file is one document.

Files are sorted by their path relative to the stdlib root and split into train and
validation by a hash of that relative path, so the split is the same on every machine
with the same Python version and does not move when a file is added or removed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import sys
import sysconfig
from collections.abc import Iterator, Sequence

STDLIB_SOURCE_NAME = "stdlib"
"""The name of the embedded corpus as a data source (`builtin: stdlib`)."""

VALIDATION_PER_MILLE = 20
"""About 2% of the files (by hash of the relative path) are validation documents."""

SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class CorpusFile:
    relpath: str
    """Path relative to the stdlib root, with forward slashes."""
    size: int
    """Size in bytes."""


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def split_of(relpath: str) -> str:
    """The split ("train" or "validation") a file belongs to, by a hash of its path."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "little") % 1000
    return "validation" if bucket < VALIDATION_PER_MILLE else "train"


@functools.cache
def _all_files(root: str) -> tuple[CorpusFile, ...]:
    base = pathlib.Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"the Python standard library directory {root} does not exist")
    files = []
    for dirpath, dirnames, filenames in os.walk(base):
        # Installed packages are not part of the corpus (they differ between machines).
        dirnames[:] = sorted(d for d in dirnames if d != "site-packages" and d != "__pycache__")
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = pathlib.Path(dirpath, name)
            rel = path.relative_to(base).as_posix()
            if "site-packages" in rel:
                continue
            files.append(CorpusFile(rel, path.stat().st_size))
    files.sort(key=lambda f: f.relpath)
    return tuple(files)


def corpus_files(
    split: str | None = None, root: str | os.PathLike | None = None
) -> list[CorpusFile]:
    """The corpus files, sorted by relative path.

    Args:
        split: "train", "validation", or None for both.
        root: the stdlib directory (default: this interpreter's).
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = _all_files(str(root if root is not None else stdlib_root()))
    if split is None:
        return list(files)
    return [f for f in files if split_of(f.relpath) == split]


def read_document(relpath: str, root: str | os.PathLike | None = None) -> str:
    """One document's text. A few stdlib test files are deliberately not UTF-8; their
    undecodable bytes become U+FFFD so every machine reads the same text."""
    base = pathlib.Path(root) if root is not None else stdlib_root()
    return (base / relpath).read_bytes().decode("utf-8", errors="replace")


def iter_documents(
    files: Sequence[CorpusFile], root: str | os.PathLike | None = None
) -> Iterator[str]:
    for f in files:
        yield read_document(f.relpath, root)


def corpus_fingerprint(split: str | None = None) -> str:
    """A hash of the Python version and the (path, size) list of the split's files."""
    h = hashlib.sha256()
    h.update(f"python {sys.version_info.major}.{sys.version_info.minor}\n".encode())
    h.update(f"split {split}\n".encode())
    for f in corpus_files(split):
        h.update(f"{f.relpath}\t{f.size}\n".encode())
    return h.hexdigest()[:16]
