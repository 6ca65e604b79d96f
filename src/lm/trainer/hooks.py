"""Hooks: how the training loop grows without subclassing.

Four ways to add one (TRN-07), all with `every=N` (run when `step % N == 0`):

    trainer.add_hook(fn, every=10)             # fn(info) or fn(info, force=...)
    trainer.add_hook(MyCallback(), every=10)   # Callback.on_step(info, force)
    trainer.add_hook(MyJitCallback())          # inside_step in jit, then on_step outside
    @trainer.add_hook(every=10)                # decorator
    def log_something(info): ...

`run_hooks(info, force=True)` runs every hook regardless of `every`, and passes `force` on
(the final checkpoint is a forced save). Before the first step, `Callback.on_train_start`
runs once for every host hook.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from jaxtyping import PyTree

from lm.config.errors import is_count
from lm.trainer.state import StepInfo, TrainerState

logger = logging.getLogger(__name__)

S = TypeVar("S", bound=TrainerState)
CBInfo = TypeVar("CBInfo")


class Callback(abc.ABC, Generic[S]):
    """A host-side hook. Override `on_step`, and `on_train_start` to act before the first
    step (e.g. start a profile that includes it)."""

    redo_after_resume: bool = False
    """Run again, when due, for the step a resumed run restored. The checkpoint hook runs
    first at a step, so a run can stop after the step's checkpoint and before such a hook
    finished (an evaluation): its result would be lost. Without this, a hook runs only at
    steps the resumed run takes. The redo is skipped when the run's JSON log already holds
    every such hook's `logged_keys()` at that step (the run stopped later)."""

    @abc.abstractmethod
    def on_step(self, info: StepInfo[S], force: bool = False) -> None: ...

    def on_train_start(self, step: int) -> None:  # noqa: B027 (optional, a no-op by default)
        """Called once by `training_steps` before it runs step `step` (0, or the step a
        resumed run restarts at), whatever the hook's `every`."""

    def logged_keys(self) -> tuple[str, ...]:
        """For a `redo_after_resume` hook: the metric keys it logs at a step, whose presence
        in the run's JSON log shows its work there was done. Empty: always redo."""
        return ()


@dataclasses.dataclass(frozen=True)
class InsideStepInfo:
    """What a `JitCallback` sees inside the jitted step (traced values).

    Attributes:
        grads: gradients of the trainable parameters (param dtype).
        updates: the optimizer's updates (applied with `eqx.apply_updates`).
    """

    grads: PyTree
    updates: PyTree


class JitCallback(abc.ABC, Generic[S, CBInfo]):
    """A hook with a traced half and a host half.

    `inside_step(state, inside_info)` runs inside the jitted step on the *new* state and returns
    a pytree of arrays; `on_step(info, cb_info)` gets that pytree on the host. The trainer compiles
    a second version of the step that runs jit callbacks and uses it only on steps where one fires.
    """

    @abc.abstractmethod
    def inside_step(self, state: S, inside_info: InsideStepInfo) -> CBInfo: ...

    @abc.abstractmethod
    def on_step(self, step_info: StepInfo[S], cb_info: CBInfo) -> None: ...


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        try:
            params = inspect.signature(fn).parameters
            self._takes_force = "force" in params or any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
            )
        except (TypeError, ValueError):
            self._takes_force = False

    def on_step(self, info, force=False):
        if self._takes_force:
            self.fn(info, force=force)
        else:
            self.fn(info)

    def __repr__(self):
        return f"hook({getattr(self.fn, '__qualname__', self.fn)!r})"


@dataclasses.dataclass
class _Registered:
    callback: Any
    every: int

    def due(self, step: int, force: bool) -> bool:
        return force or step % self.every == 0


class TrainerHooks:
    """The ordered list of host hooks and jit hooks."""

    def __init__(self):
        self.hooks: list[_Registered] = []
        self.jit_hooks: list[_Registered] = []

    def add_hook(self, fn=None, *, every: int = 1):
        if not is_count(every):
            raise ValueError(f"add_hook(every=...) must be a positive integer, got {every!r}")
        if fn is None:

            def decorator(f):
                self.add_hook(f, every=every)
                return f

            return decorator
        if isinstance(fn, JitCallback):
            self.jit_hooks.append(_Registered(fn, every))
        elif isinstance(fn, Callback):
            self.hooks.append(_Registered(fn, every))
        elif callable(getattr(fn, "on_step", None)):
            self.hooks.append(_Registered(_FunctionCallback(fn.on_step), every))
        elif callable(fn):
            self.hooks.append(_Registered(_FunctionCallback(fn), every))
        else:
            raise ValueError(
                "add_hook expects a callable, a Callback (or an object with an on_step method) or "
                f"a JitCallback, got {type(fn).__name__}: {fn!r}"
            )
        return fn

    def run_hooks(self, info: StepInfo, force: bool = False) -> None:
        for hook in self.hooks:
            if hook.due(info.step, force):
                hook.callback.on_step(info, force=force)

    def run_final_hooks(self, info: StepInfo, logged: Callable[[set[str], int], bool]) -> bool:
        """The final hooks (`force=True`) of a run that had already finished: the
        `redo_after_resume` ones (evaluation) are left out when `logged` says their work at
        `info.step` is in the run's log (they ran when the run finished). Returns whether
        they were left out."""
        redo = [h for h in self.hooks if getattr(h.callback, "redo_after_resume", False)]
        skip = bool(redo) and _all_logged(redo, info.step, logged)
        for hook in self.hooks:
            if not (skip and hook in redo):
                hook.callback.on_step(info, force=True)
        return skip

    def run_redo_after_resume(self, info: StepInfo, logged: Callable[[set[str], int], bool]) -> str:
        """Run the `redo_after_resume` hooks due at `info.step` (the restored step), unless
        `logged(keys, step)` (whether the run's JSON log holds all of `keys` at `step`; the
        same answer on every process) says that all of them finished there before the run
        stopped. They run all or none: an evaluation over tags combines the per-set
        evaluations run at the same step. Returns "ran", "done before" or "none due"."""
        due = [
            h
            for h in self.hooks
            if getattr(h.callback, "redo_after_resume", False) and h.due(info.step, False)
        ]
        if not due:
            return "none due"
        if _all_logged(due, info.step, logged):
            return "done before"
        for hook in due:
            hook.callback.on_step(info, force=False)
        return "ran"

    def run_train_start(self, step: int) -> None:
        for hook in self.hooks:
            hook.callback.on_train_start(step)

    def jit_hooks_due(self, step: int, force: bool = False) -> list[_Registered]:
        return [h for h in self.jit_hooks if h.due(step, force)]

    def run_jit_hooks_outside_step(self, info: StepInfo, cb_infos: list[Any]) -> None:
        for hook, cb_info in zip(self.jit_hooks_due(info.step), cb_infos, strict=True):
            hook.callback.on_step(info, cb_info)


def _all_logged(
    hooks: list[_Registered], step: int, logged: Callable[[set[str], int], bool]
) -> bool:
    """Whether every one of `hooks` names the metrics that show it finished
    (`logged_keys()`) and `logged` finds all of them at `step`."""
    if not all(h.callback.logged_keys() for h in hooks):
        return False
    return logged({key for h in hooks for key in h.callback.logged_keys()}, step)
