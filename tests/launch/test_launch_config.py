"""`.lm.yaml` parsing: defaults, overrides, aggregated did-you-mean errors, round trip."""

import dataclasses

import pytest

import lm.config
from lm.config import ConfigError
from lm.launch.config import LaunchConfig, load_launch_config

BASE = dict(
    project="my-project",
    zone="us-central2-b",
    tpu_type="v4-8",
    docker_repository="us-central2-docker.pkg.dev/my-project/lm",
)


def problems(error: ConfigError) -> dict[str, str]:
    return {p.path: p.message for p in error.problems}


def test_defaults_and_derived_values():
    cfg = LaunchConfig(**BASE)
    assert cfg.capacity_type == "on-demand" and cfg.retries == 3 and cfg.node_count == 1
    assert cfg.resolved_runtime_version == "tpu-ubuntu2204-base"
    assert cfg.registry_host == "us-central2-docker.pkg.dev"
    assert cfg.image("t") == "us-central2-docker.pkg.dev/my-project/lm/lm:t"
    runtime = {
        "v5p-8": "v2-alpha-tpuv5",
        "v5litepod-16": "v2-alpha-tpuv5-lite",
        "v6e-8": "v2-alpha-tpuv6e",
        "v3-32": "tpu-ubuntu2204-base",
    }
    for tpu_type, version in runtime.items():
        assert LaunchConfig(**{**BASE, "tpu_type": tpu_type}).resolved_runtime_version == version
    explicit = LaunchConfig(**{**BASE, "tpu_type": "v9-8", "runtime_version": "custom"})
    assert explicit.resolved_runtime_version == "custom"


def test_secret_detection():
    cfg = LaunchConfig(**BASE, env={"HF_TOKEN": "x", "JAX_PLATFORMS": "tpu"}, secrets=["MY_PASS"])
    assert cfg.is_secret("HF_TOKEN") and cfg.is_secret("MY_PASS") and cfg.is_secret("WANDB_API_KEY")
    assert not cfg.is_secret("JAX_PLATFORMS")


def test_unknown_keys_and_bad_choices_get_did_you_mean(tmp_path):
    path = tmp_path / ".lm.yaml"
    path.write_text(
        "project: my-project\nzon: us-central2-b\ntpu_type: v4-8\n"
        "docker_repository: us-docker.pkg.dev/p/r\ncapacity_type: spott\nenvv: {}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_launch_config(path)
    found = problems(e.value)
    assert "did you mean `zone`?" in found["zon"]
    assert "did you mean `env`?" in found["envv"]
    assert "did you mean 'spot'?" in found["capacity_type"]
    assert "missing required field `zone`" in found["zone"]
    assert str(path) in str(e.value) and ".lm.yaml:2" in str(e.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # difflib offered `build_image` for vm_image, and nothing for preemptible
        ("vm_image: tpu-ubuntu2204-base", "did you mean `runtime_version: tpu-ubuntu2204-base`?"),
        ("preemptible: true", "did you mean `capacity_type: preemptible`?"),
        ("preemptible: false", "did you mean `capacity_type: on-demand`? (`preemptible` is"),
        ("autodelete: false", "did you mean `keep: true`?"),
        ("foreground: false", "did you mean `detach: true`?"),
    ],
)
def test_levanter_field_names_point_to_lms(tmp_path, line, expected):
    """A `.levanter.yaml` copied over: each of Levanter's names says what lm calls it."""
    path = tmp_path / ".lm.yaml"
    fields = "".join(f"{k}: {v}\n" for k, v in BASE.items())
    path.write_text(fields + line + "\n")
    with pytest.raises(ConfigError) as e:
        load_launch_config(path)
    key = line.split(":")[0]
    assert [p.path for p in e.value.problems] == [key]
    assert e.value.problems[0].location == f"{path}:5"
    assert e.value.problems[0].message.startswith(f"unknown field `{key}` for LaunchConfig; ")
    assert expected in e.value.problems[0].message
    assert "Levanter's name" in e.value.problems[0].message


def test_validation_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        lm.config.decode(
            LaunchConfig,
            {
                **BASE,
                "zone": "us-central2",
                "tpu_type": "v4",
                "docker_repository": "us-docker.pkg.dev/P/Repo:tag",
                "tpu_name": "My_TPU",
                "node_count": 2,
                "env": {"1BAD": "x", "OK": "y"},
                "secrets": ["OK", "bad name"],
                "retries": -1,
                "poll_interval_s": 0,
                "build_image": False,
            },
        )
    found = problems(e.value)
    assert set(found) == {
        "zone", "tpu_type", "docker_repository", "tpu_name", "node_count", "env.1BAD",
        "secrets[0]", "secrets[1]", "retries", "poll_interval_s", "image_tag",
    }  # fmt: skip
    assert "got 'us-central2'" in found["zone"]
    assert "pass --queued or set use_queued_resources: true" in found["node_count"]
    assert "also set under env:" in found["secrets[0]"]
    assert "build_image is false" in found["image_tag"]


def test_queued_resources_have_no_preemptible_tier():
    with pytest.raises(ConfigError) as e:
        LaunchConfig(**BASE, use_queued_resources=True, capacity_type="preemptible")
    assert "use `spot`" in problems(e.value)["capacity_type"]
    LaunchConfig(**BASE, use_queued_resources=True, capacity_type="spot", node_count=4)


def test_unknown_generation_needs_a_runtime_version():
    with pytest.raises(ConfigError) as e:
        LaunchConfig(**{**BASE, "tpu_type": "v9-8"})
    assert problems(e.value)["tpu_type"].startswith(
        "got 'v9-8': no default runtime_version is known for v9; set --runtime_version or "
        "runtime_version: in .lm.yaml"
    )


def test_overrides_win_and_env_merges(tmp_path):
    path = tmp_path / ".lm.yaml"
    path.write_text(lm.config.to_yaml(LaunchConfig(**BASE, env={"A": "1", "B": "2"})))
    cfg = load_launch_config(
        path, {"zone": "us-east5-a", "retries": "7", "env": {"B": "3"}}, merge_env=True
    )
    assert cfg.zone == "us-east5-a" and cfg.retries == 7 and cfg.env == {"A": "1", "B": "3"}
    replaced = load_launch_config(path, {"env": {"C": "4"}})
    assert replaced.env == {"C": "4"}


def test_missing_file_is_fine_unless_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert load_launch_config(missing, BASE) == LaunchConfig(**BASE)
    with pytest.raises(ConfigError):
        load_launch_config(missing, BASE, required=True)
    with pytest.raises(ConfigError, match="no .*nope.yaml was found"):
        load_launch_config(missing, {})


def test_round_trip_through_yaml():
    cfg = LaunchConfig(
        **BASE,
        tpu_name="run-1",
        capacity_type="spot",
        use_queued_resources=True,
        node_count=2,
        image_tag="2024",
        env={"JAX_COMPILATION_CACHE_DIR": "gs://b/c"},
        secrets=["WANDB_API_KEY"],
        docker_run_flags=["-v", "/a:/b"],
        poll_interval_s=5.0,
    )
    text = lm.config.to_yaml(cfg)
    import yaml

    assert lm.config.decode(LaunchConfig, yaml.safe_load(text)) == cfg
    assert dataclasses.replace(cfg) == cfg


def test_example_file_parses(repo_root):
    cfg = load_launch_config(repo_root / ".lm.yaml.example", required=True)
    assert cfg.env["JAX_COMPILATION_CACHE_DIR"].startswith("gs://")
    assert "WANDB_API_KEY" in cfg.secrets
