"""Test-local config dataclasses mirroring the shapes of the real run config.

They cover every union of CHECKLIST CFG-06, choice registries with and without a default,
codecs (durations, jmp policies, paths), enums, literals and `__post_init__` validation.
Module-level so their annotations resolve.
"""

import abc
import dataclasses
import datetime
import enum
import pathlib
import typing
from typing import Any, Literal

import draccus
import jmp

import lm.config
from lm.schedule import IntSchedule, ScheduleStep


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@dataclasses.dataclass(frozen=True)
class TrackerCfg(draccus.ChoiceRegistry, abc.ABC):
    @classmethod
    def default_choice_name(cls) -> str | None:
        return "wandb"


@TrackerCfg.register_subclass("wandb")
@dataclasses.dataclass(frozen=True)
class WandbCfg(TrackerCfg):
    project: str | None = None
    entity: str | None = None
    tags: tuple[str, ...] = ()
    mode: Literal["online", "offline", "disabled"] = "online"


@TrackerCfg.register_subclass("noop")
@dataclasses.dataclass(frozen=True)
class NoopCfg(TrackerCfg):
    pass


@TrackerCfg.register_subclass("tensorboard")
@dataclasses.dataclass(frozen=True)
class TensorboardCfg(TrackerCfg):
    logdir: str = "tblogs"


@dataclasses.dataclass(frozen=True)
class SkipStepCfg:
    rolling_window: int = 100
    threshold: float = 6.0


@dataclasses.dataclass(frozen=True)
class ScanPolicyCfg:
    save_carries: bool = True
    save_inputs: bool = False


@dataclasses.dataclass(frozen=True)
class ModelCfg(draccus.ChoiceRegistry):
    """A model registry without a default choice: `type:` is required."""


@ModelCfg.register_subclass("gpt2")
@dataclasses.dataclass(frozen=True)
class Gpt2Cfg(ModelCfg):
    hidden_dim: int = 768
    """Width of the residual stream."""
    num_heads: int = 12
    num_layers: int = 12
    seq_len: int = 1024
    gradient_checkpointing: bool | str | ScanPolicyCfg = True
    """Remat: a bool, a named policy, or a scan policy mapping."""
    scale_attn_by_inverse_layer_idx: bool = False


@ModelCfg.register_subclass("llama")
@dataclasses.dataclass(frozen=True)
class LlamaCfg(ModelCfg):
    hidden_dim: int = 4096
    num_heads: int = 32
    num_kv_heads: int = 32
    seq_len: int = 2048
    gradient_checkpointing: bool | str | ScanPolicyCfg = True

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads != 0:
            raise lm.config.invalid(
                "num_kv_heads", self.num_kv_heads, f"a divisor of num_heads ({self.num_heads})"
            )


@dataclasses.dataclass(frozen=True)
class OptimizerCfg(draccus.ChoiceRegistry):
    @classmethod
    def default_choice_name(cls) -> str | None:
        return "adam"


@OptimizerCfg.register_subclass("adam")
@dataclasses.dataclass(frozen=True)
class AdamCfg(OptimizerCfg):
    learning_rate: float = 6e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.1
    warmup: int | float = 0.01
    cycles: int | list[int] | None = None
    cycle_length: int | float | list[int] | None = None
    weight_decay_modules: str | list[str] | None = None
    beta1: float = 0.9

    def __post_init__(self):
        if self.cycles is not None and self.cycle_length is not None:
            raise ValueError("Can't use both cycle_length and cycles.")
        if self.warmup < 0:
            raise lm.config.invalid("warmup", self.warmup, "a step count or fraction >= 0")


@OptimizerCfg.register_subclass("lion")
@dataclasses.dataclass(frozen=True)
class LionCfg(OptimizerCfg):
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99


@dataclasses.dataclass(frozen=True)
class DataCfg:
    train_urls: list[str] = dataclasses.field(default_factory=list)
    validation_urls: list[str] = dataclasses.field(default_factory=list)
    cache_dir: str = "cache/"
    tokenizer: str = "gpt2"


@dataclasses.dataclass(frozen=True)
class TrainerCfg:
    tracker: TrackerCfg | tuple[TrackerCfg, ...] = dataclasses.field(default_factory=WandbCfg)
    """One tracker, or a list of them."""
    mp: jmp.Policy = jmp.get_policy("f32")
    """Mixed-precision policy."""
    model_axis_size: int = 1
    per_device_parallelism: int = -1
    train_batch_size: int | IntSchedule = 512
    num_train_steps: int = 400_000
    fsdp_axis: str | list[str] | None = "embed"
    skip_bad_steps: bool | int | SkipStepCfg = False
    local_device_ids: int | list[int] | None = None
    shutdown_at_exit: bool | float = False
    axis_resources: dict[str, str | tuple[str, ...]] = dataclasses.field(default_factory=dict)
    save_interval: datetime.timedelta = datetime.timedelta(minutes=15)
    log_dir: pathlib.Path = pathlib.Path("logs")
    id: str | None = None
    seed: int = 0
    color: Color = Color.RED
    jax_config: dict[str, str | int | float | bool | None] = dataclasses.field(
        default_factory=lambda: {"jax_threefry_partitionable": True}
    )
    extra: Any = None


@dataclasses.dataclass(frozen=True)
class TrainCfg:
    data: DataCfg = dataclasses.field(default_factory=DataCfg)
    trainer: TrainerCfg = dataclasses.field(default_factory=TrainerCfg)
    model: ModelCfg = dataclasses.field(default_factory=Gpt2Cfg)
    optimizer: OptimizerCfg = dataclasses.field(default_factory=AdamCfg)


@dataclasses.dataclass(frozen=True)
class SimpleCfg:
    """The reference case's config: a project name and an int."""

    project: str = "default"
    x: int = 1


__all__ = [
    "AdamCfg",
    "AlphaPlugin",
    "BetaPlugin",
    "ByKeysA",
    "ByKeysB",
    "PluginCfg",
    "UnionHolder",
    "Color",
    "DataCfg",
    "Gpt2Cfg",
    "LionCfg",
    "LlamaCfg",
    "ModelCfg",
    "NoopCfg",
    "OptimizerCfg",
    "ScanPolicyCfg",
    "ScheduleStep",
    "SimpleCfg",
    "SkipStepCfg",
    "TensorboardCfg",
    "TrackerCfg",
    "TrainCfg",
    "TrainerCfg",
    "WandbCfg",
]


@dataclasses.dataclass(frozen=True)
class PluginCfg(draccus.PluginRegistry, discover_packages_path="lm.config"):
    """A plugin registry; discovery imports the (side-effect free) `lm.config` modules."""

    @classmethod
    def default_choice_name(cls) -> str | None:
        return "alpha"


@PluginCfg.register_subclass("alpha")
@dataclasses.dataclass(frozen=True)
class AlphaPlugin(PluginCfg):
    a: int = 1


@PluginCfg.register_subclass("beta")
@dataclasses.dataclass(frozen=True)
class BetaPlugin(PluginCfg):
    b: str = "x"


@dataclasses.dataclass(frozen=True)
class ByKeysA:
    alpha: int = 0
    shared: int = 0


@dataclasses.dataclass(frozen=True)
class ByKeysB:
    beta: int = 0
    shared: int = 0


@dataclasses.dataclass(frozen=True)
class UnionHolder:
    pick: ByKeysA | ByKeysB = dataclasses.field(default_factory=ByKeysA)
    plugin: PluginCfg = dataclasses.field(default_factory=AlphaPlugin)
    either: OptimizerCfg | TrackerCfg | None = None
    json_atoms: "typing.Mapping[str, str | int | float | bool | None]" = dataclasses.field(
        default_factory=dict
    )
    maybe_steps: int | None = None
