"""`--help` lists every field: each registered choice of a registry, each config of a union,
the fields of optional configs and of configs inside lists and mappings."""

import dataclasses
import re
import typing

import pytest
from config_schemas import TrainCfg, UnionHolder

import lm.config
from lm.config import typeinfo as ti


def test_every_choice_of_a_registry_is_listed_with_what_differs():
    text = lm.config.format_help(TrainCfg, prog="train")
    # the default's (here the config's default value's) fields, then each other choice's
    # fields below its own `type:` line, those it shares with an earlier choice as a note
    assert (
        "    scale_attn_by_inverse_layer_idx: bool = false\n"
        "    type: llama  (shares gradient_checkpointing with type: gpt2; and:)\n"
        "      hidden_dim: int = 4096\n"
        "      num_heads: int = 32\n"
        "      num_kv_heads: int = 32\n"
        "      seq_len: int = 2048\n"
        "  optimizer: OptimizerCfg  (type: adam | lion; default adam)\n"
    ) in text
    assert (
        "    beta1: float = 0.9\n"
        "    type: lion  (shares beta1 with type: adam; and:)\n"
        "      learning_rate: float = 0.0001\n"
        "      beta2: float = 0.99"
    ) in text
    assert (
        "      type: noop\n      type: tensorboard\n        logdir: str = 'tblogs'\n    mp: Policy"
    ) in text


def test_configs_in_unions_lists_and_optionals_list_their_fields():
    text = lm.config.format_help(TrainCfg, prog="train")
    assert (
        "    train_batch_size: int | Sequence[ScheduleStep] = 512  (fields of each ScheduleStep "
        "entry below)\n"
        "      start: int  (required)\n"
        "      value: int  (required)\n"
    ) in text
    assert (
        "    skip_bad_steps: bool | int | SkipStepCfg = false  (fields of SkipStepCfg below)\n"
        "      rolling_window: int = 100\n"
        "      threshold: float = 6.0\n"
    ) in text
    union = lm.config.format_help(UnionHolder)
    assert (
        "  pick: ByKeysA | ByKeysB  (default: ByKeysA, fields below)\n"
        "    alpha: int = 0\n"
        "    shared: int = 0\n"
        "    or ByKeysB  (shares shared with ByKeysA; and:)\n"
        "      beta: int = 0\n"
    ) in union
    # two registries in one union: the second under `or <Class>`
    assert "    or TrackerCfg\n      type: wandb\n      project: str | None = null\n" in union


def _reachable(cls, registries, classes):
    """Every choice registry and every config class reachable from the config class `cls`
    (through choices, unions, optionals, lists and mappings)."""
    origin = typing.get_origin(cls) or cls
    if origin in classes or not dataclasses.is_dataclass(origin):
        return
    classes.add(origin)
    for tp in ti.field_types(cls).values():
        for member in _members(ti.strip(tp)):
            if ti.is_choice(member) and ti.choice_name(member) is None:
                registries[member.__name__] = member
                for choice in member.get_known_choices().values():
                    _reachable(choice, registries, classes)
            elif ti.is_dataclass_type(member) and ti.codec_for(member) is None:
                _reachable(member, registries, classes)


def _members(tp):
    out = []
    for member in ti.union_members(tp) if ti.is_union(tp) else (tp,):
        args = [a for a in typing.get_args(member) if a is not Ellipsis]
        if (ti.list_kind(member) is not None and len(args) == 1) or (
            ti.is_mapping(member) and len(args) == 2
        ):
            member = ti.strip(args[-1])
        out.append(member)
    return out


def test_the_run_config_help_lists_every_field_of_every_choice():
    from lm.main.train_lm import TrainLmConfig

    text = lm.config.format_help(TrainLmConfig)
    registries, classes = {}, set()
    _reachable(TrainLmConfig, registries, classes)
    assert {
        "LmConfig",
        "OptimizerConfig",
        "TrackerConfig",
        "RotaryEmbeddingsConfig",
        "LrSchedule",
        "ModelAveragingConfig",
    } <= set(registries)
    for registry in registries.values():
        for name in registry.get_known_choices():
            assert re.search(rf"^ +type: {name}\b", text, re.M), (registry.__name__, name)
    from lm.tracker.wandb import WandbConfig

    for cls in classes - {TrainLmConfig}:
        for f in dataclasses.fields(cls):
            # a line of its own (a field shared with an earlier choice is listed there)
            if f.init:
                assert re.search(rf"^ +{f.name}: ", text, re.M), (cls.__name__, f.name)
    assert WandbConfig in classes
    for field in (
        "configs: dict[str, LMDatasetSourceConfig]",
        "train_weights: dict[str, float] | list[tuple[int, dict[str, float]]]",
        "sliding_window: int | None = 4096",
        "adam_lr: float = 0.0006",
        "flush_interval_s: float = 10.0",
        "fp8: bool = false",
        "switch_step: int = 100000",
        "batch_size: int  (required)",
        "start: int  (required)",
        "sigma_factor: float = 6.0",
        "sigma_factor: float = 3.0",
        "save_carries: bool | Literal['offload'] = true",
    ):
        assert f"{field}" in text, field
    assert (
        "    type: lion  (as type: adam, without epsilon, nesterov, update_rms_clipping,\n"
        "        clip_update_norm, adamc_weight_decay; and:)\n"
        "      learning_rate: float = 0.0001\n"
    ) in text
    assert "    type: mistral  (as type: llama; and:)\n" in text
    # a deprecated field shows only its own line: its replacement (tracker) lists the fields
    assert re.search(
        r"\n    wandb: WandbConfig \| None = null\n        Deprecated.*\n.*\n    log_dir", text
    )


@pytest.mark.parametrize("name", ["lm.main.train_lm", "lm.main.eval_lm"])
def test_each_entry_point_help_builds(name):
    import importlib

    module = importlib.import_module(name)
    config_classes = [
        v for v in vars(module).values() if isinstance(v, type) and v.__name__.endswith("Config")
    ]
    for cls in config_classes:
        if dataclasses.is_dataclass(cls) and cls.__module__ == name:
            assert lm.config.format_help(cls).count("\n") > 10
