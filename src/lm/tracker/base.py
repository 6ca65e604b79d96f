"""The tracker interface, its config registry, and the process-wide current tracker.

A `Tracker` receives hyperparameters, per-step metrics, summaries and artifacts. The
trainer owns one (often a `CompositeTracker`) and makes it current with `with tracker:`,
so library code anywhere can call `lm.tracker.log(...)`.

Inside jitted code there is no host to write to. `lm.tracker.log` called while tracing
records the (traced) values into the innermost `capture_metrics()` block; the trainer's
step returns them as outputs and logs them after the step. No host callbacks.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import draccus
import jax
import numpy as np

from lm.config.errors import FieldError, SetupConfigError
from lm.fs import not_a_directory

logger = logging.getLogger(__name__)


class TrackerInitError(RuntimeError):
    """A tracker could not start (no W&B login, W&B unreachable, its package missing). The
    message says what to do; the CLI shows it without a traceback."""


@dataclasses.dataclass(frozen=True)
class Histogram:
    """A histogram of values: `counts[i]` values fell in `[edges[i], edges[i+1])`."""

    counts: np.ndarray
    edges: np.ndarray
    min: float
    max: float
    num: int
    sum: float
    sum_squares: float

    @staticmethod
    def from_array(values: Any, num_bins: int = 64) -> Histogram:
        arr = np.asarray(jax.device_get(values), dtype=np.float64).ravel()
        counts, edges = np.histogram(arr, bins=num_bins)
        return Histogram(
            counts=counts,
            edges=edges,
            min=float(arr.min()) if arr.size else 0.0,
            max=float(arr.max()) if arr.size else 0.0,
            num=int(arr.size),
            sum=float(arr.sum()),
            sum_squares=float((arr * arr).sum()),
        )

    @property
    def mean(self) -> float:
        return self.sum / self.num if self.num else 0.0


class Tracker(abc.ABC):
    """Destination for run metadata and metrics.

    Subclasses set `name` (the registry key of their config) so `get_tracker(name)` can find
    them inside a composite.
    """

    name: str = "tracker"

    @abc.abstractmethod
    def log_hyperparameters(self, hparams: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def log(
        self, metrics: Mapping[str, Any], *, step: int | None, commit: bool | None = None
    ) -> None:
        """Log metrics at `step`. `commit=False` lets later calls add to the same step."""

    @abc.abstractmethod
    def log_summary(self, metrics: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def log_artifact(
        self, artifact_path: str, *, name: str | None = None, type: str | None = None
    ) -> None: ...

    @abc.abstractmethod
    def finish(self) -> None: ...

    def log_configuration(self, config: Any) -> None:
        """Log a config object (a dataclass, e.g. the whole run config) as hyperparameters.

        The config is encoded with draccus (so custom codecs apply) and falls back to a
        field-by-field walk for values draccus cannot encode.
        """
        self.log_hyperparameters(config_to_hparams(config))

    def __enter__(self) -> Tracker:
        _push_tracker(self)
        return self

    def __exit__(self, *exc) -> None:
        _pop_tracker(self)


class NoopTracker(Tracker):
    name = "noop"

    def log_hyperparameters(self, hparams):
        pass

    def log(self, metrics, *, step, commit=None):
        pass

    def log_summary(self, metrics):
        pass

    def log_artifact(self, artifact_path, *, name=None, type=None):
        pass

    def finish(self):
        pass


# Packages whose exceptions are a tracker's output failing (network, remote storage), as
# OSErrors are: W&B's service and API, fsspec's remote filesystems and their HTTP clients.
_SINK_PACKAGES = frozenset(
    {"wandb", "fsspec", "gcsfs", "s3fs", "aiohttp", "botocore", "google", "grpc", "requests"}
)


def is_sink_failure(error: BaseException) -> bool:
    """Whether `error` is a tracker's output failing (I/O, a remote service), rather than a
    bug in what was logged or in the tracker."""
    if isinstance(error, OSError):
        return True
    return type(error).__module__.split(".")[0] in _SINK_PACKAGES


class CompositeTracker(Tracker):
    """Fans every call out to several trackers, in order.

    A tracker whose output fails (`is_sink_failure`: a full disk under the JSON log, a W&B
    service that died) is dropped: the error is logged with the tracker's name, what it was
    doing and the exception, the other trackers go on, and so does training (a metrics sink
    does not end a run; its checkpoints go on being saved). `failures` lists what was dropped,
    for the run's summary. Any other exception (a value no tracker can log, a bug in a
    tracker) is raised, after `finish` has finished the others. `names` label the trackers in
    the messages (`trainer.tracker[1] (wandb)`).
    """

    name = "composite"

    def __init__(self, trackers: Sequence[Tracker], *, names: Sequence[str] | None = None):
        self.trackers = list(trackers)
        self._names = dict(
            zip(map(id, self.trackers), names or [t.name for t in self.trackers], strict=True)
        )
        self.failures: list[str] = []

    def _each(self, what: str, call) -> None:
        bugs: list[Exception] = []
        for t in list(self.trackers):
            try:
                call(t)
            except Exception as e:
                if not is_sink_failure(e):
                    bugs.append(e)  # what was logged, or the tracker's code: say so loudly
                    if what != "finishing":  # every tracker is finished before raising
                        break
                    continue
                self._drop(t, what, e)
        if bugs:
            raise bugs[0]

    def _drop(self, tracker: Tracker, what: str, error: Exception) -> None:
        self.trackers.remove(tracker)
        label = self._names.get(id(tracker), tracker.name)
        if label != tracker.name:
            label = f"{label} ({tracker.name})"
        failure = f"{label} failed {what}: {type(error).__name__}: {error}"
        self.failures.append(failure)
        left = (
            "the other trackers go on"
            if self.trackers
            else "no tracker is left, so the run's metrics are no longer recorded"
        )
        logger.error(
            "%s. It is dropped and the run goes on without it (%s)",
            failure,
            left,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )
        if what != "finishing":
            with contextlib.suppress(Exception):  # release what it holds (a W&B process)
                tracker.finish()

    def log_hyperparameters(self, hparams):
        self._each("logging the hyperparameters", lambda t: t.log_hyperparameters(hparams))

    def log(self, metrics, *, step, commit=None):
        metrics = metrics_to_host(metrics)  # fetch device values once, not once per tracker
        self._each(f"logging step {step}", lambda t: t.log(metrics, step=step, commit=commit))

    def log_summary(self, metrics):
        metrics = metrics_to_host(metrics)
        self._each("logging the summary", lambda t: t.log_summary(metrics))

    def log_artifact(self, artifact_path, *, name=None, type=None):
        self._each(
            f"logging the artifact {name or artifact_path}",
            lambda t: t.log_artifact(artifact_path, name=name, type=type),
        )

    def finish(self):
        # every tracker is finished, also after one fails; an output failure is logged, not
        # raised (the Trainer also keeps any error from hiding the one that ended a run)
        self._each("finishing", lambda t: t.finish())

    def find(self, name: str) -> Tracker | None:
        for t in self.trackers:
            if t.name == name:
                return t
            if isinstance(t, CompositeTracker) and (found := t.find(name)) is not None:
                return found
        return None


@dataclasses.dataclass(frozen=True)
class TrackerConfig(draccus.ChoiceRegistry, abc.ABC):
    """Registry of tracker configs, selected by `type:`; W&B when `type` is omitted."""

    output_field: ClassVar[str | None] = None
    """The field naming where the tracker writes (`path`, `logdir`, `save_dir`), if any: errors
    creating its output name it."""

    @abc.abstractmethod
    def init(self, run_id: str | None, *, run_dir: str | None = None) -> Tracker:
        """Build the tracker for run `run_id`; `run_dir` is `<log_dir>/<run_id>` when known."""

    def check_output(self, run_id: str | None = None, *, run_dir: str | None = None) -> None:
        """Raise `FieldError(field, why)` when where this tracker would write cannot be created
        (a file where a folder must be). With `run_id` None, as when the config is parsed, only
        the part of the location that does not depend on the run id is checked. Remote URLs
        pass (they are checked when opened)."""

    @staticmethod
    def check_folders(field: str, what: str, *folders: str) -> None:
        """For `check_output`: raise `FieldError(field)` when one of `folders` (local ones;
        remote URLs pass) is, or runs through, an existing file: `<what>: <why>. Choose
        another <field>, or move the file away`."""
        for folder in folders:
            why = not_a_directory(folder)
            if why is not None:
                raise FieldError(
                    field, f"{what}: {why}. Choose another {field}, or move the file away"
                )

    def destination(
        self, run_id: str | None, *, run_dir: str | None = None
    ) -> tuple[str, str] | None:
        """`(where, why it is a problem)` for a tracker that writes to one place (`"JSON lines
        to /abs/metrics.jsonl"`); two trackers of a list with the same `where` are a
        configuration error. None: the tracker can be listed twice."""
        return None

    @classmethod
    def default_choice_name(cls) -> str | None:
        return "wandb"


@TrackerConfig.register_subclass("noop")
@dataclasses.dataclass(frozen=True)
class NoopConfig(TrackerConfig):
    """Discards everything."""

    def init(self, run_id, *, run_dir=None) -> Tracker:
        return NoopTracker()


def build_tracker(
    config: TrackerConfig | Sequence[TrackerConfig],
    run_id: str | None,
    *,
    run_dir: str | None = None,
    field: str = "trainer.tracker",
    added: Sequence[TrackerConfig] = (),
    composite: bool = False,
) -> Tracker:
    """One tracker for one config, a `CompositeTracker` for a list of them.

    Before any tracker starts, the list is checked (`field` is its YAML path, for the
    messages): two trackers writing to the same place (`TrackerConfig.destination`) and an
    output location that cannot be created for `run_id` (`TrackerConfig.check_output`) are a
    `SetupConfigError` naming `field[i]` (`field` for a single config). An `OSError` while a
    tracker starts (a directory it may not create) is a `TrackerInitError` naming the
    tracker's output field. `added` are trackers the caller adds to the user's (the
    Trainer's local JSON log): they run along, and messages about them say so. `composite`:
    a `CompositeTracker` also for one tracker (the Trainer's: a tracker that fails is dropped,
    see `CompositeTracker`).
    """
    configs = [config] if isinstance(config, TrackerConfig) else list(config)
    names = (
        [field]
        if isinstance(config, TrackerConfig)
        else [f"{field}[{i}]" for i in range(len(configs))]
    )
    configs += list(added)
    names += [f"the local JSON log lm adds to {field}"] * len(added)
    _check_tracker_list(configs, names, run_id, run_dir)
    trackers: list[Tracker] = []
    for c, name in zip(configs, names, strict=True):
        try:
            trackers.append(c.init(run_id, run_dir=run_dir))
        except Exception as e:
            for started in trackers:  # a W&B run already started must not be left open
                with contextlib.suppress(Exception):
                    started.finish()
            if isinstance(e, OSError):
                raise TrackerInitError(_output_error(c, name, e)) from e
            raise
    if len(trackers) == 1 and not composite:
        return trackers[0]
    return CompositeTracker(trackers, names=names)


def _check_tracker_list(
    configs: Sequence[TrackerConfig],
    names: Sequence[str],
    run_id: str | None,
    run_dir: str | None,
) -> None:
    seen: dict[str, str] = {}
    for c, name in zip(configs, names, strict=True):
        dest = c.destination(run_id, run_dir=run_dir)
        if dest is None:
            continue
        where, why = dest
        if where in seen:
            raise SetupConfigError(f"{seen[where]} and {name} both write {where}: {why}")
        seen[where] = name
    for c, name in zip(configs, names, strict=True):
        try:
            c.check_output(run_id, run_dir=run_dir)
        except FieldError as e:
            raise SetupConfigError(f"{name}.{e.field}: {e.message}") from None


def _output_error(config: TrackerConfig, name: str, error: OSError) -> str:
    kind = _type_name(config)
    if error.strerror and error.filename:
        what = f"{error.strerror}: {error.filename}"
    else:
        what = f"{type(error).__name__}: {error}"
    field = config.output_field
    if field is None or getattr(config, field, None) is None:
        where = f"{name} (type: {kind})" if field is None else f"{name}.{field} (the default)"
        return f"{where}: the {kind} tracker could not create its output ({what})"
    return (
        f"{name}.{field}: the {kind} tracker could not create its output under "
        f"{getattr(config, field)!r} ({what}); choose another {field} or fix its permissions"
    )


def _type_name(config: TrackerConfig) -> str:
    try:
        return type(config).get_choice_name(type(config))
    except (KeyError, ValueError, TypeError):
        return type(config).__name__


# --- the current tracker ---------------------------------------------------------------

_local = threading.local()


def _stack() -> list[Tracker]:
    if not hasattr(_local, "trackers"):
        _local.trackers = []
    return _local.trackers


def _push_tracker(t: Tracker) -> None:
    _stack().append(t)


def _pop_tracker(t: Tracker) -> None:
    stack = _stack()
    if stack and stack[-1] is t:
        stack.pop()
    elif t in stack:
        stack.remove(t)
    last = getattr(_local, "last_logged", None)
    if last is not None and last[0] is t:
        _local.last_logged = None


def current_tracker() -> Tracker:
    """The innermost tracker entered with `with tracker:`; raises if there is none."""
    stack = _stack()
    if not stack:
        raise RuntimeError(
            "No tracker is active: use `with tracker:` (the Trainer does this for you)."
        )
    return stack[-1]


def get_tracker(name: str) -> Tracker:
    """The active tracker registered as `name` (searching inside composites)."""
    t = current_tracker()
    if t.name == name:
        return t
    if isinstance(t, CompositeTracker) and (found := t.find(name)) is not None:
        return found
    raise KeyError(f"No active tracker named {name!r}")


# --- logging from anywhere, including inside jit -----------------------------------------

_capture = threading.local()


@contextlib.contextmanager
def capture_metrics() -> Iterator[dict[str, Any]]:
    """Collect `lm.tracker.log` calls made while tracing into a dict the step returns."""
    if not hasattr(_capture, "sinks"):
        _capture.sinks = []
    sink: dict[str, Any] = {}
    _capture.sinks.append(sink)
    try:
        yield sink
    finally:
        _capture.sinks.pop()


def _is_traced(metrics: Mapping[str, Any]) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(dict(metrics)))


def log(metrics: Mapping[str, Any], *, step: int | None = None, commit: bool | None = None) -> None:
    """Log to the current tracker, or, while tracing a step, into the step's outputs."""
    sinks = getattr(_capture, "sinks", None)
    if sinks:
        sinks[-1].update(metrics)
        return
    if _is_traced(metrics):
        raise RuntimeError(
            "lm.tracker.log got traced values outside a capture_metrics() block; inside a "
            "jitted function, return metrics instead (the Trainer's step does this for you)."
        )
    tracker = current_tracker()
    tracker.log(metrics, step=step, commit=commit)
    if step is not None:
        _remember_logged(tracker, metrics, step)


def _remember_logged(tracker: Tracker, metrics: Mapping[str, Any], step: int) -> None:
    last = getattr(_local, "last_logged", None)
    if last is None or last[0] is not tracker or last[1] != step:
        last = (tracker, step, {})
        _local.last_logged = last
    last[2].update(metrics)


def logged_metrics(step: int) -> Mapping[str, Any]:
    """What `lm.tracker.log` sent to the current tracker at `step`, merged over its calls (the
    trainer's throughput, for the progress line); empty when another step was logged last or
    no tracker is active. Only the latest step is kept."""
    last = getattr(_local, "last_logged", None)
    stack = _stack()
    if last is None or not stack or last[0] is not stack[-1] or last[1] != step:
        return {}
    return last[2]


def log_summary(metrics: Mapping[str, Any]) -> None:
    current_tracker().log_summary(metrics)


def log_hyperparameters(hparams: Mapping[str, Any]) -> None:
    current_tracker().log_hyperparameters(hparams)


def plain_value(value: Any) -> Any:
    """A JSON/YAML-friendly copy of `value`: dicts, lists, numbers, strings, bools, None.

    Dataclasses become dicts, 0-d arrays become numbers, other arrays lists, and anything
    else (paths, timedeltas, policies) its `str`.
    """
    value = to_python_scalar(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: plain_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, draccus.ChoiceRegistry):
            try:
                out = {"type": type(value).get_choice_name(type(value)), **out}
            except (KeyError, ValueError, TypeError):
                pass  # an unregistered subclass: its fields say enough
        return out
    return str(value)


def config_to_hparams(config: Any) -> dict[str, Any]:
    """Hyperparameters (a plain dict) for a config dataclass or mapping."""
    if isinstance(config, Mapping):
        return plain_value(config)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        try:
            encoded = draccus.encode(config)
        except Exception as e:  # a field type without a registered draccus encoder
            logger.debug("draccus could not encode %s (%s); walking its fields", type(config), e)
        else:
            if isinstance(encoded, Mapping):
                return plain_value(encoded)
        return plain_value(config)
    raise TypeError(
        f"log_configuration expects a dataclass or a mapping, got {type(config).__name__}"
    )


def metrics_to_host(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """`metrics` with jax arrays fetched to the host (0-d ones as Python numbers)."""
    return {k: to_python_scalar(v) if isinstance(v, jax.Array) else v for k, v in metrics.items()}


def to_python_scalar(value: Any) -> Any:
    """jax/numpy 0-d arrays -> Python numbers; other values unchanged."""
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        arr = np.asarray(jax.device_get(value))
        if arr.ndim == 0:
            return arr.item()
        return arr
    return value
