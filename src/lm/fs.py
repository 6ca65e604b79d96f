"""Filesystem URLs in configs: which protocol a URL names, and whether this Python can open it.

Two checks, at two times:

- `check_url_protocol` (in a config's `__post_init__`): the URL's protocol exists. A typo
  (`s4://b/x`, `GS://b/x`, a scheme missing a slash like `gcs:/b/x`) is a config error at the
  field's path, with a did-you-mean, whatever is installed.
- `missing_filesystem` (before a config opens anything): the protocol's filesystem imports.
  `gs://` needs `gcsfs` (`pip install 'lm[gcs]'`) and `s3://` needs `s3fs` (`lm[s3]`); without
  them fsspec fails deep inside a read with an `ImportError` traceback. This is not a parse-time
  check: a config naming `gs://` must still parse (and print, plan, round-trip) on a machine
  that does not run it.

Plain paths (relative, absolute, `~`) name no protocol and always pass.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import fsspec

from lm.config.errors import FieldError

EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}
"""Protocol -> the `lm` extra that installs its filesystem."""
_PACKAGES = {"gcs": "gcsfs", "s3": "s3fs"}

TENSORSTORE_PROTOCOLS = ("file", "memory", "gs", "s3")
"""Protocols TensorStore's kvstore reads and writes (checkpoints, tokenized caches)."""

# Suggested first: a typo of a common protocol should not be matched to an exotic one.
_COMMON = ("file", "memory", "gs", "gcs", "s3", "http", "https", "hf", "az", "abfs")
_NAME = r"[A-Za-z][A-Za-z0-9+.\-]*"
_SCHEME = re.compile(rf"^({_NAME})://")
# `gcs:/b/x`, `gs:b/x`: a scheme-like prefix (two characters or more, so not a drive letter)
# followed by a colon and at most one slash.
_BROKEN_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/?(?!/)")


def url_protocols(url: str) -> list[str]:
    """The fsspec protocols `url` names, outermost first.

    `[]` for a plain path, `["gs"]` for `gs://b/x`, `["simplecache", "gs"]` for the chained
    `simplecache::gs://b/x`.
    """
    parts = url.split("::")
    out = []
    for i, part in enumerate(parts):
        match = _SCHEME.match(part)
        if match:
            out.append(match.group(1))
        elif i < len(parts) - 1 and re.fullmatch(_NAME, part):
            out.append(part)
    return out


def _closest(name: str, options: Sequence[str], *, fuzzy: bool = True) -> str | None:
    lower = {o.lower(): o for o in options}
    if name.lower() in lower or not fuzzy:
        return lower.get(name.lower())
    common = [o for o in _COMMON if o in options]
    # A loose match among the common protocols (`s4` -> `s3`), a close one among the rest.
    for pool, cutoff in ((common, 0.5), (list(options), 0.75)):
        close = difflib.get_close_matches(name.lower(), pool, n=1, cutoff=cutoff)
        if close:
            return close[0]
    return None


def _allowed_text(allowed: Sequence[str]) -> str:
    urls = [f"{p}://" for p in allowed]
    return "a local path or a " + ", ".join(urls[:-1]) + f" or {urls[-1]} URL"


def check_url_protocol(url: str, field: str, *, allowed: Sequence[str] | None = None) -> None:
    """Raise a `FieldError` at `field` if `url` names an unknown protocol.

    Args:
        url: a local path or URL (brace and glob patterns are fine).
        field: the config field, relative to the dataclass (`train_urls[0]`, `cache_dir`).
        allowed: the protocols the consumer supports; default every protocol fsspec knows.
    """
    if not isinstance(url, str) or not url:
        raise FieldError(field, f"got {url!r}, expected a non-empty local path or URL")
    known = list(allowed) if allowed is not None else fsspec.available_protocols()
    protocols = url_protocols(url)
    if not protocols:
        match = _BROKEN_SCHEME.match(url)
        if match:
            # Only a known protocol: `notes:2024/x` is a legal (if odd) local path.
            scheme = _closest(match.group(1), known, fuzzy=False)
            if scheme is not None:
                rest = url[match.end() :]
                if scheme in ("file", "local") and url[len(match.group(1)) + 1 :].startswith("/"):
                    rest = "/" + rest  # file:/a/b means the absolute path /a/b
                fixed = f"{scheme}://{rest}"
                raise FieldError(
                    field,
                    f"{url!r} looks like a URL with a malformed scheme (a URL starts with "
                    f"'<protocol>://'); did you mean {fixed!r}?",
                )
        return
    for protocol in protocols:
        if protocol in known:
            continue
        close = _closest(protocol, known)
        hint = f" (did you mean {close + '://'!r}?)" if close else ""
        if allowed is not None:
            expected = _allowed_text(allowed)
        else:
            expected = (
                "a local path or a URL whose protocol fsspec knows (fsspec.available_protocols())"
            )
        kind = "unsupported" if protocol in fsspec.available_protocols() else "unknown"
        raise FieldError(
            field, f"{kind} protocol {protocol!r} in {url!r}{hint}; expected {expected}"
        )


def missing_filesystem(url: str) -> str | None:
    """Why this Python cannot open `url` (saying what to install), or None when it can.

    The reason does not repeat the URL, so the same reason for several fields reads once.
    """
    for protocol in url_protocols(url):
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as e:
            extra = EXTRAS.get(protocol)
            if extra is None:
                return f"{protocol}:// cannot be opened in this Python ({sys.executable}): {e}"
            return (
                f"{protocol}:// needs {_PACKAGES[extra]}, which is not installed in this Python "
                f"({sys.executable}); install it with pip install 'lm[{extra}]'"
            )
        except ValueError:
            return f"{protocol}:// is not a protocol fsspec knows"
    return None


def looks_like_local_path(name: str) -> bool:
    """A name no hub id could be: absolute, `./`, `../`, `~`, `file://`, or `.` / `..`."""
    return name in (".", "..") or name.startswith(("/", "./", "../", "~", "file://"))


def is_local_filesystem(fs: Any) -> bool:
    """Whether an fsspec filesystem object is the local disk."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def local_path(url: str) -> str | None:
    """The local filesystem path `url` names (a plain path or `file://`), expanded and absolute;
    None for any other protocol."""
    protocols = url_protocols(url)
    if protocols and protocols != ["file"]:
        return None
    path = url.split("://", 1)[1] if protocols else url
    return os.path.abspath(os.path.expanduser(path))


def missing_folders(path: str) -> list[str]:
    """The folders of local `path` (itself included) that do not exist yet, deepest first:
    what `os.makedirs(path)` would create, and what to remove to undo it."""
    missing = []
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    return missing


def remove_folders(made: Sequence[str]) -> None:
    """Remove the folders `missing_folders` listed (deepest first), undoing `os.makedirs`; one
    something else has written into stays."""
    for folder in made:
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def cannot_write_directory(url: str) -> str | None:
    """Why `url` (a local path) cannot be made, or written into, as a directory; None when it
    can, and for remote URLs. Probes by doing it: it makes the missing folders (or a file in
    an existing one) and removes what it made, so that an export fails before its work, not
    after, and leaves nothing behind. (Checking permission bits would not do: root passes
    them on read-only file systems such as /proc.)"""
    why = not_a_directory(url)
    if why is not None:
        return why
    path = local_path(url)
    if path is None:
        return None
    path = os.path.abspath(path)
    missing = missing_folders(path)
    try:
        if missing:
            os.makedirs(path)
        else:
            fd, name = tempfile.mkstemp(prefix=".lm-write-check-", dir=path)
            os.close(fd)
            os.remove(name)
    except OSError as e:
        return f"cannot write to {url}: {e.strerror or e}"
    finally:
        remove_folders(missing)
    return None


def not_a_directory(url: str) -> str | None:
    """Why `url` cannot be (or become) a local directory: it, or a folder on its way, is an
    existing file. None when it can, and for remote URLs (checked when they are opened).

    `os.makedirs` would fail later with `FileExistsError` / `NotADirectoryError`, after a run
    has started; a config names the field up front instead."""
    path = local_path(url)
    if path is None:
        return None
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
    if os.path.isdir(probe):
        return None
    if probe == path:
        return f"{url} is a file, not a directory"
    return f"{url} cannot be a directory: {probe}, on its path, is a file"
