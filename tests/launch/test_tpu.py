"""The launcher end to end through `main(...)`: exact commands, dry run, preemption, failures."""

import io
import logging
import shlex

import pytest
from launch_fakes import RecordingExecutor

from lm.launch.tpu import default_tpu_name, main

TRAIN = ["python", "-m", "lm.main.train_lm", "--config_path", "config/gpt2_small.yaml"]
ENV = {"USER": "alice"}

ON_DEMAND = """\
project: my-project
zone: us-central2-b
tpu_type: v4-8
docker_repository: us-central2-docker.pkg.dev/my-project/lm-images
image_tag: v1
service_account: trainer@my-project.iam.gserviceaccount.com
"""

QUEUED_SPOT_MULTISLICE = """\
project: my-project
zone: us-east5-a
tpu_type: v5p-16
capacity_type: spot
use_queued_resources: true
node_count: 2
tpu_name: big-run
docker_repository: us-east5-docker.pkg.dev/my-project/lm
image_name: trainer
image_tag: "2024"
network: tpu-net
subnetwork: tpu-subnet
poll_interval_s: 60
env:
  JAX_COMPILATION_CACHE_DIR: gs://my-bucket/jax-cache
"""

WITH_SECRETS = """\
project: my-project
zone: europe-west4-a
tpu_type: v5litepod-16
capacity_type: preemptible
tpu_name: demo
docker_repository: europe-west4-docker.pkg.dev/my-project/lm
image_tag: dev
dockerfile: docker/Dockerfile
docker_build_args:
  JAX_VARIANT: tpu
docker_run_flags: ["-v", "/mnt/data:/data"]
env:
  JAX_COMPILATION_CACHE_DIR: gs://cache/jax
  HF_TOKEN: hf_written_in_file
secrets: [WANDB_API_KEY]
"""


def write(tmp_path, text):
    """A project: `.lm.yaml` holding `text`, beside the default `docker/Dockerfile`."""
    (tmp_path / "docker").mkdir(exist_ok=True)
    (tmp_path / "docker" / "Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / ".lm.yaml"
    path.write_text(text)
    return str(path)


def script(*lines):
    return "; ".join(lines)


WAIT = (
    "sudo docker logs --follow --tail=all lm 2>&1 & "
    "status=$(sudo docker wait lm) || status=254; wait; exit $status"
)


def test_on_demand_direct_create_exact_commands(tmp_path):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor()
    assert main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex) == 0
    image = "us-central2-docker.pkg.dev/my-project/lm-images/lm:v1"
    where = ["--project=my-project", "--zone=us-central2-b"]
    remote = script(
        "set -eo pipefail",
        "gcloud auth print-access-token | sudo docker login --username=oauth2accesstoken "
        "--password-stdin https://us-central2-docker.pkg.dev",
        f"sudo docker pull {image}",
        "sudo docker rm --force lm >/dev/null 2>&1 || true",
        f"sudo docker run --detach --name=lm --net=host --privileged --volume=/tmp:/tmp {image} "
        "python -m lm.main.train_lm --config_path config/gpt2_small.yaml",
    )
    assert ex.argvs == [
        ["gcloud", "auth", "configure-docker", "us-central2-docker.pkg.dev", "--quiet"],
        [
            "docker",
            "build",
            "--platform=linux/amd64",
            f"--file={tmp_path}/docker/Dockerfile",
            f"--tag={image}",
            str(tmp_path),
        ],
        ["docker", "push", image],
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "lm-alice", *where,
         "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base",
         "--service-account=trainer@my-project.iam.gserviceaccount.com"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lm-alice", *where, "--worker=all",
         f"--command={remote}"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lm-alice", *where, "--worker=all",
         f"--command={WAIT}"],
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "lm-alice", *where, "--quiet"],
    ]  # fmt: skip


def test_queued_spot_multislice_exact_commands(tmp_path):
    config = write(tmp_path, QUEUED_SPOT_MULTISLICE)
    sleeps = []
    ex = RecordingExecutor({"describe": ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"]})
    status = main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex, sleep=sleeps.append)
    assert status == 0
    image = "us-east5-docker.pkg.dev/my-project/lm/trainer:2024"
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    where = ["--project=my-project", "--zone=us-east5-a"]
    describe = [*qr, "describe", "big-run", *where, "--format=value(state.state)"]
    remote = script(
        "set -eo pipefail",
        "gcloud auth print-access-token | sudo docker login --username=oauth2accesstoken "
        "--password-stdin https://us-east5-docker.pkg.dev",
        f"sudo docker pull {image}",
        "sudo docker rm --force lm >/dev/null 2>&1 || true",
        "sudo docker run --detach --name=lm --net=host --privileged --volume=/tmp:/tmp "
        f"-e JAX_COMPILATION_CACHE_DIR=gs://my-bucket/jax-cache {image} "
        "python -m lm.main.train_lm --config_path config/gpt2_small.yaml",
    )
    assert ex.argvs[3:] == [
        [*qr, "create", "big-run", *where, "--accelerator-type=v5p-16",
         "--runtime-version=v2-alpha-tpuv5", "--node-count=2", "--node-prefix=big-run",
         "--spot", "--network=tpu-net", "--subnetwork=tpu-subnet"],
        describe,
        describe,
        describe,
        [*qr, "ssh", "big-run", *where, "--worker=all", "--node=all", f"--command={remote}"],
        [*qr, "ssh", "big-run", *where, "--worker=all", "--node=all", f"--command={WAIT}"],
        [*qr, "delete", "big-run", *where, "--force", "--quiet"],
    ]  # fmt: skip
    assert ex.steps[:3] == ["configure-docker", "build", "push"]
    assert sleeps == [60.0, 60.0]


def test_dry_run_prints_every_command_with_secrets_masked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, WITH_SECRETS)
    env = {**ENV, "WANDB_API_KEY": "wandb-secret-123"}
    out = io.StringIO()
    assert main(["--dry-run", "--", *TRAIN], environ=env, stdout=out) == 0
    lines = out.getvalue().splitlines()
    image = "europe-west4-docker.pkg.dev/my-project/lm/lm:dev"
    where = "--project=my-project --zone=europe-west4-a"
    remote = script(
        "set -eo pipefail",
        "gcloud auth print-access-token | sudo docker login --username=oauth2accesstoken "
        "--password-stdin https://europe-west4-docker.pkg.dev",
        f"sudo docker pull {image}",
        "sudo docker rm --force lm >/dev/null 2>&1 || true",
        "sudo docker run --detach --name=lm --net=host --privileged --volume=/tmp:/tmp "
        "-e JAX_COMPILATION_CACHE_DIR=gs://cache/jax -e 'HF_TOKEN=<redacted>' "
        f"-e 'WANDB_API_KEY=<redacted>' -v /mnt/data:/data {image} "
        "python -m lm.main.train_lm --config_path config/gpt2_small.yaml",
    )
    assert lines == [
        "gcloud auth configure-docker europe-west4-docker.pkg.dev --quiet",
        "docker build --platform=linux/amd64 --file=docker/Dockerfile "
        f"--tag={image} --build-arg=JAX_VARIANT=tpu .",
        f"docker push {image}",
        f"gcloud compute tpus tpu-vm create demo {where} --accelerator-type=v5litepod-16 "
        "--version=v2-alpha-tpuv5-lite --preemptible",
        f"gcloud compute tpus tpu-vm ssh demo {where} --worker=all "
        + shlex.quote(f"--command={remote}"),
        f"gcloud compute tpus tpu-vm ssh demo {where} --worker=all "
        + shlex.quote(f"--command={WAIT}"),
        f"gcloud compute tpus tpu-vm delete demo {where} --quiet",
    ]
    assert "wandb-secret-123" not in out.getvalue()
    assert "hf_written_in_file" not in out.getvalue()
    # Each printed line is a shell command that splits back into the shown argv.
    assert shlex.split(lines[4])[-1] == f"--command={remote}"
    assert shlex.split(lines[5])[-1] == f"--command={WAIT}"


def test_secret_values_reach_the_workers_but_are_never_shown(tmp_path):
    config = write(tmp_path, WITH_SECRETS)
    ex = RecordingExecutor()
    env = {**ENV, "WANDB_API_KEY": "wandb-secret-123"}
    assert main(["--config", config, "--", *TRAIN], environ=env, executor=ex) == 0
    ssh = ex.commands[ex.steps.index("start")]
    assert "-e WANDB_API_KEY=wandb-secret-123 " in ssh.argv[-1]
    assert "-e HF_TOKEN=hf_written_in_file " in ssh.argv[-1]
    assert "wandb-secret-123" not in str(ssh) and "hf_written_in_file" not in str(ssh)


def test_preempted_tpu_is_recreated_and_the_command_rerun(tmp_path, caplog):
    config = write(
        tmp_path, ON_DEMAND.replace("image_tag: v1", "image_tag: v1\ncapacity_type: spot")
    )
    ex = RecordingExecutor({"wait": [255, 0], "describe": ["PREEMPTED"]})
    with caplog.at_level(logging.WARNING):
        assert main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex) == 0
    assert ex.steps == [
        "configure-docker", "build", "push",
        "create", "start", "wait", "describe", "delete",
        "create", "start", "wait", "delete",
    ]  # fmt: skip
    assert ex.argvs[6] == [
        "gcloud", "compute", "tpus", "tpu-vm", "describe", "lm-alice",
        "--project=my-project", "--zone=us-central2-b", "--format=value(state)",
    ]  # fmt: skip
    assert ex.argvs[3] == ex.argvs[8] and "--spot" in ex.argvs[3]
    assert ex.argvs[4] == ex.argvs[9]  # the same command, restarted on the new TPU
    assert "preempted (PREEMPTED)" in caplog.text and "retry 1 of 3" in caplog.text
    assert ex.unused() == {}


def test_preempted_while_starting(tmp_path):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor({"start": [255], "describe": ["TERMINATED"]})
    assert main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex) == 0
    assert ex.steps[3:] == [
        "create",
        "start",
        "describe",
        "delete",
        "create",
        "start",
        "wait",
        "delete",
    ]


def test_preempted_queued_resource_is_recreated(tmp_path):
    config = write(tmp_path, QUEUED_SPOT_MULTISLICE)
    ex = RecordingExecutor({"wait": [1, 0], "describe": ["ACTIVE", "SUSPENDED", "ACTIVE"]})
    assert main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex, sleep=print) == 0
    assert ex.steps[3:] == [
        "create", "describe", "start", "wait", "describe", "delete",
        "create", "describe", "start", "wait", "delete",
    ]  # fmt: skip
    assert ex.argvs[8][-2:] == ["--force", "--quiet"]


def test_gives_up_after_retries_and_still_tears_down(tmp_path, capsys):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor({"wait": [255, 255], "describe": ["TERMINATED", "PREEMPTED"]})
    assert main(["--config", config, "--retries", "1", "--", *TRAIN], environ=ENV, executor=ex) == 1
    assert ex.steps[3:] == [
        "create", "start", "wait", "describe", "delete",
        "create", "start", "wait", "describe", "delete",
    ]  # fmt: skip
    assert "all 1 retries are used up" in capsys.readouterr().err


def test_a_failing_command_is_not_retried(tmp_path):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor({"wait": [3], "describe": ["READY"]})
    assert main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex) == 3
    assert ex.steps[3:] == ["create", "start", "wait", "describe", "delete"]


def test_a_dropped_connection_reattaches(tmp_path, caplog):
    config = write(tmp_path, ON_DEMAND)
    sleeps = []
    ex = RecordingExecutor({"wait": [255, 255, 0], "describe": ["READY", "READY"]})
    with caplog.at_level(logging.WARNING):
        status = main(
            ["--config", config, "--", *TRAIN], environ=ENV, executor=ex, sleep=sleeps.append
        )
    assert status == 0
    assert ex.steps[3:] == [
        "create",
        "start",
        "wait",
        "describe",
        "wait",
        "describe",
        "wait",
        "delete",
    ]
    waits = [c.argv[-1] for c in ex.commands if "docker wait" in c.argv[-1]]
    assert ["--tail=all" in w for w in waits] == [True, False, False]
    assert all("--tail=100" in w for w in waits[1:])
    assert sleeps == [30.0, 30.0] and "reattaching (2 of 5)" in caplog.text


def test_reattaching_gives_up_after_max_reattach(tmp_path):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor({"wait": [255] * 6, "describe": ["READY"] * 6})
    status = main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex, sleep=print)
    assert status == 255
    assert ex.steps.count("wait") == 6 and ex.steps[-1] == "delete"


def test_failed_start_is_an_error(tmp_path, capsys):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor({"start": [1], "describe": ["READY"]})
    assert main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex) == 1
    assert ex.steps[3:] == ["create", "start", "describe", "delete"]
    assert "starting the container on lm-alice failed" in capsys.readouterr().err


def test_failed_create_deletes_nothing(tmp_path, capsys):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor({"create": [1]})
    assert main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex) == 1
    assert ex.steps == ["configure-docker", "build", "push", "create"]
    assert "already exists" in capsys.readouterr().err


def test_failed_queued_resource_is_an_error_and_is_deleted(tmp_path, capsys):
    config = write(tmp_path, QUEUED_SPOT_MULTISLICE)
    ex = RecordingExecutor({"describe": ["WAITING_FOR_RESOURCES", "FAILED"]})
    assert main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex, sleep=print) == 1
    assert ex.steps[3:] == ["create", "describe", "describe", "delete"]
    assert "is FAILED instead of ACTIVE" in capsys.readouterr().err


def test_failed_build_stops_before_creating(tmp_path, capsys):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor({"build": [1]})
    assert main(["--config", config, "--", *TRAIN], environ=ENV, executor=ex) == 1
    assert ex.steps == ["configure-docker", "build"]
    assert "docker build failed with exit status 1" in capsys.readouterr().err


def test_keep_detach_and_no_build(tmp_path, caplog):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor()
    assert main(["--config", config, "--keep", "--", *TRAIN], environ=ENV, executor=ex) == 0
    assert ex.steps[-1] == "wait"

    ex = RecordingExecutor()
    with caplog.at_level(logging.INFO):
        args = ["--config", config, "--detach", "--no-build", "--image_tag", "v0", "--", *TRAIN]
        assert main(args, environ=ENV, executor=ex) == 0
    assert ex.steps == ["create", "start"]
    assert "us-central2-docker.pkg.dev/my-project/lm-images/lm:v0 python" in ex.argvs[1][-1]
    assert "sudo docker logs --follow lm" in caplog.text
    assert "gcloud compute tpus tpu-vm delete lm-alice" in caplog.text


def test_flags_override_the_file(tmp_path):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor()
    args = [
        "--config", config, "--tpu-name", "other", "--tpu_type", "v5p-8", "--zone", "us-east5-a",
        "--capacity_type", "reserved", "--env", "A=1", "--env", "B=x=y", "--", "echo", "hi",
    ]  # fmt: skip
    assert main(args, environ=ENV, executor=ex) == 0
    create = ex.argvs[3]
    assert create[5:] == [
        "other", "--project=my-project", "--zone=us-east5-a", "--accelerator-type=v5p-8",
        "--version=v2-alpha-tpuv5", "--reserved",
        "--service-account=trainer@my-project.iam.gserviceaccount.com",
    ]  # fmt: skip
    assert "-e A=1 -e B=x=y " in ex.argvs[4][-1]
    assert ex.argvs[4][-1].endswith(" echo hi")


def test_real_mode_refuses_without_gcloud_and_docker(tmp_path, capsys):
    config = write(tmp_path, ON_DEMAND)
    assert main(["--config", config, "--", *TRAIN], environ=ENV, which=lambda _: None) == 1
    err = capsys.readouterr().err
    assert "`gcloud` is not installed" in err and "`docker` is not installed" in err
    assert "--dry-run" in err


def test_usage_errors(tmp_path, capsys):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor()
    assert main(["--config", config], environ=ENV, executor=ex) == 2
    assert "no command to run" in capsys.readouterr().err
    assert main(["--config", config, "--zone", "moon-1", "--", "x"], environ=ENV, executor=ex) == 2
    assert "zone [--zone]: got 'moon-1'" in capsys.readouterr().err
    missing = str(tmp_path / "missing.yaml")
    assert main(["--config", missing, "--", "x"], environ=ENV, executor=ex) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert ex.commands == []
    with pytest.raises(SystemExit):
        main(["--config", config, "--env", "NOVALUE", "--", "x"], environ=ENV, executor=ex)


def test_unset_secrets_are_shown_as_unset_in_a_dry_run_and_stop_a_real_launch(tmp_path, capsys):
    config = write(tmp_path, WITH_SECRETS.replace("[WANDB_API_KEY]", "[WANDB_API_KEY, MY_PASS]"))
    out = io.StringIO()
    assert main(["--config", config, "--dry-run", "--", "x"], environ=ENV, stdout=out) == 0
    start = out.getvalue().splitlines()[4]
    assert "-e 'WANDB_API_KEY=<unset>' -e 'MY_PASS=<unset>'" in shlex.split(start)[-1]
    err = capsys.readouterr().err
    assert err.count("a real launch would stop with exit status 2") == 1
    assert "WANDB_API_KEY, MY_PASS not set" in err
    ex = RecordingExecutor()
    assert main(["--config", config, "--", "x"], environ=ENV, executor=ex) == 2
    assert capsys.readouterr().err == (
        "error: secrets: WANDB_API_KEY, MY_PASS are listed under secrets: in .lm.yaml but not "
        "set (or empty) in the local environment; export them (`export WANDB_API_KEY=...`) or "
        "remove them from secrets:\n"
    )
    assert ex.commands == []


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_missing_dockerfile_is_a_config_error_at_dockerfile(tmp_path, capsys, dry_run):
    config = write(tmp_path, ON_DEMAND + "dockerfile: nothere/Dockerfile\n")
    ex = RecordingExecutor()
    args = ["--config", config, *(["--dry-run"] if dry_run else []), "--", "x"]
    assert main(args, environ=ENV, executor=ex, stdout=io.StringIO()) == 2
    assert capsys.readouterr().err == (
        f"Invalid configuration in {config} (1 problem):\n"
        f"  - dockerfile [{config}:7]: no Dockerfile at {tmp_path}/nothere/Dockerfile "
        "('nothere/Dockerfile', relative to the directory of .lm.yaml); set dockerfile: in "
        ".lm.yaml, or pass --no_build --image_tag TAG to run an image already pushed\n"
    )
    bare = tmp_path / "bare"  # a project without docker/Dockerfile
    bare.mkdir()
    config = str(bare / ".lm.yaml")
    (bare / ".lm.yaml").write_text(ON_DEMAND)
    assert main(["--config", config, *args[2:]], environ=ENV, executor=ex) == 2
    err = capsys.readouterr().err
    assert f"  - dockerfile: no Dockerfile at {bare}/docker/Dockerfile (the default " in err
    assert ex.commands == []
    assert main(["--config", config, "--no_build", "--", "x"], environ=ENV, executor=ex) == 0


def test_an_env_flag_that_is_also_a_secret_is_reported_at_the_flag(tmp_path, capsys):
    config = write(tmp_path, WITH_SECRETS)
    args = ["--config", config, "--env", "WANDB_API_KEY=zz", "--", "x"]
    assert main(args, environ=ENV, executor=RecordingExecutor()) == 2
    err = capsys.readouterr().err
    assert err.startswith("Invalid launch flags (1 problem):\n  - env.WANDB_API_KEY [--env ")
    assert (
        "[--env WANDB_API_KEY=...]: WANDB_API_KEY is listed under secrets: "
        f"({config}:15), so its value is read from your local environment; drop --env "
        "WANDB_API_KEY=..." in err
    )
    assert "zz" not in err and "secrets[0]" not in err


def test_errors_name_the_flag_that_sets_the_field(tmp_path, capsys):
    config = write(tmp_path, ON_DEMAND)
    ex = RecordingExecutor()
    args = ["--config", config, "--tpu_type", "v7x-8", "--", "x"]
    assert main(args, environ=ENV, executor=ex) == 2
    assert capsys.readouterr().err.startswith(
        "Invalid launch flags (1 problem):\n  - tpu_type [--tpu_type]: got 'v7x-8': no default "
        "runtime_version is known for v7x; set --runtime_version or runtime_version: in .lm.yaml"
    )
    assert main(["--config", config, "--node_count", "2", "--", "x"], environ=ENV, executor=ex) == 2
    err = capsys.readouterr().err
    assert err.startswith("Invalid launch flags (1 problem):\n  - node_count [--node_count]: ")
    assert "got 2: more than one slice (multislice) needs queued resources; pass --queued" in err
    untagged = write(tmp_path, ON_DEMAND.replace("image_tag: v1\n", ""))
    assert main(["--config", untagged, "--no_build", "--", "x"], environ=ENV, executor=ex) == 2
    assert "build_image is false (--no_build or build_image: false)" in capsys.readouterr().err
    assert ex.commands == []


def test_errors_are_headed_by_whether_the_file_or_the_flags_are_at_fault(tmp_path, capsys):
    ex = RecordingExecutor()
    config = write(tmp_path, ON_DEMAND)
    assert main(["--config", config, "--zone", "moon-1", "--", "x"], environ=ENV, executor=ex) == 2
    assert capsys.readouterr().err.startswith(
        "Invalid launch flags (1 problem):\n  - zone [--zone]"
    )
    both = write(tmp_path, ON_DEMAND.replace("v4-8", "v4"))
    assert main(["--config", both, "--zone", "moon-1", "--", "x"], environ=ENV, executor=ex) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"Invalid launch settings ({both} and flags) (2 problems):\n")
    assert main(["--config", both, "--", "x"], environ=ENV, executor=ex) == 2
    assert capsys.readouterr().err.startswith(f"Invalid configuration in {both} (1 problem):")
    assert ex.commands == []


def test_default_tpu_name():
    assert default_tpu_name({"USER": "Jane.Doe"}) == "lm-jane-doe"
    assert default_tpu_name({"USER": "___"}) == "lm"


@pytest.mark.entry
def test_module_entry_point_dry_run(tmp_path, subprocess_env):
    import subprocess
    import sys

    write(tmp_path, WITH_SECRETS)
    env = {**subprocess_env, "USER": "alice", "WANDB_API_KEY": "wandb-secret-123"}
    argv = [sys.executable, "-m", "lm.launch.tpu", "--dry-run", "--queued", "--capacity_type",
            "spot", "--", *TRAIN]  # fmt: skip
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:5] for line in lines[3:]] == [
        ["gcloud", "compute", "tpus", "queued-resources", "create"],
        ["gcloud", "compute", "tpus", "queued-resources", "describe"],
        ["gcloud", "compute", "tpus", "queued-resources", "ssh"],
        ["gcloud", "compute", "tpus", "queued-resources", "ssh"],
        ["gcloud", "compute", "tpus", "queued-resources", "delete"],
    ]
    assert "wandb-secret-123" not in done.stdout + done.stderr

    bad = subprocess.run(
        [sys.executable, "-m", "lm.launch.tpu", "--dry-run", "--tpu_type", "v4", "--", "x"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "tpu_type [--tpu_type]: got 'v4'" in bad.stderr
