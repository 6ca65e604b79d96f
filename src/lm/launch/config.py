"""`.lm.yaml`: the TPU launcher's settings (project, zone, TPU, image, env), parsed by `lm.config`.

The file holds defaults; `python -m lm.launch.tpu` flags override single fields. Everything is
decoded together, so unknown keys get a did-you-mean and every problem is reported at once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import lm.config
from lm.config import ConfigError, ConfigProblem, invalid
from lm.config.errors import join_path

CapacityType = Literal["on-demand", "preemptible", "spot", "reserved"]
CAPACITY_TYPES: tuple[str, ...] = ("on-demand", "preemptible", "spot", "reserved")

# Runtime (software) version per TPU generation, used when `runtime_version` is not set.
DEFAULT_RUNTIME_VERSIONS: dict[str, str] = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5e": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}

# Environment variables whose values are masked in printed commands even when they are
# written in `env:` rather than listed under `secrets:`.
SECRET_NAME_PATTERN = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TPU_TYPE = re.compile(r"^(v\d+[a-z]*)-(\d+)$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+\d+-[a-z]$")
_RESOURCE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPOSITORY = re.compile(r"^[a-z0-9.-]+(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+$")


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Where and how `python -m lm.launch.tpu` runs a command on a Cloud TPU."""

    project: str
    """Google Cloud project id that owns the TPU and the Artifact Registry repository."""
    zone: str
    """Zone of the TPU, e.g. `us-central2-b`."""
    tpu_type: str
    """Accelerator type, `<generation>-<cores>`: `v4-8`, `v5p-32`, `v5litepod-16`, `v6e-8`."""
    docker_repository: str
    """Artifact Registry repository the image is pushed to: `REGION-docker.pkg.dev/PROJECT/REPO`."""

    tpu_name: str | None = None
    """Name of the TPU VM (and queued resource). None: `lm-<local user name>`."""
    capacity_type: CapacityType = "on-demand"
    """`on-demand`, `preemptible`, `spot` or `reserved` (consume the project's reservation)."""
    runtime_version: str | None = None
    """TPU software version. None: the usual base image for the TPU generation."""
    use_queued_resources: bool = False
    """Request the TPU through a queued resource (waits for capacity) instead of creating it."""
    node_count: int = 1
    """Number of slices. More than one (multislice) needs `use_queued_resources: true`."""
    network: str | None = None
    """VPC network for the TPU. None: the project's `default` network."""
    subnetwork: str | None = None
    """Subnetwork for the TPU. None: chosen by the network."""
    service_account: str | None = None
    """Service account email the TPU VMs run as. None: the Compute Engine default account."""

    image_name: str = "lm"
    """Image name inside `docker_repository`."""
    image_tag: str | None = None
    """Image tag. None: the UTC launch time, `YYYYmmdd-HHMMSS`."""
    build_image: bool = True
    """Build and push the image before launching. False: run the existing `image_tag`."""
    dockerfile: str = "docker/Dockerfile"
    """Dockerfile, relative to the directory of `.lm.yaml` unless absolute."""
    docker_build_context: str = "."
    """Build context, relative to the directory of `.lm.yaml` unless absolute."""
    docker_build_args: dict[str, str] = dataclasses.field(default_factory=dict)
    """`--build-arg` values for `docker build` (the Dockerfile takes `JAX_VARIANT`, default `tpu`)."""
    docker_run_flags: list[str] = dataclasses.field(default_factory=list)
    """Extra `docker run` flags on every worker, e.g. `["-v", "/mnt/disks/data:/data"]`."""

    env: dict[str, str] = dataclasses.field(default_factory=dict)
    """Environment exported in the container on every worker, e.g. `JAX_COMPILATION_CACHE_DIR`."""
    secrets: list[str] = dataclasses.field(default_factory=list)
    """Names of local environment variables copied to every worker (`WANDB_API_KEY`, `HF_TOKEN`).
    Their values are never printed."""

    retries: int = 3
    """How many times a preempted TPU is deleted, recreated and the command rerun."""
    keep: bool = False
    """Leave the TPU running when the command ends (it is deleted by default)."""
    detach: bool = False
    """Start the command and return without waiting for it (implies `keep`)."""
    poll_interval_s: float = 30.0
    """Seconds between state polls while a queued resource waits for capacity."""

    def __post_init__(self):
        problems: list[ConfigProblem] = []

        def bad(field: str, value: object, allowed: str) -> None:
            error = invalid(field, value, allowed)
            problems.append(ConfigProblem(error.field, error.message))

        if not self.project or any(c.isspace() for c in self.project):
            bad("project", self.project, "a Google Cloud project id such as `my-project`")
        if not _ZONE.match(self.zone):
            bad("zone", self.zone, "a zone such as `us-central2-b` or `europe-west4-a`")
        match = _TPU_TYPE.match(self.tpu_type)
        if match is None:
            bad("tpu_type", self.tpu_type, "`<generation>-<cores>` such as `v4-8` or `v5p-32`")
        elif self.runtime_version is None and match.group(1) not in DEFAULT_RUNTIME_VERSIONS:
            known = ", ".join(sorted(DEFAULT_RUNTIME_VERSIONS))
            problems.append(
                ConfigProblem(
                    "tpu_type",
                    f"got {self.tpu_type!r}: no default runtime_version is known for "
                    f"{match.group(1)}; set --runtime_version or runtime_version: in .lm.yaml "
                    f"(defaults exist for {known})",
                )
            )
        if not _REPOSITORY.match(self.docker_repository):
            bad(
                "docker_repository",
                self.docker_repository,
                "an Artifact Registry repository `REGION-docker.pkg.dev/PROJECT/REPO` "
                "(lowercase, no tag)",
            )
        if self.tpu_name is not None and (
            len(self.tpu_name) > 50 or not _RESOURCE_NAME.match(self.tpu_name)
        ):
            bad(
                "tpu_name",
                self.tpu_name,
                "1-50 lowercase letters, digits and dashes, starting with a letter",
            )
        if self.capacity_type not in CAPACITY_TYPES:
            bad("capacity_type", self.capacity_type, f"one of {', '.join(CAPACITY_TYPES)}")
        if self.node_count < 1:
            bad("node_count", self.node_count, "a number of slices >= 1")
        elif self.node_count > 1 and not self.use_queued_resources:
            problems.append(
                ConfigProblem(
                    "node_count",
                    f"got {self.node_count}: more than one slice (multislice) needs queued "
                    "resources; pass --queued or set use_queued_resources: true in .lm.yaml "
                    "(plain `tpu-vm create` makes one slice)",
                )
            )
        if self.use_queued_resources and self.capacity_type == "preemptible":
            problems.append(
                ConfigProblem(
                    "capacity_type",
                    "queued resources do not offer `preemptible` capacity; use `spot` "
                    "(the successor of preemptible TPUs) or `on-demand`",
                )
            )
        if not _IMAGE_NAME.match(self.image_name):
            bad("image_name", self.image_name, "a lowercase image name such as `lm`")
        if self.image_tag is not None and not _IMAGE_TAG.match(self.image_tag):
            bad("image_tag", self.image_tag, "a docker tag: letters, digits, `_`, `.`, `-`")
        if not self.build_image and self.image_tag is None:
            problems.append(
                ConfigProblem(
                    "image_tag",
                    "build_image is false (--no_build or build_image: false), so an image tag "
                    "must name the pushed image to run; pass --image_tag or set image_tag:",
                )
            )
        for name in self.docker_build_args:
            if not _ENV_NAME.match(name):
                bad(f"docker_build_args.{name}", name, "a build argument name")
        for name in self.env:
            if not _ENV_NAME.match(name):
                bad(f"env.{name}", name, "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        for i, name in enumerate(self.secrets):
            if not _ENV_NAME.match(name):
                bad(f"secrets[{i}]", name, "an environment variable name")
            elif name in self.env:
                problems.append(
                    ConfigProblem(
                        f"secrets[{i}]",
                        f"{name} is also set under env:; give it in one place only",
                    )
                )
        if len(set(self.secrets)) != len(self.secrets):
            problems.append(ConfigProblem("secrets", f"duplicate names in {self.secrets}"))
        if self.retries < 0:
            bad("retries", self.retries, "a number of retries >= 0")
        if not (math.isfinite(self.poll_interval_s) and self.poll_interval_s > 0):
            bad("poll_interval_s", self.poll_interval_s, "a number of seconds > 0")
        if problems:
            raise ConfigError(problems)

    @property
    def generation(self) -> str:
        """TPU generation of `tpu_type`: `v5p` for `v5p-32`."""
        match = _TPU_TYPE.match(self.tpu_type)
        assert match is not None, self.tpu_type
        return match.group(1)

    @property
    def resolved_runtime_version(self) -> str:
        """`runtime_version`, or the default for the TPU generation."""
        return self.runtime_version or DEFAULT_RUNTIME_VERSIONS[self.generation]

    @property
    def registry_host(self) -> str:
        """Host part of `docker_repository`, the registry docker logs in to."""
        return self.docker_repository.split("/", 1)[0]

    def image(self, tag: str) -> str:
        """Full image reference `REPOSITORY/NAME:TAG`."""
        return f"{self.docker_repository}/{self.image_name}:{tag}"

    def is_secret(self, name: str) -> bool:
        """Whether the value of environment variable `name` is masked in printed commands."""
        return name in self.secrets or bool(SECRET_NAME_PATTERN.search(name))


DEFAULT_CONFIG_FILE = ".lm.yaml"


class LaunchSettingsError(ConfigError):
    """A `ConfigError` headed by where its problems came from: the file, the flags, or both.

    A problem whose location starts with `--` was set by a command-line flag.
    """

    def _format(self) -> str:
        by_flag = [bool(p.location and p.location.startswith("--")) for p in self.problems]
        if all(by_flag):
            heading = "Invalid launch flags"
        elif any(by_flag) and self.source:
            heading = f"Invalid launch settings ({self.source} and flags)"
        elif not any(by_flag) and self.source:
            heading = f"Invalid configuration in {self.source}"
        else:
            heading = "Invalid launch settings"
        n = len(self.problems)
        lines = [f"{heading} ({n} problem{'' if n == 1 else 's'}):"]
        lines += ["  - " + str(p).replace("\n", "\n    ") for p in self.problems]
        return "\n".join(lines)

    def with_source(self, source: str | None) -> LaunchSettingsError:
        return LaunchSettingsError(self.problems, source=source)


def _env_flag(name: str) -> str:
    """How an `env:` entry given on the command line is shown (its value may be a secret)."""
    return f"--env {name}=..."


# Levanter's `.levanter.yaml` fields that lm spells otherwise (the spelling difflib finds for
# `vm_image` is `build_image`): key -> value -> (the field to write, a note).
def _levanter_field(key: str, value: Any) -> tuple[str, str] | None:
    if key == "vm_image":
        shown = value if isinstance(value, str) else "..."
        return f"runtime_version: {shown}", "the TPU software version"
    if key == "preemptible":
        if value is False:
            return "capacity_type: on-demand", "the default: the line can go"
        return "capacity_type: preemptible", "or `spot`, preemptible TPUs' successor"
    if key == "autodelete":
        if value is False:
            return "keep: true", "leave the TPU running when the command ends"
        return "keep: false", "the default: the TPU is deleted when the command ends"
    if key == "foreground":
        if value is False:
            return "detach: true", "start the command and return without waiting for it"
        return "detach: false", "the default: the launcher waits for the command"
    return None


def _levanter_problems(data: dict[str, Any], locations: Mapping[str, str]):
    """Problems for Levanter's names of fields (`vm_image: ...`, `preemptible: true`), each
    saying what to write instead; the keys are taken out of `data`, so the decoder does not
    report them again with a did-you-mean of its own."""
    problems = []
    for key in list(data):
        hint = _levanter_field(key, data[key])
        if hint is None:
            continue
        written, note = hint
        problems.append(
            ConfigProblem(
                key,
                f"unknown field `{key}` for LaunchConfig; did you mean `{written}`? "
                f"(`{key}` is Levanter's name; {note})",
                locations.get(key),
            )
        )
        del data[key]
    return problems


def _missing_files(data: Mapping[str, Any], base_dir: str, locations: Mapping[str, str]):
    """Problems for a Dockerfile or build context that is not there, when the image is built."""
    if data.get("build_image", True) is False:
        return []
    problems = []
    wanted = [("dockerfile", "docker/Dockerfile", os.path.isfile, "Dockerfile")]
    wanted.append(("docker_build_context", ".", os.path.isdir, "build context directory"))
    for field, default, exists, noun in wanted:
        value = data.get(field, default)
        if not isinstance(value, str):
            continue  # the decoder reports the wrong type
        path = os.path.abspath(os.path.join(base_dir, value))
        if not exists(path):
            given = f"{value!r}" if field in data else f"the default {value!r}"
            problems.append(
                ConfigProblem(
                    field,
                    f"no {noun} at {path} ({given}, relative to the directory of .lm.yaml); "
                    f"set {field}: in .lm.yaml, or pass --no_build --image_tag TAG to run an "
                    "image already pushed",
                    locations.get(field),
                )
            )
    return problems


def load_launch_config(
    path: str | os.PathLike | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    required: bool = False,
    merge_env: bool = False,
    flags: Mapping[str, str] | None = None,
    check_files: bool = False,
) -> LaunchConfig:
    """Read `.lm.yaml` (if present), apply command-line `overrides`, and decode.

    Args:
        path: the YAML file. A missing file is an error when `required` (the user named it),
            otherwise the config comes from `overrides` alone.
        overrides: field name -> value, from command-line flags; they win over the file.
        required: whether `path` must exist.
        merge_env: an `env` override adds to (and wins over) the file's `env:` instead of
            replacing it, as `--env NAME=VALUE` does; each entry is reported at its flag.
        flags: field name -> the flag that set it (`use_queued_resources` -> `--queued`),
            named in problems; default `--<field>`.
        check_files: also check that the Dockerfile and build context exist (relative to the
            directory of `path`) when the image is to be built.

    Raises:
        LaunchSettingsError: every problem in the file, the overrides and the decoded values
            (a `ConfigError`, headed by whether the file, the flags or both are at fault).
    """
    data: dict[str, Any] = {}
    locations: dict[str, str] = {}
    source = os.fspath(path) if path is not None else None
    if source is not None and (required or os.path.exists(source)):
        loaded = lm.config.load_document(source)
        if loaded.data is not None and not isinstance(loaded.data, dict):
            raise ConfigError(
                [
                    ConfigProblem(
                        "", f"expected a mapping of launcher settings, got {loaded.data!r}"
                    )
                ],
                source=source,
            )
        data = dict(loaded.data or {})
        locations = dict(loaded.locations)
    problems: list[ConfigProblem] = _levanter_problems(data, locations)
    for key, value in (overrides or {}).items():
        if key == "env" and merge_env and isinstance(value, dict):
            secrets = data.get("secrets")
            secrets = secrets if isinstance(secrets, list) else []
            for name in [n for n in value if n in secrets]:
                where = locations.get(f"secrets[{secrets.index(name)}]", "secrets:")
                problems.append(
                    ConfigProblem(
                        join_path("env", name),
                        f"{name} is listed under secrets: ({where}), so its value is read from "
                        f"your local environment; drop {_env_flag(name)} and run "
                        f"`{name}=... python -m lm.launch.tpu ...`, or remove it from secrets:",
                        _env_flag(name),
                    )
                )
            value = {n: v for n, v in value.items() if n not in secrets}
            for name in value:
                locations[join_path("env", name)] = _env_flag(name)
            if isinstance(data.get("env"), dict):
                value = {**data["env"], **value}
            data[key] = value
            continue
        data[key] = value
        locations[key] = (flags or {}).get(key, f"--{key}")
    if check_files:
        base_dir = os.path.dirname(source) if source else ""
        problems += _missing_files(data, base_dir, locations)
    config: LaunchConfig | None = None
    try:
        config = lm.config.decode(LaunchConfig, data, locations=locations)
    except ConfigError as e:
        problems = [*e.problems, *problems]
    if config is None or problems:
        if source is not None and not os.path.exists(source):
            problems.append(ConfigProblem("", f"(no {source} was found; see .lm.yaml.example)"))
        raise LaunchSettingsError(
            problems, source=source if source and os.path.exists(source) else None
        ) from None
    return config
