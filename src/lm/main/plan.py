"""Plan a run without training: `python -m lm.main.plan --config_path run.yaml`.

Resolves the run config, builds the training state abstractly (no parameters are
allocated) and prints the mesh, each parameter's logical axes and physical sharding,
parameter and state sizes, FLOPs per token and per step, and the per-device memory of
the compiled train step from XLA's memory analysis.

    --device_memory 16GiB   exit 3 with advice if the step needs more than this per device
    --num_devices 64        plan for 64 devices (simulated CPU devices) instead of the local ones

Exit codes: 0 planned (and fits), 3 does not fit `device_memory`, 2 bad configuration,
1 any other error.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import jax

import lm.config
from lm.main.train_lm import TrainLmConfig, check_hf_checkpoint_path
from lm.plan import format_plan, format_verdict, memory_advice, parse_size, plan_lm

logger = logging.getLogger(__name__)

DOES_NOT_FIT_EXIT_CODE = 3
"""Exit status when the plan exceeds --device_memory (distinct from errors (1) and config
problems (2))."""


@dataclasses.dataclass(frozen=True)
class PlanConfig(TrainLmConfig):
    """A `train_lm` run config plus what to plan for."""

    device_memory: str | None = None
    """Per-device memory budget (e.g. 16GiB, 80GB, 512MiB). When the compiled step needs
    more, the plan lists what to change and exits with status 3 (1 is an error, 2 a bad
    config)."""
    num_devices: int | None = None
    """Plan for this many devices instead of the local ones. They are simulated CPU devices
    (XLA:CPU compiles the step), so it must be set before anything else starts JAX."""
    compile_step: bool = True
    """Compile the train step for the memory analysis (the slow part of planning)."""

    def __post_init__(self):
        super().__post_init__()
        if self.device_memory is not None:
            try:
                size = parse_size(self.device_memory)
            except ValueError as e:
                raise lm.config.FieldError("device_memory", str(e)) from None
            if size < 2**20 and str(self.device_memory).strip().isdigit():
                raise lm.config.FieldError(
                    "device_memory",
                    f"{self.device_memory} is {size} bytes, less than a MiB: give the unit, "
                    f"e.g. {self.device_memory}GiB",
                )
            if not self.compile_step:
                raise lm.config.FieldError(
                    "compile_step", "device_memory needs compile_step: true (the estimate)"
                )
        if self.num_devices is not None and self.num_devices <= 0:
            raise lm.config.invalid("num_devices", self.num_devices, "a positive device count")

    @property
    def device_memory_bytes(self) -> int | None:
        return None if self.device_memory is None else parse_size(self.device_memory)


def use_simulated_devices(num_devices: int) -> None:
    """Make JAX run on `num_devices` CPU devices; must happen before JAX starts a backend."""
    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", num_devices)
    except RuntimeError:
        pass  # a backend is up already: fine if it is the one asked for (checked below)
    devices = jax.devices()
    if len(devices) != num_devices or devices[0].platform != "cpu":
        raise ValueError(
            f"num_devices: {num_devices} needs {num_devices} simulated CPU devices, but JAX "
            f"already started with {len(devices)} {devices[0].platform} device(s); run the "
            "plan in a fresh process"
        )


def main(config: PlanConfig) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if config.num_devices is not None:
        use_simulated_devices(config.num_devices)
    for key, value in config.trainer.jax_config.items():
        jax.config.update(key, value)
    config.trainer.validate_batch_sizes()
    check_hf_checkpoint_path(config)

    plan = plan_lm(config, compile_step=config.compile_step)
    print(format_plan(plan), flush=True)
    budget = config.device_memory_bytes
    if budget is None:
        return 0
    advice = memory_advice(plan, budget)
    print("\n" + format_verdict(plan, budget, advice), flush=True)
    return DOES_NOT_FIT_EXIT_CODE if advice else 0


if __name__ == "__main__":
    sys.exit(lm.config.main(main)())
