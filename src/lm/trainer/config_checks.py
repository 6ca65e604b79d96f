"""The checks `TrainerConfig.__post_init__` makes, field by field.

`convert_python_forms` accepts from Python what a run YAML would say (a policy string, a
dict for a nested config) and type-checks the scalar fields; `field_problems` returns every
invalid field at its own path (`trainer.<field>`), the jax flags and the axis mappings
included, so that one run reports them all. `run_id_problem` is shared with the run id the
config resolves (and the W&B tracker's `id`).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jmp
import numpy as np

from lm.checkpoint import CheckpointerConfig
from lm.config import FieldError, field_problem, invalid
from lm.config.errors import did_you_mean, join_path
from lm.distributed import RayConfig
from lm.distributed.init import DistributedConfig
from lm.optim.model_averaging import ModelAveragingConfig
from lm.partitioning import (
    batch_axis_clash,
    mapping_entry_problem,
    overridden_entries,
    validate_mapping,
)
from lm.schedule import BatchSchedule
from lm.tracker import TrackerConfig
from lm.tracker.wandb import WandbConfig
from lm.trainer.quantization import QuantizationConfig
from lm.trainer.watch import WatchConfig

if TYPE_CHECKING:
    from lm.trainer.config import TrainerConfig

MAX_STEPS = 2**31 - 1
"""The most steps a run can take: `TrainerState.step` is an int32."""
MAX_SEED = 2**32 - 1


def run_id_problem(run_id: str) -> str | None:
    """What keeps `run_id` from naming the run's directories (`<log_dir>/<id>`,
    `<base_path>/<id>`), as the "expected" half of an error; None when it can."""
    if (
        not run_id.strip()
        or run_id in (".", "..")
        or "/" in run_id
        or "\\" in run_id
        or any(ord(c) < 32 for c in run_id)
    ):
        return (
            "one directory name (not blank, '.' or '..'; no '/', '\\' or control characters), "
            "as it names the run's directories under log_dir and the checkpointer's base_path"
        )
    return None


def field_problems(config: TrainerConfig) -> list[FieldError]:
    """Every invalid field, each at its own path (`trainer.<field>`), so that one run
    reports them all."""
    problems: list[FieldError] = []
    if not isinstance(config.tracker, TrackerConfig) and len(config.tracker) == 0:
        problems.append(
            invalid(
                "tracker",
                [],
                "one tracker or a non-empty list of them; to turn tracking off, use "
                "`tracker: {type: noop}`",
            )
        )
    if config.num_train_steps < 0:
        problems.append(
            invalid(
                "num_train_steps",
                config.num_train_steps,
                "a number of steps >= 0 (>= 1 for train_lm: a run trains)",
            )
        )
    elif config.num_train_steps > MAX_STEPS:
        problems.append(
            invalid(
                "num_train_steps",
                config.num_train_steps,
                f"at most {MAX_STEPS:,} steps (the step counter is a 32-bit integer)",
            )
        )
    if not 0 <= config.seed <= MAX_SEED:
        problems.append(
            invalid(
                "seed",
                config.seed,
                f"an integer from 0 to {MAX_SEED:,} (JAX's keys take 32 bits of the seed: "
                "a larger one would repeat a smaller one's keys)",
            )
        )
    if config.id is not None and (problem := run_id_problem(config.id)) is not None:
        problems.append(invalid("id", config.id, problem))
    if config.steps_per_eval <= 0:
        problems.append(invalid("steps_per_eval", config.steps_per_eval, "a number of steps > 0"))
    if config.profiler_start_step < 0:
        problems.append(invalid("profiler_start_step", config.profiler_start_step, "a step >= 0"))
    for name in ("load_checkpoint_path", "initialize_from"):
        if getattr(config, name) == "":
            problems.append(
                FieldError(name, "is empty; give a checkpoint path, or leave it unset (null)")
            )
    if config.jax_compilation_cache_dir == "":
        problems.append(
            FieldError(
                "jax_compilation_cache_dir",
                "is empty; give a directory (local or a URL), or leave it unset (null) for "
                "JAX's default",
            )
        )
    if isinstance(config.batch_axis, str) and not config.batch_axis.strip():
        problems.append(invalid("batch_axis", config.batch_axis, "an axis name such as 'batch'"))
    problems += _float64_problems(config)
    if config.max_eval_batches is not None and config.max_eval_batches < 0:
        problems.append(
            invalid(
                "max_eval_batches",
                config.max_eval_batches,
                "null (the whole validation set) or a number of batches >= 0",
            )
        )
    problems += field_problem(lambda: _check_train_batch_size(config))
    for name in ("per_device_parallelism", "per_device_eval_parallelism"):
        value = getattr(config, name)
        if value == 0 or value < -1:
            problems.append(invalid(name, value, "a positive number of examples per device, or -1"))
    for name in ("replica_ici_axis_size", "model_axis_size", "replica_dcn_axis_size"):
        value = getattr(config, name)
        if value == 0 or value < -1:
            problems.append(
                invalid(name, value, "a positive number of devices, or -1 (fill the rest)")
            )
    if config.replica_ici_axis_size == -1 and config.model_axis_size == -1:
        problems.append(
            FieldError(
                "model_axis_size",
                "and replica_ici_axis_size cannot both be -1 (fill): set one of them",
            )
        )
    for key, value in config.jax_config.items():
        problems += field_problem(
            lambda k=key, v=value: _check_jax_flag(k, v, field=join_path("jax_config", k))
        )
    problems += _axis_mapping_problems(config)
    problems += field_problem(lambda: _check_shutdown_at_exit(config))
    if config.profiler and config.profiler_num_steps <= 0:
        problems.append(
            invalid("profiler_num_steps", config.profiler_num_steps, "a number of steps > 0")
        )
    return problems


def _check_train_batch_size(config: TrainerConfig) -> None:
    if isinstance(config.train_batch_size, int):
        if config.train_batch_size <= 0 and config.train_batch_size != -1:
            raise invalid(
                "train_batch_size",
                config.train_batch_size,
                "a positive number of examples, or -1 (per_device_parallelism x the "
                "batch-parallel devices)",
            )
        if config.train_batch_size == -1 and config.per_device_parallelism == -1:
            raise FieldError(
                "train_batch_size",
                "is -1 (per_device_parallelism x the batch-parallel devices), and so is "
                "per_device_parallelism: set one of them to a number of examples",
            )
    else:
        try:
            BatchSchedule(list(config.train_batch_size))  # validates the phases
        except ValueError as e:
            raise FieldError("train_batch_size", str(e)) from None


def _check_shutdown_at_exit(config: TrainerConfig) -> None:
    from lm.launch.shutdown import shutdown_delay_seconds

    try:
        shutdown_delay_seconds(config.shutdown_at_exit)  # bool | non-negative seconds
    except ValueError as e:
        message = str(e).removeprefix("shutdown_at_exit: ")
        raise FieldError("shutdown_at_exit", message) from None


def _float64_problems(config: TrainerConfig) -> list[FieldError]:
    """A float64 mixed-precision policy needs `jax_enable_x64`: without it jax truncates
    every float64 array to float32 with a warning, and the run would train in float32 while
    its config says f64."""
    mp = config.mp
    if not isinstance(mp, jmp.Policy):
        return []
    # read as stored: a HalfPolicy resolves `half` (starting the backend) when asked for it
    read = object.__getattribute__
    dtypes = [read(mp, name) for name in ("param_dtype", "compute_dtype", "output_dtype")]
    if not any(not isinstance(d, str) and np.dtype(d) == np.float64 for d in dtypes):
        return []
    if config.jax_config.get("jax_enable_x64", jax.config.jax_enable_x64):
        return []
    return [
        FieldError(
            "mp",
            "asks for float64, which JAX gives only with x64 enabled (it would train in "
            "float32): set trainer.jax_config: {jax_enable_x64: true}, or use f32",
        )
    ]


def _axis_mapping_problems(config: TrainerConfig) -> list[FieldError]:
    """Each entry the user wrote in `axis_resources` / `parameter_axis_resources`, checked
    at its own path before the derivation could replace (and so hide) it; then, when they
    are all valid, the entries the derivation would replace for good; then the derived
    mappings. (The entries the derivation replaces for parameters only are warnings,
    logged by `__post_init__` once the whole config is valid.)"""
    problems = [
        FieldError(join_path(field, logical), why)
        for field in ("axis_resources", "parameter_axis_resources")
        for logical, physical in getattr(config, field).items()
        if (why := mapping_entry_problem(physical)) is not None
    ]
    if problems:
        return problems
    problems = [
        FieldError(join_path(field, logical), why)
        for field, logical, why in overridden_entries(
            batch_axis=config.batch_axis,
            fsdp_axis=config.fsdp_axis,
            axis_resources=config.axis_resources,
            parameter_axis_resources=config.parameter_axis_resources,
        )
    ]
    if problems:
        return problems
    validate_mapping(config.compute_axis_mapping, field="trainer (compute axis mapping)")
    clash = batch_axis_clash(config.compute_axis_mapping, batch_axis=config.batch_axis)
    if clash is not None:
        return [FieldError(join_path("axis_resources", clash[0]), clash[1])]
    validate_mapping(config.parameter_axis_mapping, field="trainer (parameter axis mapping)")
    return []


def convert_python_forms(config: TrainerConfig) -> list[FieldError]:
    """Accept from Python what a run YAML would say: `mp="p=f32,c=bfloat16"`, and a
    dict (or, for `tracker`, a list of dicts) for a nested config, decoded as the YAML
    section would be (`checkpointer={"base_path": ..., "save_interval": "15m"}`,
    `tracker={"type": "json"}`). Anything else of the wrong type is a TypeError naming
    the field and the type it takes; a policy string that does not parse is returned as
    a problem, reported with the other fields'."""
    from lm.config import decode, parse_policy

    problems: list[FieldError] = []
    if isinstance(config.mp, str):
        try:
            object.__setattr__(config, "mp", parse_policy(config.mp))
        except ValueError as e:
            problems.append(invalid("mp", config.mp, f"a jmp policy string ({e})"))
    elif not isinstance(config.mp, jmp.Policy):
        raise TypeError(
            f"trainer.mp: got {config.mp!r}, expected a jmp.Policy or a policy string such as "
            "'p=f32,c=bfloat16'"
        )
    hints = _field_types()
    for f in dataclasses.fields(config):
        _check_scalar_type(f.name, getattr(config, f.name), hints[f.name])
    for name, cls in _NESTED_CONFIGS.items():
        value = getattr(config, name)
        if isinstance(value, Mapping):
            value = decode(hints[name], value, path=name)
            object.__setattr__(config, name, value)
        elif name == "tracker" and isinstance(value, list | tuple):
            value = tuple(
                decode(cls, v, path=f"{name}[{i}]") if isinstance(v, Mapping) else v
                for i, v in enumerate(value)
            )
        if value is None and name in _OPTIONAL_CONFIGS:
            continue
        if name == "tracker" and isinstance(value, list | tuple):
            object.__setattr__(config, name, tuple(value))
            wrong = [v for v in value if not isinstance(v, cls)]
            if not wrong:
                continue
            value = wrong[0]
        if not isinstance(value, cls):
            optional = " (or None)" if name in _OPTIONAL_CONFIGS else ""
            listed = " or a list of them" if name == "tracker" else ""
            raise TypeError(
                f"trainer.{name}: got {value!r} ({type(value).__name__}), expected a "
                f"{cls.__name__}{listed}{optional}, or a dict of its fields as in a run YAML"
            )
    return problems


# the fields holding a nested config, and the class each takes
_NESTED_CONFIGS: dict[str, type] = {
    "quantization": QuantizationConfig,
    "model_averaging": ModelAveragingConfig,
    "wandb": WandbConfig,
    "tracker": TrackerConfig,
    "watch": WatchConfig,
    "checkpointer": CheckpointerConfig,
    "distributed": DistributedConfig,
    "ray": RayConfig,
}
_OPTIONAL_CONFIGS = {"quantization", "model_averaging", "wandb"}


@functools.cache
def _field_types() -> dict[str, Any]:
    from lm.trainer.config import TrainerConfig

    return typing.get_type_hints(TrainerConfig)


_SCALARS = (bool, int, float, str, type(None))


def _check_scalar_type(name: str, value: Any, tp: Any) -> None:
    """A field annotated with plain scalars (`int`, `float | None`, `str`, ...) given another
    type from Python (a YAML is checked by the decoder): `num_train_steps="10"` failed deep
    in a comparison and `num_train_steps=2.5` trained 3 steps."""
    from lm.config import typeinfo as ti

    tp = ti.strip(tp)
    members = ti.union_members(tp) if ti.is_union(tp) else (tp,)
    if not all(m in _SCALARS for m in members):
        return  # a nested config, a schedule, a mapping: checked where they are decoded
    # numpy scalars count as their Python kind (numbers.Integral / numbers.Real)
    kinds = {int: numbers.Integral, float: numbers.Real, str: str, type(None): type(None)}
    if isinstance(value, bool | np.bool_):
        ok = bool in members
    else:
        ok = any(isinstance(value, kinds[m]) for m in members if m is not bool)
    if not ok:
        names = " or ".join("None" if m is type(None) else m.__name__ for m in members)
        raise TypeError(f"trainer.{name}: got {value!r} ({type(value).__name__}), expected {names}")


def _check_jax_flag(name: str, value: Any, *, field: str) -> None:
    """Raise `FieldError(field, ...)` unless `jax.config.update(name, value)` would accept it:
    `name` is a jax flag (did-you-mean otherwise) and `value` has the flag's type."""
    known = jax.config.values
    if name not in known:
        hint = did_you_mean(name, known, cutoff=0.75) or " (jax.config.values lists them)"
        raise FieldError(field, f"unknown jax config flag {name!r}{hint}")
    # The type of the flag's current value; jax's int, float and str flags also take None.
    current = known[name]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(current, bool):
        ok, expected, kind = isinstance(value, bool), "true or false", "boolean"
    elif isinstance(current, int):
        ok, expected, kind = (
            value is None or (number and isinstance(value, int)),
            "an integer",
            "integer",
        )
    elif isinstance(current, float):
        ok, expected, kind = value is None or number, "a number", "float"
    elif isinstance(current, str):
        ok, expected, kind = value is None or isinstance(value, str), "a string", "string"
    else:  # None (unset) or one of jax's enum objects: the parser below decides
        ok, expected, kind = True, "", ""
    if not ok:
        raise invalid(field, value, f"{expected} ({name} is a {kind} flag)")
    # jax's own parser (enum choices, ...); private, so only where it exists
    parser = getattr(getattr(jax.config, "_value_holders", {}).get(name), "_parser", None)
    if parser is not None:
        try:
            parser(value)
        except (TypeError, ValueError) as e:
            raise FieldError(field, f"got {value!r}, which jax rejects: {e}") from None
