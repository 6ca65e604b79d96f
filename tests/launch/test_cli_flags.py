"""Every gcloud/docker command the launcher builds is accepted by the real CLIs' parsers.

Run against the installed Google Cloud CLI with an empty config directory: a command whose
flags parse fails only for want of credentials ("You do not currently have an active
account"), while a misspelt flag fails earlier with exit status 2 ("unrecognized arguments").
Docker is pointed at a socket that does not exist: good flags fail to connect (status 1), bad
ones fail to parse (status 125). Nothing reaches the network.
"""

import shutil
import subprocess

import pytest

from lm.launch import commands
from lm.launch.config import LaunchConfig
from lm.launch.tpu import plan_launch

BASE = dict(
    project="my-project-123",
    zone="us-central2-b",
    tpu_type="v4-16",
    docker_repository="us-central2-docker.pkg.dev/my-project-123/lm",
    image_tag="t1",
    network="net",
    subnetwork="subnet",
    service_account="sa@my-project-123.iam.gserviceaccount.com",
    env={"JAX_COMPILATION_CACHE_DIR": "gs://b/c"},
)
PLANS = {
    "direct-spot": LaunchConfig(**BASE, capacity_type="spot"),
    "direct-preemptible": LaunchConfig(**BASE, capacity_type="preemptible"),
    "queued-reserved": LaunchConfig(**BASE, use_queued_resources=True, capacity_type="reserved"),
    "queued-multislice": LaunchConfig(
        **BASE, use_queued_resources=True, capacity_type="spot", node_count=2
    ),
}
GCLOUD_STEPS = [
    commands.create,
    commands.describe_state,
    commands.start_on_workers,
    commands.wait_on_workers,
    commands.follow_logs,
    commands.delete,
]


def _run(argv, env):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


# Commands with many flags, checked by default; the simple rest only with `-m slow`.
MAIN_STEPS = {commands.create, commands.start_on_workers}


def _distinct_gcloud_commands(main: bool) -> dict:
    """Each distinct gcloud argv: every step of one direct and one queued plan, plus the
    create command of every capacity type; `main` picks MAIN_STEPS or the others."""
    seen = {}
    for name, config in PLANS.items():
        plan = plan_launch(config, ["echo", "hi"], environ={"USER": "t"})
        steps = GCLOUD_STEPS if name in ("direct-spot", "queued-multislice") else [commands.create]
        for build in steps:
            if (build in MAIN_STEPS) == main:
                seen.setdefault(build(plan).argv, f"{name}:{build.__name__}")
    return seen


@pytest.fixture
def gcloud_env(tmp_path, subprocess_env):
    if shutil.which("gcloud") is None:
        pytest.skip("needs the Google Cloud CLI")
    env = {
        **subprocess_env,
        "HOME": str(tmp_path),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
    }
    env.pop("CLOUDSDK_CORE_ACCOUNT", None)
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    return env


def _check_gcloud_parses(distinct: dict, env: dict) -> None:
    for argv, label in distinct.items():
        done = _run(argv, env)
        assert "unrecognized arguments" not in done.stderr, (label, argv, done.stderr)
        assert done.returncode == 1, (label, argv, done.returncode, done.stderr)
        assert "do not currently have an active account" in done.stderr, (label, done.stderr)


def test_gcloud_accepts_create_and_start_commands(gcloud_env):
    distinct = _distinct_gcloud_commands(main=True)
    assert len(distinct) == 6  # 4 capacity/queued variants of create, 2 of start
    _check_gcloud_parses(distinct, gcloud_env)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_gcloud_accepts_the_other_commands(gcloud_env, tmp_path):
    distinct = _distinct_gcloud_commands(main=False)
    assert len(distinct) == 8  # describe, wait, logs, delete for direct and queued
    _check_gcloud_parses(distinct, gcloud_env)
    # configure-docker needs no account; it writes $HOME/.docker/config.json.
    plan = plan_launch(PLANS["direct-spot"], ["true"], environ={"USER": "t"})
    done = _run(commands.configure_docker(plan).argv, gcloud_env)
    assert done.returncode == 0, done.stderr
    assert "us-central2-docker.pkg.dev" in (tmp_path / ".docker" / "config.json").read_text()


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI")
def test_docker_accepts_build_and_push(tmp_path, repo_root, subprocess_env):
    config = LaunchConfig(**BASE, docker_build_args={"JAX_VARIANT": "tpu"})
    plan = plan_launch(config, ["true"], environ={"USER": "t"}, base_dir=str(repo_root))
    env = {
        **subprocess_env,
        "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock",
        "DOCKER_CONFIG": str(tmp_path / "docker"),
    }
    for command in (commands.docker_build(plan), commands.docker_push(plan)):
        done = _run(command.argv, env)
        assert done.returncode == 1, (command.argv, done.returncode, done.stderr)
        assert "Cannot connect to the Docker daemon" in done.stderr, done.stderr
    bad = _run(["docker", "build", "--no-such-flag", "."], env)
    assert bad.returncode == 125 and "unknown flag" in bad.stderr
