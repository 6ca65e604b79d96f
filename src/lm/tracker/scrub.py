"""Keep credentials out of everything a tracker or the log file writes.

`scrub_secrets` is applied to hyperparameters, text artifacts, git diffs and every log
line. It removes three kinds of secret:

* values stored under secret-looking keys (`WANDB_API_KEY`, `hf_token`, `db_password`,
  `aws_secret_access_key`, ...), wherever they appear in a nested mapping;
* the current values of secret-looking environment variables, wherever they appear inside
  any string (so an API key pasted into a command line or an error message is caught);
* well-known token formats (Hugging Face, GitHub, OpenAI, AWS key ids, Google API keys,
  `Bearer ...` headers, `user:password@` in URLs, `api_key=...` assignments).

Key matching works on words, so `tokenizer`, `max_tokens`, `eos_token`, `pad_token_id` or
`throughput/tokens_per_second` are left alone while `token`, `HF_TOKEN` and `access_token`
are redacted. Only string values are redacted under a secret key.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import re
import tempfile
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

REDACTED = "***REDACTED***"
# Text files larger than this are attached unscanned (XLA dumps can be huge).
_MAX_SCRUB_BYTES = 16 * 1024 * 1024

# Single words that make a key secret.
_SECRET_WORDS = frozenset(
    {
        "token",
        "secret",
        "password",
        "passwd",
        "passphrase",
        "apikey",
        "credential",
        "credentials",
        "authorization",
        "cookie",
    }
)
# Adjacent word pairs that make a key secret (`api_key`, `private_key`, `access_key`...).
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key"), ("auth", "key")}
)
# Secret-looking env vars shorter than this are not searched for inside strings: a
# two-character "password" would redact half of every log line.
_MIN_ENV_SECRET_LEN = 8

_PATTERNS: tuple[re.Pattern[str], ...] = (
    # credentials inside URLs: scheme://user:password@host
    re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)[^/\s@]+(?P<post>@)"),
    re.compile(r"(?P<pre>\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}\b"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    re.compile(r"\bwandb_v\d+_[A-Za-z0-9_]{20,}\b"),
    # `api_key=...`, `"token": "..."`, `PASSWORD: ...` inside free text (numbers are kept)
    re.compile(
        r"(?P<pre>\b[A-Za-z0-9_]*(?:api[_-]?key|token|secret|password|passwd)[\"']?"
        r"\s*[=:]\s*[\"']?)(?!\*\*\*)(?![0-9.]+\b)[^\s\"',;}]{4,}",
        re.IGNORECASE,
    ),
)
# Words that, before a final "token", name a vocabulary token rather than a credential.
_VOCAB_TOKEN_WORDS = frozenset(
    {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "start", "end", "decoder"}
)


def _redact(match: re.Match[str]) -> str:
    groups = match.groupdict()
    return (groups.get("pre") or "") + REDACTED + (groups.get("post") or "")


def _key_words(key: str) -> list[str]:
    # "wandbApiKey" -> wandb api key; "HF_TOKEN" -> hf token
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a mapping key or env var name looks like it holds a credential."""
    words = _key_words(str(key))
    if any(w in _SECRET_WORDS and w != "token" for w in words):
        return True
    # "token" is a credential only as the last word, and not a vocabulary token (eos_token)
    if words and words[-1] == "token" and (len(words) == 1 or words[-2] not in _VOCAB_TOKEN_WORDS):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:], strict=False))


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if is_secret_key(k) and len(v) >= _MIN_ENV_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def scrub_text(text: str, *, environ: Mapping[str, str] | None = None) -> str:
    """`text` with every recognisable secret replaced by `***REDACTED***`."""
    if len(text) < _MIN_ENV_SECRET_LEN:  # shorter than any secret we can recognise
        return text
    for value in secret_env_values(environ):
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(_redact, text)
    return text


def scrub_secrets(value: Any, *, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of `value` with secrets removed.

    Mappings are copied with the values of secret-looking keys redacted (when non-empty)
    and every other value scrubbed recursively; strings go through `scrub_text`; lists,
    tuples and dataclass instances (as dicts) are scrubbed element-wise; other values are
    returned unchanged.
    """
    if isinstance(value, str):
        return scrub_text(value, environ=environ)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            # Only non-empty strings are redacted: numbers (pad_token_id) and flags
            # (use_auth_token: true) are not credentials.
            if isinstance(v, str | bytes) and v and is_secret_key(str(k)):
                out[k] = REDACTED
            else:
                out[k] = scrub_secrets(v, environ=environ)
        return out
    if isinstance(value, list | tuple):
        items = [scrub_secrets(v, environ=environ) for v in value]
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
            return type(value)(*items)
        return type(value)(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return scrub_secrets(
            {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, environ=environ
        )
    return value


def scrubbed_copy(path: pathlib.Path, scratch_dir: str) -> pathlib.Path:
    """`path` itself, or a copy in `scratch_dir` with secrets redacted if it held any.

    Only UTF-8 text files up to 16 MiB are scanned; binary files are returned as is.
    """
    if path.stat().st_size > _MAX_SCRUB_BYTES:
        return path
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return path
    scrubbed = scrub_text(text)
    if scrubbed == text:
        return path
    logger.warning("Redacted secrets from %s before attaching it to the run", path)
    fd, out = tempfile.mkstemp(dir=scratch_dir, suffix="-" + path.name)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(scrubbed)
    return pathlib.Path(out)
