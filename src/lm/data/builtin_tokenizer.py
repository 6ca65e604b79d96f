"""The builtin tokenizer: a byte-level BPE trained by this project on the embedded corpus.

`tokenizer: builtin` (the default) names it. It is trained with HF `tokenizers` on the
train split of the standard-library corpus (`lm.data.corpus`), 8192 tokens with one
special token `<|endoftext|>` (used as EOS, BOS and UNK, like GPT-2), and saved as an HF
fast tokenizer directory, so `transformers.AutoTokenizer.from_pretrained(path)` and
`PreTrainedTokenizerFast.from_pretrained(path)` load it.

It lives under `<cache root>/tokenizers/<name>-<fingerprint>/`, where the cache root is
`$LM_CACHE_DIR` if set, else `~/.cache/lm`, and the fingerprint covers the corpus (Python
version, file list and sizes) and the training settings. A missing tokenizer is trained
(about 5 s) into a temporary directory that is then renamed into place, so several
processes may ask for it at once: one rename wins and the others use its result.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pathlib
import shutil
import tempfile

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from lm.data import corpus

logger = logging.getLogger(__name__)

BUILTIN_TOKENIZER_NAME = "builtin"
EOS_TOKEN = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 8192
_FORMAT_VERSION = 1


def cache_root() -> pathlib.Path:
    """`$LM_CACHE_DIR` if set, else `~/.cache/lm`: where builtin artifacts are cached."""
    env = os.environ.get("LM_CACHE_DIR")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "lm"


def _cache_root_error(directory: pathlib.Path, error: OSError) -> Exception:
    """A `SetupConfigError` naming LM_CACHE_DIR (or the default folder) when the builtin
    tokenizer's folder cannot be made (it was `[Errno 20] Not a directory: ...`)."""
    from lm.config.errors import SetupConfigError
    from lm.fs import not_a_directory

    why = not_a_directory(str(directory)) or f"cannot make {directory}: {error.strerror or error}"
    env = os.environ.get("LM_CACHE_DIR")
    where = f"LM_CACHE_DIR ({env})" if env else f"the default cache folder ({cache_root()})"
    return SetupConfigError(
        f"{where}: {why}; the builtin tokenizer is cached there. Point LM_CACHE_DIR at a "
        "directory this process can write"
    )


def builtin_tokenizer_fingerprint(vocab_size: int = DEFAULT_VOCAB_SIZE) -> str:
    h = hashlib.sha256()
    h.update(
        f"v{_FORMAT_VERSION} bpe vocab={vocab_size} eos={EOS_TOKEN} "
        f"tokenizers={tokenizers.__version__}\n".encode()
    )
    h.update(corpus.corpus_fingerprint("train").encode())
    return h.hexdigest()[:16]


def builtin_tokenizer_path(vocab_size: int = DEFAULT_VOCAB_SIZE) -> pathlib.Path:
    fp = builtin_tokenizer_fingerprint(vocab_size)
    return cache_root() / "tokenizers" / f"stdlib-bpe{vocab_size}-{fp}"


def train_bpe(texts, vocab_size: int = DEFAULT_VOCAB_SIZE) -> tokenizers.Tokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenization) on an iterable of texts."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _save_as_hf(tok: tokenizers.Tokenizer, path: pathlib.Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
    )
    hf.save_pretrained(str(path))


def ensure_builtin_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> pathlib.Path:
    """The directory of the builtin tokenizer, training it first if it is not cached."""
    final = builtin_tokenizer_path(vocab_size)
    if (final / "tokenizer.json").exists():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cache_root_error(final.parent, e) from None
    files = corpus.corpus_files("train")
    logger.info(
        "Training the builtin tokenizer (byte-level BPE, vocab %d) on %d stdlib files into %s",
        vocab_size,
        len(files),
        final,
    )
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        tok = train_bpe(corpus.iter_documents(files), vocab_size)
        _save_as_hf(tok, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first; its result is identical, use it.
            if not (final / "tokenizer.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@functools.lru_cache(maxsize=4)
def load_builtin_backend(vocab_size: int = DEFAULT_VOCAB_SIZE) -> tokenizers.Tokenizer:
    """The builtin tokenizer as a `tokenizers.Tokenizer` read from its `tokenizer.json`: what
    the transformers wrapper holds as `backend_tokenizer`, without importing transformers
    (~1-2 s). Cached per process; treat it as read-only."""
    directory = ensure_builtin_tokenizer(vocab_size)
    try:
        return tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as e:  # tokenizers raises a bare Exception for a damaged file
        raise _damaged(directory, e) from None


def load_builtin_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE):
    """The builtin tokenizer as a `transformers.PreTrainedTokenizerFast`."""
    from transformers import PreTrainedTokenizerFast

    directory = ensure_builtin_tokenizer(vocab_size)
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(directory))
    except Exception as e:
        raise _damaged(directory, e) from None


def _damaged(directory: pathlib.Path, error: Exception) -> ValueError:
    return ValueError(
        f"the builtin tokenizer cached in {directory} cannot be loaded ({type(error).__name__}: "
        f"{error}): its files are damaged. Delete that directory; the next run trains the "
        "tokenizer again (~10 s) and gets the same one"
    )
