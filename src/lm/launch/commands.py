"""The `gcloud` and `docker` commands of a TPU launch, built as argv lists from a `LaunchPlan`.

Pure functions: nothing here runs anything. Flag spellings follow the current (GA) gcloud
reference: `gcloud compute tpus tpu-vm ...` for a directly created TPU and
`gcloud compute tpus queued-resources ...` for queued resources (multislice included).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable

from lm.launch.config import LaunchConfig
from lm.launch.executor import MASK, Command

UNSET = "<unset>"
"""Shown in place of a secret's value when it is not set locally (dry run only)."""

CONTAINER_NAME = "lm"
"""Name of the container on every worker (`sudo docker logs -f lm` follows it)."""

# TPU VM states after which the VM must be deleted and recreated.
TPU_PREEMPTED_STATES = frozenset({"PREEMPTED", "TERMINATED"})
# Queued-resource states reached when the service takes the TPUs back.
QUEUED_PREEMPTED_STATES = frozenset({"SUSPENDING", "SUSPENDED"})
HEALTHY_STATES = frozenset({"READY", "ACTIVE"})
SSH_CONNECTION_FAILED = 255
"""Exit status of `ssh` when the connection fails or drops."""
QUEUED_WAITING_STATES = frozenset(
    {"CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "STATE_UNSPECIFIED"}
)


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """Everything the commands are built from: the config plus the values resolved at launch.

    Attributes:
        config: the `.lm.yaml` settings with command-line overrides applied.
        tpu_name: the TPU VM / queued resource name.
        image_tag: the tag built, pushed and run.
        env: (name, value) pairs exported in the container, `env:` then `secrets:`.
        command: the command run in the container on every worker.
        base_dir: directory the Dockerfile and build context paths are relative to.
        unset_secrets: names under `secrets:` with no local value (a dry run only); their
            value in `env` is empty and their printed value `UNSET`.
    """

    config: LaunchConfig
    tpu_name: str
    image_tag: str
    env: tuple[tuple[str, str], ...]
    command: tuple[str, ...]
    base_dir: str = ""
    unset_secrets: frozenset[str] = frozenset()

    @property
    def image(self) -> str:
        return self.config.image(self.image_tag)

    @property
    def queued(self) -> bool:
        return self.config.use_queued_resources

    def path(self, relative: str) -> str:
        return os.path.normpath(os.path.join(self.base_dir, relative))


def _masked(build: Callable[[bool], list[str]], expected_output: str = "") -> Command:
    """A command whose argv differs between the real run (`reveal`) and its printed form."""
    return Command(tuple(build(True)), tuple(build(False)), expected_output)


def _where(plan: LaunchPlan) -> list[str]:
    return [f"--project={plan.config.project}", f"--zone={plan.config.zone}"]


def _tpus(plan: LaunchPlan) -> list[str]:
    kind = "queued-resources" if plan.queued else "tpu-vm"
    return ["gcloud", "compute", "tpus", kind]


def configure_docker(plan: LaunchPlan) -> Command:
    """Let the local docker push to the Artifact Registry host (idempotent)."""
    return Command.plain("gcloud", "auth", "configure-docker", plan.config.registry_host, "--quiet")


def docker_build(plan: LaunchPlan) -> Command:
    """Build the image for the TPU hosts (linux/amd64, whatever the local machine is)."""
    argv = [
        "docker",
        "build",
        "--platform=linux/amd64",
        f"--file={plan.path(plan.config.dockerfile)}",
        f"--tag={plan.image}",
    ]
    argv += [f"--build-arg={k}={v}" for k, v in plan.config.docker_build_args.items()]
    argv.append(plan.path(plan.config.docker_build_context))
    return Command.plain(*argv)


def docker_push(plan: LaunchPlan) -> Command:
    return Command.plain("docker", "push", plan.image)


def _capacity_flag(plan: LaunchPlan) -> list[str]:
    return {
        "on-demand": [],
        "preemptible": ["--preemptible"],
        "spot": ["--spot"],
        "reserved": ["--reserved"],
    }[plan.config.capacity_type]


def _network_flags(plan: LaunchPlan) -> list[str]:
    cfg = plan.config
    flags = []
    if cfg.network is not None:
        flags.append(f"--network={cfg.network}")
    if cfg.subnetwork is not None:
        flags.append(f"--subnetwork={cfg.subnetwork}")
    if cfg.service_account is not None:
        flags.append(f"--service-account={cfg.service_account}")
    return flags


def create(plan: LaunchPlan) -> Command:
    """`tpu-vm create` (blocks until READY) or `queued-resources create` (returns once queued)."""
    cfg = plan.config
    argv = [*_tpus(plan), "create", plan.tpu_name, *_where(plan)]
    argv.append(f"--accelerator-type={cfg.tpu_type}")
    if plan.queued:
        argv.append(f"--runtime-version={cfg.resolved_runtime_version}")
        if cfg.node_count > 1:
            argv += [f"--node-count={cfg.node_count}", f"--node-prefix={plan.tpu_name}"]
        else:
            argv.append(f"--node-id={plan.tpu_name}")
    else:
        argv.append(f"--version={cfg.resolved_runtime_version}")
    argv += _capacity_flag(plan)
    argv += _network_flags(plan)
    return Command.plain(*argv)


def describe_state(plan: LaunchPlan) -> Command:
    """Print the TPU's state (`READY`, `PREEMPTED`, ...) or the queued resource's (`ACTIVE`, ...)."""
    field = "state.state" if plan.queued else "state"
    healthy = "ACTIVE" if plan.queued else "READY"
    return Command.plain(
        *_tpus(plan),
        "describe",
        plan.tpu_name,
        *_where(plan),
        f"--format=value({field})",
        expected_output=healthy + "\n",
    )


def delete(plan: LaunchPlan) -> Command:
    """Delete the TPU (a queued resource with `--force`, which deletes its TPUs first)."""
    argv = [*_tpus(plan), "delete", plan.tpu_name, *_where(plan)]
    if plan.queued:
        argv.append("--force")
    argv.append("--quiet")
    return Command.plain(*argv)


def start_script(plan: LaunchPlan, *, reveal: bool) -> str:
    """The shell script that starts the command on a worker: registry login, pull, replace
    the container, `docker run --detach`.

    The container is detached so that a dropped SSH connection does not stop the run; it is
    kept after it exits (no `--rm`) so that `docker wait` and `docker logs` still see it.
    `reveal=False` puts `MASK` in place of secret values (the printed form).
    """
    cfg = plan.config
    q = shlex.quote
    run = ["sudo", "docker", "run", "--detach", f"--name={CONTAINER_NAME}", "--net=host"]
    run += ["--privileged", "--volume=/tmp:/tmp"]
    for name, value in plan.env:
        shown = value if reveal or not cfg.is_secret(name) else MASK
        if name in plan.unset_secrets:
            shown = UNSET
        run += ["-e", f"{name}={shown}"]
    run += cfg.docker_run_flags
    run.append(plan.image)
    run += plan.command
    steps = [
        "set -eo pipefail",
        "gcloud auth print-access-token | sudo docker login --username=oauth2accesstoken "
        f"--password-stdin {q('https://' + cfg.registry_host)}",
        f"sudo docker pull {q(plan.image)}",
        f"sudo docker rm --force {CONTAINER_NAME} >/dev/null 2>&1 || true",
        shlex.join(run),
    ]
    return "; ".join(steps)


def wait_script(*, reattach: bool = False) -> str:
    """Stream the container's output until it exits, then exit with its status.

    A first attach shows the whole log; a reattach (after a dropped connection) only its
    last 100 lines. A missing container (the VM was recreated under us) exits 254.
    """
    tail = "100" if reattach else "all"
    return (
        f"sudo docker logs --follow --tail={tail} {CONTAINER_NAME} 2>&1 & "
        f"status=$(sudo docker wait {CONTAINER_NAME}) || status=254; wait; exit $status"
    )


def _ssh_all(plan: LaunchPlan, script: str) -> list[str]:
    argv = [*_tpus(plan), "ssh", plan.tpu_name, *_where(plan), "--worker=all"]
    if plan.queued:
        argv.append("--node=all")
    argv.append(f"--command={script}")
    return argv


def start_on_workers(plan: LaunchPlan) -> Command:
    """SSH to every worker (of every slice) and run `start_script` there."""
    return _masked(lambda reveal: _ssh_all(plan, start_script(plan, reveal=reveal)))


def wait_on_workers(plan: LaunchPlan, *, reattach: bool = False) -> Command:
    """SSH to every worker, stream the output and exit nonzero if any container failed."""
    return Command.plain(*_ssh_all(plan, wait_script(reattach=reattach)))


def follow_logs(plan: LaunchPlan) -> Command:
    """Stream worker 0's container output (printed as a hint after a detached launch)."""
    argv = [*_tpus(plan), "ssh", plan.tpu_name, *_where(plan), "--worker=0"]
    if plan.queued:
        argv.append("--node=0")
    argv.append(f"--command=sudo docker logs --follow {CONTAINER_NAME}")
    return Command.plain(*argv)
