"""Where checkpoints live: path handling, listing, discovery and deletion.

Every byte goes through a TensorStore key-value store, so the same code serves local
paths, `file://`, `memory://` (tests), `gs://` and `s3://`. One shared `ts.Context`
is used for all of it: TensorStore's `memory://` store is owned by its context, so
arrays, manifests and metadata written by different calls must share it to see each
other.

`metadata.json` is the commit marker: it is written last, in one atomic object write,
after every process has written its arrays (see `serialization.py`). So a checkpoint
directory is

- *complete*: metadata.json exists and parses;
- *torn*: no metadata.json, a save that never committed (or a delete that was cut
  short, which removes the marker first). It holds nothing a run could lose: it is
  never loaded, and the Checkpointer may delete it;
- *damaged*: metadata.json exists but is unreadable (not JSON, no integer step). The
  save did commit, so the directory holds a real checkpoint: loading it is an error
  and nothing ever deletes it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import urllib.parse
from typing import Any

import tensorstore as ts

from lm.config.errors import is_int
from lm.fs import TENSORSTORE_PROTOCOLS

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"
STEP_DIR_RE = re.compile(r"^step-(\d+)$")

# Schemes TensorStore's kvstore opens directly.
_SUPPORTED_SCHEMES = TENSORSTORE_PROTOCOLS


@functools.cache
def ts_context() -> ts.Context:
    """The one TensorStore context all checkpoint I/O shares (created on first use)."""
    return ts.Context()


def kvstore_url(path: str) -> str:
    """A TensorStore kvstore URL for `path`, ending in "/".

    Plain paths (relative or absolute) become `file://` URLs; `file://`, `memory://`,
    `gs://` and `s3://` pass through.
    """
    path = os.fspath(path)
    if "://" in path:
        scheme = path.split("://", 1)[0]
        if scheme not in _SUPPORTED_SCHEMES:
            raise ValueError(
                f"checkpoint path {path!r} has unsupported scheme {scheme!r}; use a local "
                f"path or one of {', '.join(s + '://' for s in _SUPPORTED_SCHEMES)}"
            )
        url = path
    else:
        url = "file://" + os.path.abspath(os.path.expanduser(path))
    return url if url.endswith("/") else url + "/"


def join(path: str, *parts: str) -> str:
    """Join path components with "/", keeping the caller's spelling of `path`."""
    out = os.fspath(path).rstrip("/")
    for p in parts:
        out = out + "/" + p.strip("/")
    return out


def local_path(path: str) -> str | None:
    """The local filesystem path behind `path`, or None for non-local stores."""
    url = kvstore_url(path)
    if url.startswith("file://"):
        return urllib.parse.unquote(url[len("file://") :])
    return None


def _open_kvstore(path: str) -> ts.KvStore:
    return ts.KvStore.open(kvstore_url(path), context=ts_context()).result()


def read_json(path: str, name: str) -> dict[str, Any] | None:
    """Parse `path/name` as JSON; None if the file does not exist.

    Raises:
        ValueError: the file exists but is not a JSON object.
    """
    result = _open_kvstore(path).read(name).result()
    if result.state != "value":
        return None
    try:
        value = json.loads(result.value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{join(path, name)} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{join(path, name)} holds {type(value).__name__}, expected an object")
    return value


def write_json(path: str, name: str, value: dict[str, Any]) -> None:
    """Write `value` to `path/name` (a single atomic object write on every store)."""
    data = json.dumps(value, indent=2, sort_keys=True).encode("utf-8")
    _open_kvstore(path).write(name, data).result()


def list_keys(path: str) -> list[str]:
    """Every key under `path`, relative to it (recursive)."""
    return [k.decode("utf-8") for k in _open_kvstore(path).list().result()]


def exists(path: str) -> bool:
    """Whether anything is stored under `path`."""
    return bool(list_keys(path))


def delete_tree(path: str) -> None:
    """Delete everything under `path`, `metadata.json` first.

    Removing the commit marker first means an interrupted delete leaves a torn
    directory (skipped on load), never one that looks complete but lacks arrays.
    """
    kv = _open_kvstore(path)
    kv.delete_range(ts.KvStore.KeyRange(METADATA_FILE, METADATA_FILE + "\0")).result()
    kv.delete_range(ts.KvStore.KeyRange()).result()
    local = local_path(path)
    if local is not None:
        # The file kvstore deletes files but leaves (empty) directories behind.
        shutil.rmtree(local, ignore_errors=True)


def holds_subtree(checkpoint_dir: str, name: str) -> bool:
    """Whether checkpoint `checkpoint_dir` (one `step-N` directory) holds arrays under `name`
    (e.g. "model_averaging": its run trained with `trainer.model_averaging`)."""
    manifest = read_json(checkpoint_dir, MANIFEST_FILE) or {}
    return any(
        leaf.startswith(name + "/") and record.get("kind") == "array"
        for leaf, record in manifest.get("leaves", {}).items()
    )


DAMAGED_DIR = "damaged"
"""Where `move_aside` puts a damaged checkpoint, inside its run directory (not a step-N
name, so listings and resumes pass it by)."""


def move_aside(path: str) -> str | None:
    """Move local checkpoint directory `path` (`<run dir>/step-N`) to `<run
    dir>/damaged/step-N` (`step-N.2`, ... when taken) and return where; None for a store that
    cannot rename (gs://, s3://, memory://)."""
    local = local_path(path)
    if local is None:
        return None
    local = local.rstrip("/")
    parent, name = os.path.split(local)
    target_dir = os.path.join(parent, DAMAGED_DIR)
    os.makedirs(target_dir, exist_ok=True)
    target, n = os.path.join(target_dir, name), 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(target_dir, f"{name}.{n}")
    os.rename(local, target)
    return target


@dataclasses.dataclass(frozen=True)
class CheckpointStatus:
    """One child directory of a run directory, as `list_checkpoints` sees it.

    Attributes:
        path: the checkpoint directory (`<run dir>/step-N`).
        step: the step from metadata.json, or parsed from the name when it is unreadable.
        complete: metadata.json exists and parses.
        is_temporary: the metadata's flag (False when it is unreadable).
        timestamp: the metadata's ISO timestamp, or None.
        problem: why the checkpoint is not complete, or None.
        committed: metadata.json, the commit marker, exists: the save finished. A
            committed checkpoint that is not complete is damaged, never a torn save.
    """

    path: str
    step: int
    complete: bool
    is_temporary: bool = False
    timestamp: str | None = None
    problem: str | None = None
    committed: bool = False

    def __post_init__(self):
        assert self.committed or not self.complete, "a complete checkpoint is committed"

    @property
    def damaged(self) -> bool:
        """Committed but unreadable metadata: a real checkpoint, never to be deleted."""
        return self.committed and not self.complete

    @property
    def deletable_leftover(self) -> bool:
        """Provably disposable: a torn save (never committed) or a complete temporary one."""
        return not self.committed or (self.complete and self.is_temporary)


def _name_step(path: str) -> int:
    match = STEP_DIR_RE.match(os.fspath(path).rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else -1


def read_status(path: str, *, nonempty: bool | None = None) -> CheckpointStatus | None:
    """Status of the checkpoint directory `path`, or None when nothing is stored there.

    `nonempty=True` says the caller already knows something is stored there (saves a
    listing when metadata.json is missing).
    """
    name_step = _name_step(path)
    try:
        meta = read_json(path, METADATA_FILE)
    except ValueError as e:
        return _damaged(path, name_step, str(e))
    if meta is None:
        if not (nonempty if nonempty is not None else exists(path)):
            return None
        return CheckpointStatus(path, name_step, complete=False, problem="no metadata.json")
    step = meta.get("step")
    if not is_int(step):
        return _damaged(path, name_step, f"{join(path, METADATA_FILE)} has no integer step: {meta}")
    return CheckpointStatus(
        path,
        step,
        complete=True,
        is_temporary=bool(meta.get("is_temporary", False)),
        timestamp=meta.get("timestamp"),
        committed=True,
    )


def _damaged(path: str, step: int, problem: str) -> CheckpointStatus:
    return CheckpointStatus(
        path,
        step,
        complete=False,
        committed=True,
        problem=(
            f"{problem}. Its commit marker exists, so this is a committed checkpoint, not an "
            f"unfinished save: repair {METADATA_FILE} (step, timestamp, is_temporary) or "
            f"move {path} aside"
        ),
    )


def _statuses(path: str, keys: list[str]) -> list[CheckpointStatus]:
    children: dict[str, bool] = {}
    for key in keys:
        if "/" not in key:
            continue
        child, rest = key.split("/", 1)
        children[child] = children.get(child, False) or rest == METADATA_FILE
    found = []
    for child, has_meta in children.items():
        if not has_meta and not STEP_DIR_RE.match(child):
            continue
        status = read_status(join(path, child), nonempty=True)
        if status is not None:
            found.append(status)
    found.sort(key=lambda s: (s.step, s.timestamp or ""))
    return found


def list_checkpoints(path: str) -> list[CheckpointStatus]:
    """The checkpoints in run directory `path`, complete or torn, sorted by step.

    A child counts when it holds a `metadata.json` or is named `step-N`. A missing
    `path` gives an empty list.
    """
    return _statuses(path, list_keys(path))


def checkpoint_candidates(path: str) -> tuple[list[CheckpointStatus], list[CheckpointStatus]]:
    """(committed checkpoints newest first, torn ones) for a run dir or a checkpoint dir.

    The committed ones include damaged checkpoints (`status.damaged`): they are real
    checkpoints, so a loader must fail on them rather than treat them as absent.
    If `path` is itself a checkpoint (it holds metadata.json, or is a `step-N`
    directory without checkpoints inside), it is the only candidate.
    """
    local = local_path(path)
    if local is not None and os.path.isfile(local.rstrip("/")):
        raise ValueError(
            f"{path} is a file; a checkpoint path is a run's checkpoint directory or one of its "
            "step-N directories"
        )
    keys = list_keys(path)
    if not keys:
        return [], []
    statuses = _statuses(path, keys)
    if METADATA_FILE in keys or (not statuses and _name_step(path) >= 0):
        own = read_status(path, nonempty=True)
        assert own is not None
        return ([own], []) if own.committed else ([], [own])
    committed = [s for s in reversed(statuses) if s.committed]
    torn = [s for s in statuses if not s.committed]
    return committed, torn


def discover_latest_checkpoint(path: str) -> str | None:
    """The newest complete checkpoint under `path` (highest step), or None.

    `path` may be a run directory or a checkpoint directory itself. Torn and damaged
    checkpoints newer than the one returned are skipped with a warning (loading from
    `path` fails on a damaged one; see `load_checkpoint`).
    """
    committed, torn = checkpoint_candidates(path)
    newest = next((s for s in committed if s.complete), None)
    for t in torn:
        if newest is None or t.step > newest.step:
            logger.warning("Skipping incomplete checkpoint %s: %s", t.path, t.problem)
    for d in committed:
        if d.damaged and (newest is None or d.step > newest.step):
            logger.warning("Skipping damaged checkpoint %s: %s", d.path, d.problem)
    if newest is None:
        return None
    return newest.path
