"""Weights & Biases tracker (`type: wandb`, the default tracker).

* The W&B run id is the `lm` run id unless `id` is set, so a restarted run (same
  `trainer.id` or `RUN_ID`) continues the same W&B run (`resume: allow`).
* `mode: offline` needs no network: the run lands in `<save_dir>/wandb/offline-run-*`,
  ready for `wandb sync`.
* Code saving is ours, not W&B's: we find the git repo of the main script and record its
  commit, branch, remote and dirty diff in the run's files (`lm_code/`).
* `save_xla_dumps` reads the dump directory out of `XLA_FLAGS` (`--xla_dump_to=...`) and
  attaches it as an artifact at `finish()`.
* Nothing secret is written: hyperparameters, text artifacts and the diff go through
  `scrub_secrets`.

`wandb` itself is imported lazily, so `import lm.tracker` stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import numpy as np

from lm.config.errors import FieldError, did_you_mean, field_problem, raise_problems
from lm.tracker.base import (
    Histogram,
    Tracker,
    TrackerConfig,
    TrackerInitError,
    plain_value,
    to_python_scalar,
)
from lm.tracker.scrub import scrub_secrets, scrub_text, scrubbed_copy

logger = logging.getLogger(__name__)

_MODES = ("online", "offline", "disabled")
_ENV_MODES = (*_MODES, "shared", "dryrun", "run")  # W&B's own spellings, accepted from WANDB_MODE
MAX_TAG_LENGTH = 64  # W&B refuses longer tags when the run starts
_WANDB_ID_FORBIDDEN = ":;,#?/'"  # characters W&B refuses in a run id


def run_id_problem(run_id: str) -> str | None:
    """What keeps `run_id` from being both a W&B run id and the name of the run's directories
    (`lm.trainer.config.run_id_problem`), as the "expected" half of an error; None if nothing."""
    from lm.trainer.config import run_id_problem as directory_problem

    problem = directory_problem(run_id)
    if problem is None and any(c in _WANDB_ID_FORBIDDEN for c in run_id):
        problem = f"a run id without any of the characters {_WANDB_ID_FORBIDDEN} (W&B refuses them)"
    return problem


_RESUME = ("allow", "must", "never", "auto")


@TrackerConfig.register_subclass("wandb")
@dataclasses.dataclass(frozen=True)
class WandbConfig(TrackerConfig):
    """Weights & Biases. The default tracker: `tracker: {project: p}` needs no `type`."""

    entity: str | None = None
    """W&B entity (user or team). None: your default entity."""
    project: str | None = None
    """W&B project. None: W&B's default (`WANDB_PROJECT` or "uncategorized")."""
    name: str | None = None
    """Display name of the run. None: W&B generates one."""
    tags: list[str] = dataclasses.field(default_factory=list)
    """Tags added to the run."""
    id: str | None = None
    """W&B run id. None: the `lm` run id (`trainer.id`, `RUN_ID`, ...), stable on restart."""
    group: str | None = None
    """Groups related runs (e.g. a sweep) in the W&B UI."""
    notes: str | None = None
    """Free-text description of the run."""
    job_type: str | None = None
    """W&B job type (e.g. "train", "eval")."""
    mode: str | None = None
    """"online", "offline" (no network; sync later with `wandb sync`) or "disabled".
    None: W&B's default (`WANDB_MODE`, else online)."""
    resume: str = "allow"
    """W&B resume policy: "allow" continues a run with the same id if it exists,
    "must" requires it, "never" forbids it, "auto" resumes the last crashed run here."""
    save_dir: str | None = None
    """Directory under which W&B writes `wandb/` (run files, offline runs).
    None: `WANDB_DIR` or the current directory."""
    save_code: bool = True
    """Record the git commit, branch, remote and dirty diff of the main script's repo."""
    save_xla_dumps: bool = False
    """Attach the XLA dump directory (`--xla_dump_to=...` in `XLA_FLAGS`) at finish."""

    output_field: ClassVar[str | None] = "save_dir"

    def __post_init__(self):
        problems: list[FieldError] = []
        if self.mode is not None and self.mode not in _MODES:
            problems.append(
                FieldError(
                    "mode",
                    f"must be one of {', '.join(_MODES)} (or unset), got "
                    f"{self.mode!r}{did_you_mean(str(self.mode), _MODES)}",
                )
            )
        env_mode = os.environ.get("WANDB_MODE")
        if self.mode is None and env_mode and env_mode not in _ENV_MODES:
            # W&B would fail on it in its settings validation, once the run is set up
            problems.append(
                FieldError(
                    "mode",
                    f"is unset, so W&B takes the environment's WANDB_MODE={env_mode!r}, which "
                    f"must be one of {', '.join(_MODES)}{did_you_mean(env_mode, _MODES)}. Fix or "
                    "unset WANDB_MODE, or set this field",
                )
            )
        if self.resume not in _RESUME:
            problems.append(
                FieldError(
                    "resume",
                    f"must be one of {', '.join(_RESUME)}, got "
                    f"{self.resume!r}{did_you_mean(str(self.resume), _RESUME)}",
                )
            )
        if isinstance(self.tags, str):
            problems.append(
                FieldError(
                    "tags",
                    f"must be a list of strings, got the string {self.tags!r}; write "
                    f"`tags: [{self.tags}]`.",
                )
            )
        else:
            for i, tag in enumerate(self.tags):
                if not isinstance(tag, str) or not 1 <= len(tag) <= MAX_TAG_LENGTH:
                    problems.append(
                        FieldError(
                            f"tags[{i}]",
                            f"got {tag!r}, expected a string of 1 to {MAX_TAG_LENGTH} characters "
                            "(W&B's limit for a tag)",
                        )
                    )
        if self.id is not None and (problem := run_id_problem(self.id)) is not None:
            problems.append(FieldError("id", f"got {self.id!r}, expected {problem}"))
        if self.save_dir == "":
            problems.append(
                FieldError("save_dir", "is empty; give a directory, or leave it unset (null)")
            )
        else:
            # a file in the way is found now, not once the run has set up its data and model
            problems += field_problem(self.check_output)
        raise_problems(problems)

    def check_output(self, run_id=None, *, run_dir=None) -> None:
        if self.save_dir is None:
            return
        # W&B writes its run files to <save_dir>/wandb/
        self.check_folders(
            "save_dir",
            "W&B cannot write its run files",
            self.save_dir,
            os.path.join(self.save_dir, "wandb"),
        )

    def destination(self, run_id, *, run_dir=None) -> tuple[str, str]:
        return (
            "to W&B",
            "a process holds one W&B run, and starting a second one finishes the first. Keep "
            "one W&B tracker",
        )

    def init(self, run_id: str | None, *, run_dir: str | None = None) -> Tracker:
        try:
            import wandb
        except ImportError as e:
            raise TrackerInitError(
                f"The wandb tracker needs the `wandb` package, which cannot be imported ({e}). "
                "Install it (pip install wandb), or set `trainer.tracker.type: json` to log to a "
                "local file instead."
            ) from e

        mode = self.mode
        if jax.process_index() != 0:
            # One W&B run per training job; the other hosts' metrics are identical.
            mode = "disabled"
        run_id = self.id or run_id
        effective_mode = mode or os.environ.get("WANDB_MODE") or "online"
        if effective_mode == "offline" and self.resume in ("must", "never"):
            # W&B knows a run's history only on its server: offline, it starts or continues
            # the local run whatever the policy says
            logger.warning(
                "tracker.resume: %s cannot be checked in offline mode (W&B knows which runs "
                "exist only online): the run is logged locally as run %s either way, and `wandb "
                "sync` uploads it later",
                self.resume,
                run_id,
            )
        git = None
        if self.save_code and mode != "disabled":
            git = sniff_git_repo()
            if git is None:
                logger.warning(
                    "tracker.save_code is set but neither the main script (%s) nor the current "
                    "directory is inside a git repository; no code information is saved.",
                    _main_script() or "<interactive>",
                )
        settings = wandb.Settings(
            # W&B's own code saving only grabs the main file; ours records the repo.
            save_code=False,
            disable_code=True,
            **_git_settings(git),
        )
        save_dir = self.save_dir
        if save_dir is not None:
            os.makedirs(save_dir, exist_ok=True)
        try:
            run = wandb.init(
                entity=self.entity,
                project=self.project,
                name=self.name,
                tags=list(self.tags),
                id=run_id,
                group=self.group,
                notes=self.notes,
                job_type=self.job_type,
                mode=mode,
                resume=self.resume,
                dir=save_dir,
                settings=settings,
                # One W&B run per training process; it becomes `wandb.run`, so integrations
                # that log through the global run keep working.
                reinit="finish_previous",
            )
        except (wandb.errors.UsageError, wandb.errors.AuthenticationError) as e:
            raise TrackerInitError(
                f"Could not start the W&B run ({e}). Log in with `wandb login` or set "
                "WANDB_API_KEY, or set `trainer.tracker.mode: offline` to track without "
                "network (upload later with `wandb sync`), or `trainer.tracker.type: json` to "
                "log to a local file instead."
            ) from e
        except wandb.errors.CommError as e:
            raise TrackerInitError(
                f"Could not reach W&B to start the run ({e}). Check the network connection, or "
                "set `trainer.tracker.mode: offline` to track without network (upload later "
                "with `wandb sync`), or `trainer.tracker.type: json` to log to a local file."
            ) from e

        xla_dump_dir = None
        if self.save_xla_dumps:
            xla_dump_dir = xla_dump_dir_from_flags(os.environ.get("XLA_FLAGS", ""))
            if xla_dump_dir is None:
                logger.warning(
                    "tracker.save_xla_dumps is set but XLA_FLAGS has no --xla_dump_to=<dir>; "
                    "no XLA dumps will be saved. Set e.g. "
                    'XLA_FLAGS="--xla_dump_to=/tmp/xla_dumps --xla_dump_hlo_pass_re=.*".'
                )
        tracker = WandbTracker(run, xla_dump_dir=xla_dump_dir)
        if git is not None:
            tracker.save_git_info(git)
        return tracker


class WandbTracker(Tracker):
    """Logs to one W&B run (`wandb.sdk.wandb_run.Run`)."""

    name = "wandb"

    def __init__(self, run: Any, *, xla_dump_dir: str | None = None):
        self.run = run
        self.xla_dump_dir = xla_dump_dir
        self._finished = False
        self._disabled = bool(getattr(run, "disabled", False)) or run.settings.mode == "disabled"

    def log_hyperparameters(self, hparams: Mapping[str, Any]) -> None:
        self.run.config.update(scrub_secrets(plain_value(dict(hparams))), allow_val_change=True)

    def log(self, metrics: Mapping[str, Any], *, step: int | None, commit: bool | None = None):
        self.run.log(_to_wandb(metrics), step=step, commit=commit)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        for k, v in _to_wandb(metrics).items():
            self.run.summary[k] = v

    def log_artifact(self, artifact_path, *, name: str | None = None, type: str | None = None):
        import wandb

        path = pathlib.Path(artifact_path)
        if not path.exists():
            raise FileNotFoundError(f"log_artifact: {artifact_path} does not exist")
        artifact = wandb.Artifact(name=_artifact_name(name or path.name), type=type or "artifact")
        with tempfile.TemporaryDirectory(prefix="lm-artifact-") as scratch:
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for f in files:
                rel = f.name if path.is_file() else f.relative_to(path).as_posix()
                # add_file copies into W&B's staging area, so the scratch copy may go away.
                artifact.add_file(str(scrubbed_copy(f, scratch)), name=rel)
        self.run.log_artifact(artifact)

    def save_git_info(self, git: Mapping[str, Any]) -> None:
        """Write `lm_code/git.json` (and `lm_code/diff.patch` if dirty) into the run files."""
        if self._disabled:
            return
        code_dir = pathlib.Path(self.run.dir) / "lm_code"
        code_dir.mkdir(parents=True, exist_ok=True)
        info = {k: v for k, v in git.items() if k != "diff"}
        (code_dir / "git.json").write_text(json.dumps(scrub_secrets(info), indent=2) + "\n")
        if git.get("diff"):
            (code_dir / "diff.patch").write_text(scrub_text(git["diff"]))
        self.run.save(str(code_dir / "*"), base_path=self.run.dir, policy="now")

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            if self.xla_dump_dir is not None and not self._disabled:
                if os.path.isdir(self.xla_dump_dir):
                    logger.info("Attaching XLA dumps from %s to the W&B run", self.xla_dump_dir)
                    self.log_artifact(self.xla_dump_dir, name="xla_dumps", type="xla_dumps")
                else:
                    logger.warning(
                        "save_xla_dumps: XLA dump directory %s does not exist (nothing was "
                        "compiled, or XLA_FLAGS was set after jax started); nothing attached.",
                        self.xla_dump_dir,
                    )
        finally:
            self.run.finish()
            if not self._disabled:
                self._wait_for_transaction_log()

    def _wait_for_transaction_log(self, timeout_s: float = 60.0) -> None:
        """Wait until W&B's service has closed the run's `.wandb` file.

        `run.finish()` returns once the exit record is accepted, but the service writes
        the transaction log asynchronously; an offline run directory is complete (ready
        for `wandb sync`, safe to copy) only once the exit record is on disk.
        """
        path = getattr(self.run.settings, "sync_file", None)
        if not path:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _transaction_log_complete(path):
                return
            time.sleep(0.02)
        logger.warning("W&B has not finished writing %s after %.0f s", path, timeout_s)


_LOG_BLOCK = 32768
_LOG_HEADER = 7


def _transaction_log_complete(path: str) -> bool:
    """Whether W&B's transaction log (LevelDB-style record log) ends with an exit record."""
    from wandb.proto import wandb_internal_pb2

    try:
        data = pathlib.Path(path).read_bytes()
    except OSError:
        return False
    if not data.startswith(b":W&B"):
        return False
    pos, pending, last_type = _LOG_HEADER, b"", None
    while pos + _LOG_HEADER <= len(data):
        left = _LOG_BLOCK - pos % _LOG_BLOCK
        if left < _LOG_HEADER:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0:
            pos += left
            continue
        chunk = data[pos + _LOG_HEADER : pos + _LOG_HEADER + length]
        if len(chunk) < length:
            return False  # a record still being written
        pos += _LOG_HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(pending)
            except Exception:
                return False
            last_type = record.WhichOneof("record_type")
    return last_type == "exit"


def _to_wandb(metrics: Mapping[str, Any]) -> dict[str, Any]:
    import wandb

    out = {}
    for k, v in metrics.items():
        v = to_python_scalar(v)
        if isinstance(v, Histogram):
            v = wandb.Histogram(np_histogram=(np.asarray(v.counts), np.asarray(v.edges)))
        elif isinstance(v, np.ndarray):
            v = wandb.Histogram(v.ravel())
        elif isinstance(v, str):
            v = scrub_text(v)
        out[k] = v
    return out


def _artifact_name(name: str) -> str:
    # W&B artifact names allow letters, digits, dashes, underscores and dots.
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "artifact"


# --- run id (TRN-02 step 3) ---------------------------------------------------------------


def resolve_run_id_from_env(
    tracker: TrackerConfig | Sequence[TrackerConfig] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The W&B run id, if W&B already has one for this run; else None.

    Checked in order: `id` of the (first) `WandbConfig` in `tracker`; the `WANDB_RUN_ID`
    environment variable; with `resume: auto` (or `WANDB_RESUME=auto`), the id W&B saved in
    `<save_dir>/wandb/wandb-resume.json` for a run that did not finish. The trainer uses
    this as step 3 of the run-id order (`trainer.id`, `RUN_ID`, W&B id, random).
    """
    environ = os.environ if environ is None else environ
    configs = [tracker] if isinstance(tracker, TrackerConfig) else list(tracker or ())
    wandb_config = next((c for c in configs if isinstance(c, WandbConfig)), None)
    if wandb_config is not None and wandb_config.id:
        return wandb_config.id
    if environ.get("WANDB_RUN_ID"):
        return environ["WANDB_RUN_ID"]
    resume = wandb_config.resume if wandb_config is not None else None
    if resume == "auto" or environ.get("WANDB_RESUME") == "auto":
        root = (wandb_config.save_dir if wandb_config else None) or environ.get("WANDB_DIR")
        root_path = pathlib.Path(root or os.getcwd())
        for dirname in (".wandb", "wandb"):
            resume_file = root_path / dirname / "wandb-resume.json"
            if resume_file.is_file():
                try:
                    run_id = json.loads(resume_file.read_text())["run_id"]
                except (ValueError, KeyError, TypeError) as e:
                    logger.warning("Ignoring unreadable W&B resume file %s: %s", resume_file, e)
                    continue
                if isinstance(run_id, str) and run_id:
                    return run_id
    return None


# --- code saving: the git repo of the main script -----------------------------------------


def _main_script() -> str | None:
    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None)


def _git(root: str | os.PathLike, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def find_git_root(start: str | os.PathLike | None = None) -> str | None:
    """The top of the git work tree containing `start` (a file or directory), if any.

    Default `start`: the main script, falling back to the current directory.
    """
    candidates = [start] if start is not None else [_main_script(), os.getcwd()]
    for c in candidates:
        if c is None:
            continue
        path = pathlib.Path(c).resolve()
        directory = path if path.is_dir() else path.parent
        if not directory.exists():
            continue
        top = _git(directory, "rev-parse", "--show-toplevel")
        if top:
            return top.strip()
    return None


def sniff_git_repo(start: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Commit, branch, remote, dirtiness and diff of the repo holding the main script.

    Returns None outside a git repository. Reads only the local repo (no network). The
    remote URL and diff are scrubbed of credentials.
    """
    root = find_git_root(start)
    if root is None:
        return None
    commit = _git(root, "rev-parse", "HEAD")
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    remote = _git(root, "config", "--get", "remote.origin.url")
    status = _git(root, "status", "--porcelain") or ""
    # `git diff HEAD` fails in a repo without commits; the diff is then meaningless anyway.
    diff = _git(root, "diff", "HEAD") if commit else None
    untracked = _git(root, "ls-files", "--others", "--exclude-standard") or ""
    return {
        "root": root,
        "commit": commit.strip() if commit else None,
        "branch": branch.strip() if branch else None,
        "remote": scrub_text(remote.strip()) if remote else None,
        "dirty": bool(status.strip()),
        "untracked": untracked.split(),
        "main_script": _main_script(),
        "diff": scrub_text(diff) if diff else "",
    }


def _git_settings(git: Mapping[str, Any] | None) -> dict[str, Any]:
    if git is None:
        return {"disable_git": True}
    settings: dict[str, Any] = {"git_root": git["root"]}
    if git.get("commit"):
        settings["git_commit"] = git["commit"]
    if git.get("remote"):
        settings["git_remote_url"] = git["remote"]
    return settings


def xla_dump_dir_from_flags(xla_flags: str) -> str | None:
    """The directory of `--xla_dump_to=<dir>` (or `--xla_dump_to <dir>`) in `XLA_FLAGS`."""
    try:
        tokens = shlex.split(xla_flags)
    except ValueError:
        tokens = xla_flags.split()
    found = None
    for i, tok in enumerate(tokens):
        if tok.startswith("--xla_dump_to="):
            found = tok.split("=", 1)[1]
        elif tok == "--xla_dump_to" and i + 1 < len(tokens):
            found = tokens[i + 1]
    return found or None


__all__ = [
    "WandbConfig",
    "WandbTracker",
    "find_git_root",
    "resolve_run_id_from_env",
    "sniff_git_repo",
    "xla_dump_dir_from_flags",
]
