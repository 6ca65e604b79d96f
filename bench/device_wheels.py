"""Download the wheels lm needs on the GPU machines' image that the image does not have.

The device image ('cuda') has Python 3.12, jax 0.11.2 with its CUDA 13 plugin, equinox, optax,
tensorstore, transformers and the rest of lm's scientific stack, but not haliax (and its
`aqtp`), draccus (and its `mergedeep`), jmp, braceexpand or zstandard; nothing can be fetched
there. This script downloads those, at the versions installed in this checkout's `.venv`
(what pyproject.toml pins), as manylinux x86_64 wheels for Python 3.12 (`--python-version`
for another: a CPU dry run of bench/gpu_check.sh needs the version of its python3) into
`.whl/` (kept out of git by .gitignore), for the device tool to carry:

    PYTHONPATH=src python bench/device_wheels.py
    # then, on the device (carry: [".whl"]):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
    python3 bench/train.py --config bench/configs/llama_1b_gpu.yaml --steps 30 --warmup 5

lm runs on jax 0.11.2 through `lm.jax_compat` (haliax 1.4.dev453 calls a function JAX 0.11
removed); the test suite passed on jax 0.11.2 / Python 3.12 on the CPU (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys

# What `python -m lm.main.train_lm` imports that the device image lacks (its package list is
# in the device tool's KINDS.md): lm's own pins and the two packages they pull in.
MISSING_ON_DEVICE = ("haliax", "aqtp", "draccus", "mergedeep", "jmp", "braceexpand", "zstandard")
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requirements(names=MISSING_ON_DEVICE) -> list[str]:
    """`name==version` for each package, at the version installed here."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed here: run `make venv` first") from None
    return out


def download_command(reqs: list[str], dest: str, python_version: str = "3.12") -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python_version, "--implementation", "cp", "-d", dest]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    return cmd + reqs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=os.path.join(REPO, ".whl"))
    parser.add_argument(
        "--python-version",
        default="3.12",
        help="the Python the wheels are for: the device image's (3.12), or the python3 of a "
        "CPU dry run of bench/gpu_check.sh",
    )
    args = parser.parse_args()
    reqs = requirements()
    cmd = download_command(reqs, args.dest, args.python_version)
    print(" ".join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise SystemExit(f"error: pip download failed (exit {code}; its output is above)")
    wheels = sorted(f for f in os.listdir(args.dest) if f.endswith(".whl"))
    total = sum(os.path.getsize(os.path.join(args.dest, f)) for f in wheels)
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.dest}:")
    for f in wheels:
        print(f"  {f}")


if __name__ == "__main__":
    main()
