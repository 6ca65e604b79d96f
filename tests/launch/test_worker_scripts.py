"""The shell scripts run on the workers, executed by bash against fake `sudo`/`docker`/`gcloud`."""

import os
import shlex
import stat
import subprocess

import pytest

from lm.launch import commands
from lm.launch.config import LaunchConfig
from lm.launch.tpu import plan_launch

FAKE_DOCKER = """#!/bin/bash
echo "docker $*" >> "$FAKE_LOG"
case "$1" in
  login) read -r password; echo "password=$password" >> "$FAKE_LOG" ;;
  logs) echo "step 1 loss 2.0"; echo "step 2 loss 1.5" ;;
  wait) if [ -n "$FAKE_MISSING" ]; then echo "No such container" >&2; exit 1; fi
        echo "$FAKE_STATUS" ;;
  rm) exit 1 ;;  # no previous container: must not stop the script
esac
"""


@pytest.fixture
def fake_bin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sudo": '#!/bin/bash\nexec "$@"\n',
        "gcloud": '#!/bin/bash\necho "gcloud $*" >> "$FAKE_LOG"\necho ya29.token\n',
        "docker": FAKE_DOCKER,
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def run_script(script, fake_bin, tmp_path, **env):
    log = tmp_path / "calls.log"
    full_env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "FAKE_LOG": str(log)}
    full_env.update(env)
    done = subprocess.run(["bash", "-c", script], env=full_env, capture_output=True, text=True)
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


def plan():
    config = LaunchConfig(
        project="p-1",
        zone="us-central2-b",
        tpu_type="v4-8",
        docker_repository="us-docker.pkg.dev/p-1/lm",
        image_tag="t",
        env={"MSG": 'it\'s a "quoted" $VALUE'},
        secrets=["WANDB_API_KEY"],
    )
    return plan_launch(
        config, ["python", "-c", "print('hi there')"], environ={"USER": "u", "WANDB_API_KEY": "k1"}
    )


def test_start_script_logs_in_pulls_replaces_and_runs_detached(fake_bin, tmp_path):
    done, calls = run_script(commands.start_script(plan(), reveal=True), fake_bin, tmp_path)
    assert done.returncode == 0, done.stderr
    image = "us-docker.pkg.dev/p-1/lm/lm:t"
    run = shlex.join(
        ["docker", "run", "--detach", "--name=lm", "--net=host", "--privileged",
         "--volume=/tmp:/tmp", "-e", "MSG=it's a \"quoted\" $VALUE", "-e", "WANDB_API_KEY=k1",
         image, "python", "-c", "print('hi there')"]
    )  # fmt: skip
    # `gcloud ... | docker login ...` is one pipeline: the two start together, so either may
    # log its command line first; docker reads the token only after gcloud printed it.
    login = "docker login --username=oauth2accesstoken --password-stdin https://us-docker.pkg.dev"
    assert sorted(calls[:2]) == sorted(["gcloud auth print-access-token", login]), calls
    assert calls[2:] == [
        "password=ya29.token",
        f"docker pull {image}",
        "docker rm --force lm",
        # The fake logs "$*", so compare word by word with the argv docker received.
        " ".join(shlex.split(run)),
    ]


def test_start_script_stops_at_the_first_failure(fake_bin, tmp_path):
    script = commands.start_script(plan(), reveal=True)
    (fake_bin / "docker").write_text(
        FAKE_DOCKER.replace('case "$1" in', 'case "$1" in\n  pull) exit 7 ;;')
    )
    done, calls = run_script(script, fake_bin, tmp_path)
    assert done.returncode == 7
    assert calls[-1].startswith("docker pull")

    # No access token: the login pipeline fails (pipefail) and nothing is pulled.
    (fake_bin / "gcloud").write_text("#!/bin/bash\nexit 1\n")
    (tmp_path / "calls.log").unlink()
    done, calls = run_script(script, fake_bin, tmp_path)
    assert done.returncode != 0
    assert not any(c.startswith("docker pull") for c in calls)


@pytest.mark.parametrize("status", [0, 3])
def test_wait_script_streams_logs_and_exits_with_the_container_status(fake_bin, tmp_path, status):
    done, calls = run_script(commands.wait_script(), fake_bin, tmp_path, FAKE_STATUS=str(status))
    assert done.returncode == status
    assert done.stdout.splitlines() == ["step 1 loss 2.0", "step 2 loss 1.5"]
    assert sorted(calls) == ["docker logs --follow --tail=all lm", "docker wait lm"]


def test_wait_script_reattach_and_missing_container(fake_bin, tmp_path):
    done, calls = run_script(
        commands.wait_script(reattach=True), fake_bin, tmp_path, FAKE_STATUS="0", FAKE_MISSING="1"
    )
    assert done.returncode == 254
    assert "docker logs --follow --tail=100 lm" in calls
