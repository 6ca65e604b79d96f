"""`python -m lm.launch.tpu`: build the image, get a Cloud TPU, run a command on every worker.

    python -m lm.launch.tpu [--config .lm.yaml] [--dry-run] [--tpu_type v5p-8] [--zone Z] \\
        [--capacity_type spot] [--retries N] [--keep | --detach] \\
        -- python -m lm.main.train_lm --config_path config/gpt2_small.yaml

The sequence: `gcloud auth configure-docker`, `docker build`, `docker push`, create the TPU
(`tpu-vm create`, or `queued-resources create` and poll until ACTIVE), ssh to all workers to
log in to the registry, pull and start the command in a detached container, then a second ssh
streams the output and waits for every container to exit (reattaching if the connection
drops). When the command fails and the TPU turns out to be preempted, the TPU is deleted,
recreated and the command rerun (a training run resumes from its last checkpoint), up to
`retries` times. At the end the TPU is deleted unless `keep`/`detach`. Every step goes
through one `Executor`; `--dry-run` swaps in a printer.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from lm.config import ConfigError
from lm.launch import commands
from lm.launch.config import DEFAULT_CONFIG_FILE, LaunchConfig, load_launch_config
from lm.launch.executor import (
    Command,
    Executor,
    LaunchError,
    PrintingExecutor,
    SubprocessExecutor,
    require_programs,
)

logger = logging.getLogger(__name__)


MAX_REATTACH = 5
"""Consecutive dropped SSH connections survived while waiting for the command."""


class Preempted(Exception):
    """The TPU was taken back (its state is in `state`); recreate it and rerun."""

    def __init__(self, state: str):
        self.state = state
        super().__init__(state)


def default_tpu_name(environ: Mapping[str, str]) -> str:
    """`lm-<user>`, with the user name made into a valid TPU name."""
    user = environ.get("USER") or environ.get("USERNAME") or getpass.getuser()
    cleaned = re.sub(r"[^a-z0-9-]+", "-", user.lower()).strip("-")[:40].strip("-")
    return f"lm-{cleaned}" if cleaned else "lm"


class UnsetSecretsError(ValueError):
    """Names listed under `secrets:` that have no value in the local environment."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        one = len(self.names) == 1
        super().__init__(
            f"secrets: {', '.join(self.names)} {'is' if one else 'are'} listed under secrets: "
            "in .lm.yaml but not set (or empty) in the local environment; export "
            f"{'it' if one else 'them'} (`export {self.names[0]}=...`) or remove "
            f"{'it' if one else 'them'} from secrets:"
        )


def plan_launch(
    config: LaunchConfig,
    command: Sequence[str],
    *,
    environ: Mapping[str, str],
    base_dir: str = "",
    now: Callable[[], float] = time.time,
    allow_unset_secrets: bool = False,
) -> commands.LaunchPlan:
    """Resolve the TPU name, image tag and secret values into a `LaunchPlan`.

    Args:
        allow_unset_secrets: plan anyway when a secret is not set locally, with an empty
            value shown as `<unset>` (what a dry run prints).

    Raises:
        LaunchError: no command.
        UnsetSecretsError: a secret named in `secrets:` is not set locally (and not allowed).
    """
    if not command:
        raise LaunchError(
            "no command to run; put it after `--`, e.g. `python -m lm.launch.tpu -- "
            "python -m lm.main.train_lm --config_path config/gpt2_small.yaml`"
        )
    missing = [name for name in config.secrets if not environ.get(name)]
    if missing and not allow_unset_secrets:
        raise UnsetSecretsError(missing)
    env = [*config.env.items(), *((name, environ.get(name, "")) for name in config.secrets)]
    tag = config.image_tag or time.strftime("%Y%m%d-%H%M%S", time.gmtime(now()))
    return commands.LaunchPlan(
        config=config,
        tpu_name=config.tpu_name or default_tpu_name(environ),
        image_tag=tag,
        env=tuple(env),
        command=tuple(command),
        base_dir=base_dir,
        unset_secrets=frozenset(missing),
    )


class TpuLauncher:
    """Runs one launch: build, create, run on every worker, retry on preemption, tear down."""

    def __init__(
        self,
        plan: commands.LaunchPlan,
        executor: Executor,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.plan = plan
        self.config = plan.config
        self.executor = executor
        self.sleep = sleep
        self._created = False

    def _check(self, command: Command, what: str) -> None:
        status = self.executor.run(command)
        if status != 0:
            raise LaunchError(f"{what} failed with exit status {status}: {command}")

    def state(self) -> str:
        """The TPU's (or queued resource's) state, e.g. `READY`, `PREEMPTED`, `ACTIVE`."""
        command = commands.describe_state(self.plan)
        status, out = self.executor.capture(command)
        if status != 0:
            raise LaunchError(
                f"could not read the state of {self.plan.tpu_name} (exit status {status}): "
                f"{command}"
            )
        return out.strip()

    def build_and_push(self) -> None:
        self._check(commands.configure_docker(self.plan), "configuring docker for the registry")
        self._check(commands.docker_build(self.plan), "docker build")
        self._check(commands.docker_push(self.plan), "docker push")

    def create(self) -> None:
        """Create the TPU; for a queued resource, wait until it is ACTIVE."""
        name = self.plan.tpu_name
        status = self.executor.run(commands.create(self.plan))
        if status != 0:
            raise LaunchError(
                f"creating {name} failed with exit status {status}. If a TPU or queued "
                f"resource named {name!r} already exists, delete it or pick another "
                "--tpu_name; if the zone has no capacity, try another zone or capacity_type"
            )
        self._created = True
        if self.plan.queued:
            self._wait_until_active()

    def _wait_until_active(self) -> None:
        last = None
        while True:
            state = self.state()
            if state == "ACTIVE":
                return
            if state in commands.QUEUED_PREEMPTED_STATES:
                raise Preempted(state)
            if state not in commands.QUEUED_WAITING_STATES:
                raise LaunchError(
                    f"queued resource {self.plan.tpu_name} is {state or 'in an unknown state'} "
                    "instead of ACTIVE; see `gcloud compute tpus queued-resources describe "
                    f"{self.plan.tpu_name} --zone={self.config.zone}`"
                )
            if state != last:
                logger.info("queued resource %s is %s; waiting", self.plan.tpu_name, state)
                last = state
            self.sleep(self.config.poll_interval_s)

    def delete(self) -> None:
        self._check(commands.delete(self.plan), f"deleting {self.plan.tpu_name}")
        self._created = False

    def _raise_if_preempted(self) -> str:
        """Read the state after a failure; raise `Preempted` if the TPU was taken back."""
        state = self.state()
        preempted = (
            commands.QUEUED_PREEMPTED_STATES if self.plan.queued else commands.TPU_PREEMPTED_STATES
        )
        if state in preempted:
            raise Preempted(state)
        return state

    def start(self) -> None:
        """Start the container on every worker; raise `Preempted` if the TPU went away."""
        status = self.executor.run(commands.start_on_workers(self.plan))
        if status != 0:
            state = self._raise_if_preempted()
            raise LaunchError(
                f"starting the container on {self.plan.tpu_name} failed with exit status "
                f"{status} (TPU state {state}); see the output above"
            )

    def wait(self) -> int:
        """Stream the output until every container exits; return the (worst) exit status.

        A dropped SSH connection (exit 255 while the TPU is healthy) reattaches, up to
        `MAX_REATTACH` times in a row; the containers keep running meanwhile.
        """
        reattaches = 0
        while True:
            command = commands.wait_on_workers(self.plan, reattach=reattaches > 0)
            status = self.executor.run(command)
            if status == 0:
                return 0
            state = self._raise_if_preempted()
            lost = status == commands.SSH_CONNECTION_FAILED and state in commands.HEALTHY_STATES
            if lost and reattaches < MAX_REATTACH:
                reattaches += 1
                logger.warning(
                    "lost the connection to %s (state %s); reattaching (%d of %d)",
                    self.plan.tpu_name,
                    state,
                    reattaches,
                    MAX_REATTACH,
                )
                self.sleep(self.config.poll_interval_s)
                continue
            logger.error(
                "the command failed with exit status %d on %s (state %s)",
                status,
                self.plan.tpu_name,
                state,
            )
            return status

    def launch(self) -> int:
        """The whole sequence; returns the command's exit status."""
        cfg = self.config
        if cfg.build_image:
            self.build_and_push()
        preemptions = 0
        try:
            while True:
                try:
                    if not self._created:
                        self.create()
                    self.start()
                    if cfg.detach:
                        logger.info(
                            "started on %s; follow worker 0 with: %s",
                            self.plan.tpu_name,
                            commands.follow_logs(self.plan),
                        )
                        return 0
                    return self.wait()
                except Preempted as p:
                    if preemptions >= cfg.retries:
                        raise LaunchError(
                            f"{self.plan.tpu_name} was preempted ({p.state}) and all "
                            f"{cfg.retries} retries are used up; raise --retries to keep going"
                        ) from None
                    preemptions += 1
                    logger.warning(
                        "%s was preempted (%s); recreating it and rerunning (retry %d of %d)",
                        self.plan.tpu_name,
                        p.state,
                        preemptions,
                        cfg.retries,
                    )
                    self.delete()
        finally:
            self._teardown()

    def _teardown(self) -> None:
        if not self._created:
            return
        if self.config.keep or self.config.detach:
            logger.info(
                "leaving %s running; delete it with: %s",
                self.plan.tpu_name,
                commands.delete(self.plan),
            )
            return
        command = commands.delete(self.plan)
        status = self.executor.run(command)
        if status != 0:
            logger.error(
                "deleting %s failed (exit status %d); it is still running and billed. "
                "Delete it by hand: %s",
                self.plan.tpu_name,
                status,
                command,
            )
        else:
            self._created = False


# Command-line flag -> LaunchConfig field. Each flag is accepted with `_` or `-`.
_VALUE_FLAGS = {
    "project": "project",
    "zone": "zone",
    "tpu_name": "tpu_name",
    "tpu_type": "tpu_type",
    "capacity_type": "capacity_type",
    "runtime_version": "runtime_version",
    "node_count": "node_count",
    "docker_repository": "docker_repository",
    "image_tag": "image_tag",
    "retries": "retries",
}
_SWITCHES = {
    "queued": ("use_queued_resources", True, "request the TPU through a queued resource"),
    "keep": ("keep", True, "leave the TPU running when the command ends"),
    "detach": ("detach", True, "start the command and return without waiting (implies --keep)"),
    "no_build": ("build_image", False, "skip docker build/push; run the pushed --image_tag"),
}


def _flag_names() -> dict[str, str]:
    """LaunchConfig field -> the flag that sets it, for error messages."""
    names = {field: f"--{flag}" for flag, field in _VALUE_FLAGS.items()}
    names.update({field: f"--{flag}" for flag, (field, _, _) in _SWITCHES.items()})
    return names


def _spellings(name: str) -> list[str]:
    dashed = name.replace("_", "-")
    return [f"--{name}"] if dashed == name else [f"--{name}", f"--{dashed}"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lm.launch.tpu",
        description="Run a command on every worker of a Cloud TPU, in this project's image. "
        "Settings come from .lm.yaml; flags override them. The command follows `--`.",
        usage="%(prog)s [options] -- COMMAND [ARGS...]",
    )
    parser.add_argument(
        "--config",
        default=None,
        help=f"launcher settings (default: {DEFAULT_CONFIG_FILE} in the current directory)",
    )
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="print every command, one per line, and run nothing",
    )
    for flag, field in _VALUE_FLAGS.items():
        parser.add_argument(*_spellings(flag), dest=field, default=None, metavar="VALUE")
    parser.add_argument(
        "--env",
        dest="env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="export NAME=VALUE on every worker (repeatable; adds to .lm.yaml env:)",
    )
    for flag, (field, value, text) in _SWITCHES.items():
        parser.add_argument(
            *_spellings(flag), dest=field, action="store_const", const=value, help=text
        )
    return parser


def _overrides(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    fields = {f.name for f in dataclasses.fields(LaunchConfig)}
    overrides = {k: v for k, v in vars(ns).items() if k in fields and k != "env" and v is not None}
    if ns.env:
        env = {}
        for item in ns.env:
            name, sep, value = item.partition("=")
            if not sep or not name:
                parser.error(f"--env expects NAME=VALUE, got {item!r}")
            env[name] = value
        overrides["env"] = env
    return overrides


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    executor: Executor | None = None,
    which: Callable[[str], str | None] = shutil.which,
    stdout: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
) -> int:
    """The command line; returns the exit status. Tests inject `executor`, `environ`, `which`.

    Exit status: the command's own status; 2 for a bad configuration or usage; 1 when a
    launch step fails.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    flags, command = (
        (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (args, [])
    )
    parser = build_parser()
    ns = parser.parse_args(flags)
    if not command:
        parser.print_usage(sys.stderr)
        print(
            "error: no command to run; put it after `--`, e.g. `python -m lm.launch.tpu -- "
            "python -m lm.main.train_lm --config_path config/gpt2_small.yaml`",
            file=sys.stderr,
        )
        return 2
    overrides = _overrides(ns, parser)
    config_path = ns.config if ns.config is not None else DEFAULT_CONFIG_FILE
    try:
        config = load_launch_config(
            config_path,
            overrides,
            required=ns.config is not None,
            merge_env=True,
            flags=_flag_names(),
            check_files=True,
        )
        plan = plan_launch(
            config,
            command,
            environ=environ,
            base_dir=os.path.dirname(config_path),
            now=now,
            allow_unset_secrets=ns.dry_run,
        )
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except UnsetSecretsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if plan.unset_secrets:
        names = ", ".join(n for n in config.secrets if n in plan.unset_secrets)
        print(
            f"note: secrets {names} not set in the local environment are shown as "
            f"{commands.UNSET}; a real launch would stop with exit status 2 until they are "
            "exported",
            file=sys.stderr,
        )
    try:
        if executor is None:
            if ns.dry_run:
                executor = PrintingExecutor(stdout)
            else:
                require_programs(["gcloud", "docker"] if config.build_image else ["gcloud"], which)
                executor = SubprocessExecutor()
        return TpuLauncher(plan, executor, sleep=sleep).launch()
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(main())
