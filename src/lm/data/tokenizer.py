"""Loading tokenizers and turning documents into token ids (the BOS/EOS policy).

`tokenizer:` names one of:
- `builtin`: the project's byte-level BPE trained on the embedded corpus (no network);
- `passthrough`: documents are already token ids (a JSON list of ints, or a string of
  whitespace-separated ints); `vocab_size` is required and every id must be below it;
- a local directory or an fsspec URL of a directory holding an HF tokenizer; a name that
  starts with `/`, `./`, `../`, `~` or `file://` is always a path, never a hub id;
- an HF hub name (`gpt2`, `meta-llama/...`), taken from the local HF cache first; the
  network is tried only when it is not cached and the hub's host resolves, and a clear
  error says so if that fails.

`DocumentEncoder` is the picklable recipe a cache builder ships to its workers: it loads
the tokenizer lazily in the worker and applies the BOS/EOS policy:
- `enforce_eos: true` appends EOS to every document unless the tokenizer already adds it;
- `add_bos: null` keeps whatever the tokenizer does; `true` makes every document start
  with BOS; `false` removes a BOS the tokenizer would add.
Long documents are never truncated: the dataset cuts the token stream into windows.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from lm.data.builtin_tokenizer import (
    BUILTIN_TOKENIZER_NAME,
    EOS_TOKEN,
    load_builtin_backend,
    load_builtin_tokenizer,
)
from lm.fs import looks_like_local_path
from lm.hf_files import TOKENIZER_DEFINING_FILES

logger = logging.getLogger(__name__)

PASSTHROUGH_TOKENIZER_NAME = "passthrough"


def _passthrough_class():
    from transformers import PreTrainedTokenizer

    class PassthroughTokenizer(PreTrainedTokenizer):
        """A tokenizer for pre-tokenized data: the text "5 17 3" is the ids [5, 17, 3]."""

        model_input_names = ["input_ids"]

        def __init__(self, vocab_size: int, **kwargs):
            self._vocab_size = vocab_size
            super().__init__(**kwargs)

        @property
        def vocab_size(self) -> int:
            return self._vocab_size

        def __len__(self) -> int:
            return self._vocab_size

        def get_vocab(self) -> dict[str, int]:
            return {str(i): i for i in range(self._vocab_size)}

        def _tokenize(self, text: str, **kwargs) -> list[str]:
            return text.split()

        def _convert_token_to_id(self, token: str) -> int:
            value = int(token)
            if not 0 <= value < self._vocab_size:
                raise ValueError(f"token id {value} is outside [0, vocab_size={self._vocab_size})")
            return value

        def _convert_id_to_token(self, index: int) -> str:
            return str(index)

        def convert_tokens_to_string(self, tokens: list[str]) -> str:
            return " ".join(tokens)

        def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None):
            return ()

    return PassthroughTokenizer


def passthrough_tokenizer(vocab_size: int):
    """A `transformers` tokenizer whose tokens are the decimal ids themselves."""
    return _passthrough_class()(vocab_size)


_FIELD = "data.tokenizer"
_ALLOWED = "use 'builtin', 'passthrough', a Hugging Face tokenizer directory or a hub id"


def _download_dir(url: str) -> str:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    if not fs.isdir(root):
        raise ValueError(f"{_FIELD}: {url} does not exist (or is not a directory); {_ALLOWED}")
    local = tempfile.mkdtemp(prefix="lm-tokenizer-")
    for path in fs.ls(root, detail=False):
        if fs.isfile(path):
            fs.get(path, os.path.join(local, os.path.basename(path)))
    return local


def _load_dir(path: str, shown: str):
    """The HF tokenizer in local directory `path` (`shown` in errors: what the config says)."""
    from transformers import AutoTokenizer

    if not any(f in TOKENIZER_DEFINING_FILES for f in os.listdir(path)):
        raise ValueError(
            f"{_FIELD}: {shown} is a directory with no tokenizer files "
            f"({', '.join(TOKENIZER_DEFINING_FILES[:2])}, ...); {_ALLOWED}"
        )
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises ValueError, OSError, ImportError, ...
        reason = " ".join(str(e).split())
        raise ValueError(
            f"{_FIELD}: the tokenizer directory {shown} could not be loaded "
            f"({type(e).__name__}: {reason}); {_ALLOWED}"
        ) from e


def hub_unresolvable() -> str | None:
    """Why the hub's host cannot be reached, if its name does not resolve; else None.

    huggingface_hub retries a failed request five times with backoff (about 45 s of log
    lines) even when the host does not resolve; one DNS lookup answers that at once. Behind
    a proxy the local resolver may not know the host, so then the hub is simply tried.
    Loading tokenizers and HF datasets (`hf_source._load_hf_split`) both ask it.
    """
    import socket
    import urllib.parse

    import huggingface_hub.constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urllib.parse.urlparse(huggingface_hub.constants.ENDPOINT).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"its host {host} does not resolve ({e})"
    return None


@functools.lru_cache(maxsize=16)
def load_tokenizer(name: str, vocab_size: int | None = None):
    """Load a tokenizer by name (see the module docstring). Cached per process.

    Returns:
        a `transformers.PreTrainedTokenizerBase`.

    Raises:
        ValueError: naming `data.tokenizer` and the value: a path that does not exist, a
            directory without tokenizer files, or a hub id that is neither cached nor
            downloadable.
    """
    if name == BUILTIN_TOKENIZER_NAME:
        return load_builtin_tokenizer()
    if name == PASSTHROUGH_TOKENIZER_NAME:
        if vocab_size is None or vocab_size <= 0:
            raise ValueError(
                f"tokenizer: passthrough needs vocab_size (a positive int), got {vocab_size!r}"
            )
        return passthrough_tokenizer(vocab_size)
    path = os.path.expanduser(name.removeprefix("file://"))
    if os.path.isdir(path):
        return _load_dir(path, name)
    if "://" in name and not name.startswith("file://"):
        return _load_dir(_download_dir(name), name)
    if looks_like_local_path(name):
        what = "is a file, not a directory" if os.path.exists(path) else "does not exist"
        raise ValueError(f"{_FIELD}: {name} {what}; {_ALLOWED}")
    # Imported here: AutoTokenizer pulls in transformers' model configs (and torch).
    import huggingface_hub.constants
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as cached_error:
        if huggingface_hub.constants.HF_HUB_OFFLINE:
            raise ValueError(
                f"{_FIELD}: {name!r} is not a local directory and not in the local HF cache, "
                "and HF_HUB_OFFLINE is set. Use 'builtin', 'passthrough', a local tokenizer "
                "directory, or download it first (huggingface-cli download)."
            ) from cached_error
        unreachable = hub_unresolvable()
        if unreachable is not None:
            raise ValueError(
                f"{_FIELD}: {name!r} is not a local directory and not in the local HF cache, "
                f"and the hub ({huggingface_hub.constants.ENDPOINT}) cannot be reached: "
                f"{unreachable}. Use 'builtin', 'passthrough', a local tokenizer directory, or "
                "download it first where there is network (huggingface-cli download)."
            ) from cached_error
        logger.info("tokenizer %r is not in the local HF cache; trying the hub", name)
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise ValueError(
            f"{_FIELD}: {name!r} is not a local directory, not in the local HF cache, and could "
            f"not be downloaded ({type(e).__name__}: {e}). Use 'builtin', 'passthrough', a local "
            "tokenizer directory, or download it first (huggingface-cli download)."
        ) from e


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the ids a tokenizer produces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content = backend.to_str()
    else:
        content = json.dumps(sorted(tokenizer.get_vocab().items()))
    return _fingerprint(
        type(tokenizer).__name__, content, tokenizer.bos_token_id, tokenizer.eos_token_id
    )


def builtin_content_fingerprint() -> str:
    """`tokenizer_fingerprint` of the builtin tokenizer loaded through transformers (the same
    value, tested), computed from its `tokenizer.json` alone, so that checking a built cache
    does not import transformers."""
    backend = load_builtin_backend()
    eos = backend.token_to_id(EOS_TOKEN)  # also its BOS
    # the class transformers (5.x) loads it as: part of the value existing caches carry
    return _fingerprint("TokenizersBackend", backend.to_str(), eos, eos)


def _fingerprint(class_name: str, content: str, bos: int | None, eos: int | None) -> str:
    h = hashlib.sha256()
    h.update(class_name.encode())
    h.update(content.encode())
    h.update(f"bos={bos} eos={eos}".encode())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class DocumentEncoder:
    """Turns documents into token-id arrays: tokenizer + BOS/EOS policy. Picklable."""

    tokenizer: str
    vocab_size: int | None = None
    enforce_eos: bool = True
    add_bos: bool | None = None

    @functools.cached_property
    def hf_tokenizer(self):
        return load_tokenizer(self.tokenizer, self.vocab_size)

    def vocab_length(self) -> int:
        """The tokenizer's vocabulary size, `len(hf_tokenizer)` (for the builtin tokenizer read
        from its file, without loading transformers)."""
        if self.tokenizer == BUILTIN_TOKENIZER_NAME:
            return load_builtin_backend().get_vocab_size(with_added_tokens=True)
        return len(self.hf_tokenizer)

    @property
    def is_passthrough(self) -> bool:
        return self.tokenizer == PASSTHROUGH_TOKENIZER_NAME

    @functools.cached_property
    def _policy(self) -> tuple[int | None, int | None, bool, bool]:
        """(bos id to prepend, eos id to append, strip a leading BOS, use the fast backend)."""
        if self.is_passthrough:
            if self.enforce_eos or self.add_bos:
                logger.warning(
                    "tokenizer: passthrough has no special tokens; enforce_eos/add_bos are ignored"
                )
            return None, None, False, False
        tok = self.hf_tokenizer
        probe = self._raw_encode(["hi there"])[0]
        adds_bos = bool(probe) and tok.bos_token_id is not None and probe[0] == tok.bos_token_id
        adds_eos = bool(probe) and tok.eos_token_id is not None and probe[-1] == tok.eos_token_id
        prepend = append = None
        if self.add_bos and not adds_bos:
            if tok.bos_token_id is None:
                raise ValueError(
                    f"add_bos: true, but tokenizer {self.tokenizer!r} has no BOS token"
                )
            prepend = tok.bos_token_id
        if self.enforce_eos and not adds_eos:
            if tok.eos_token_id is None:
                raise ValueError(
                    f"enforce_eos: true, but tokenizer {self.tokenizer!r} has no EOS token; "
                    "set enforce_eos: false"
                )
            append = tok.eos_token_id
        strip_bos = self.add_bos is False and adds_bos
        return prepend, append, strip_bos, True

    def _raw_encode(self, texts: Sequence[str]) -> list[list[int]]:
        tok = self.hf_tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:
            return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=True)]
        return tok(list(texts), add_special_tokens=True)["input_ids"]

    def for_workers(self) -> DocumentEncoder:
        """This encoder for a process in another working directory (a Ray worker): a local
        tokenizer directory as an absolute path. The fingerprint stays the same (it hashes
        the tokenizer's definition, not its name)."""
        from lm.data.sources import local_directory

        if self.tokenizer in (BUILTIN_TOKENIZER_NAME, PASSTHROUGH_TOKENIZER_NAME):
            return self
        # what `load_tokenizer` loads as a directory, before the hub
        local = local_directory(self.tokenizer)
        return self if local is None else dataclasses.replace(self, tokenizer=local)

    def __getstate__(self):
        # Workers load the tokenizer themselves; never ship the loaded object.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def fingerprint(self) -> str:
        if self.is_passthrough:
            base = f"passthrough:{self.vocab_size}"
        elif self.tokenizer == BUILTIN_TOKENIZER_NAME:
            base = builtin_content_fingerprint()
        else:
            base = tokenizer_fingerprint(self.hf_tokenizer)
        return hashlib.sha256(
            f"{base} enforce_eos={self.enforce_eos} add_bos={self.add_bos}".encode()
        ).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.tokenizer} (enforce_eos={self.enforce_eos}, add_bos={self.add_bos})"

    def document_problem(self, doc: Any) -> str | None:
        """Why this encoder cannot take `doc`, or None: a text tokenizer takes a string; a
        passthrough one a list of int ids or a string of whitespace-separated ints, each in
        [0, vocab_size). Sources prefix the answer with the file and line (or row)."""
        if self.is_passthrough:
            try:
                self._passthrough_ids(doc)
            except ValueError as e:
                return str(e)
            return None
        if isinstance(doc, str):
            return None
        return f"the document is {_kind(doc)}, not a string"

    def encode_batch(self, docs: Sequence[Any]) -> list[np.ndarray]:
        """Token ids (int32) of each document, with the BOS/EOS policy applied.

        Raises:
            ValueError: a document this encoder cannot take (`document_problem`).
        """
        if self.is_passthrough:
            _ = self._policy  # computed once; warns about the ignored options
            return [self._passthrough_ids(d) for d in docs]
        for i, d in enumerate(docs):
            if not isinstance(d, str):
                raise ValueError(f"document {i} of the batch: {self.document_problem(d)}")
        prepend, append, strip_bos, _ = self._policy
        out = []
        for ids in self._raw_encode(docs):
            if strip_bos and ids:
                ids = ids[1:]
            if prepend is not None:
                ids = [prepend, *ids]
            if append is not None:
                ids = [*ids, append]
            out.append(np.asarray(ids, dtype=np.int32))
        return out

    def _passthrough_ids(self, doc: Any) -> np.ndarray:
        if isinstance(doc, str):
            try:
                ids = np.asarray([int(t) for t in doc.split()], dtype=np.int64)
            except (ValueError, OverflowError) as e:
                raise ValueError(
                    f"passthrough document is not whitespace-separated ints: {e}"
                ) from e
        elif isinstance(doc, np.ndarray) and doc.ndim == 1 and doc.dtype.kind in "iu":
            ids = doc.astype(np.int64)
        elif isinstance(doc, list | tuple):
            # the common case, Python ints only, checked in C (3x the item-by-item loop)
            if set(map(type, doc)) <= {int}:
                try:
                    ids = np.asarray(doc, dtype=np.int64)
                except OverflowError:  # an id beyond int64
                    ids = self._checked_ids(doc)
            else:
                ids = self._checked_ids(doc)
        else:
            raise ValueError(
                f"a passthrough document must be a list of int token ids or a string of "
                f"whitespace-separated ints, not {_kind(doc)}"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids.max() if ids.max() >= self.vocab_size else ids.min())
            raise ValueError(
                f"passthrough token id {bad} is outside [0, vocab_size={self.vocab_size})"
            )
        return ids.astype(np.int32)

    def _checked_ids(self, doc: list | tuple) -> np.ndarray:
        """A list that is not plainly ints, checked item by item: an int conversion would
        truncate 2.7 to 2 and take True as 1."""
        for i, item in enumerate(doc):
            if type(item) is not int and not isinstance(item, np.integer):
                raise ValueError(
                    "a passthrough document must be a flat list of int token ids; item "
                    f"{i} is {_kind(item)}"
                )
        try:
            return np.asarray(doc, dtype=np.int64)
        except OverflowError:  # an id beyond int64
            bad = next(t for t in doc if not 0 <= t < self.vocab_size)
            raise ValueError(
                f"passthrough token id {bad} is outside [0, vocab_size={self.vocab_size})"
            ) from None


def _kind(value: Any) -> str:
    """What `value` is, in words, for error messages: `null`, `a bool (true)`, `an int
    (12345)`, `a float (2.7)`, `a list of 3 items`, `a dict with keys a, b`."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return f"a bool ({str(bool(value)).lower()})"
    if isinstance(value, int | np.integer):
        return f"an int ({value})"
    if isinstance(value, float | np.floating):
        return f"a float ({value})"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        keys = ", ".join(map(str, list(value)[:5])) + (", ..." if len(value) > 5 else "")
        return f"a dict with keys {keys}" if value else "an empty dict"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return f"a {type(value).__name__}"
