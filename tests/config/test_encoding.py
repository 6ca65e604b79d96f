"""Encoding: YAML round trips for every union shape, save_config, flat hyperparameter dicts."""

import datetime
import pathlib

import fsspec
import jmp
import pytest
import yaml
from config_schemas import (
    AdamCfg,
    Color,
    DataCfg,
    Gpt2Cfg,
    LionCfg,
    LlamaCfg,
    NoopCfg,
    ScanPolicyCfg,
    ScheduleStep,
    SkipStepCfg,
    TensorboardCfg,
    TrainCfg,
    TrainerCfg,
    WandbCfg,
)

from lm.config import decode, load_yaml, parse_policy, save_config, to_flat_dict, to_yaml

CONFIGS = [
    TrainCfg(),
    TrainCfg(
        data=DataCfg(train_urls=["gs://b/x.{1..128}-of-128.jsonl.gz"], cache_dir="c/"),
        trainer=TrainerCfg(
            tracker=(NoopCfg(), WandbCfg(project="p", tags=("a", "b"), mode="offline")),
            mp=parse_policy("p=f32,c=bfloat16"),
            train_batch_size=[ScheduleStep(0, 32), ScheduleStep(100, 64)],
            fsdp_axis=["embed", "mlp"],
            skip_bad_steps=SkipStepCfg(rolling_window=7, threshold=3.0),
            local_device_ids=[0, 1],
            shutdown_at_exit=2.5,
            axis_resources={"batch": ("replica", "data"), "mlp": "model"},
            save_interval=datetime.timedelta(hours=1, minutes=30),
            log_dir=pathlib.Path("/tmp/logs"),
            id="2024",
            color=Color.GREEN,
            jax_config={"a": True, "b": 1, "c": 0.5, "d": "x", "e": None},
            extra={"free": ["form", 1]},
        ),
        model=LlamaCfg(num_heads=8, num_kv_heads=2, gradient_checkpointing="nested"),
        optimizer=AdamCfg(warmup=1, cycles=[100, 200], weight_decay_modules="attn"),
    ),
    TrainCfg(
        trainer=TrainerCfg(
            tracker=TensorboardCfg(logdir="tb"),
            skip_bad_steps=50,
            local_device_ids=3,
            shutdown_at_exit=True,
            fsdp_axis=None,
            mp=parse_policy("bf16"),
            save_interval=datetime.timedelta(milliseconds=1500),
        ),
        model=Gpt2Cfg(gradient_checkpointing=ScanPolicyCfg(save_inputs=True)),
        optimizer=AdamCfg(warmup=0.5, cycle_length=[10, 20], weight_decay_modules=["a", "b"]),
    ),
    TrainCfg(
        trainer=TrainerCfg(skip_bad_steps=True, shutdown_at_exit=1.0, tracker=()),
        model=Gpt2Cfg(gradient_checkpointing=False),
        optimizer=AdamCfg(cycle_length=0.25, warmup=1.0, learning_rate=1.0),
    ),
    TrainCfg(optimizer=LionCfg(beta2=0.95), trainer=TrainerCfg(id="true")),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=range(len(CONFIGS)))
def test_round_trip_through_yaml(cfg):
    text = to_yaml(cfg)
    assert decode(TrainCfg, yaml.safe_load(text)) == cfg


@pytest.mark.parametrize("cfg", CONFIGS, ids=range(len(CONFIGS)))
def test_round_trip_keeps_union_member_types(cfg):
    back = decode(TrainCfg, yaml.safe_load(to_yaml(cfg)))
    for name in ("warmup", "cycle_length"):
        a, b = getattr(cfg.optimizer, name, None), getattr(back.optimizer, name, None)
        assert type(a) is type(b)
    for name in ("skip_bad_steps", "shutdown_at_exit", "local_device_ids", "tracker"):
        assert type(getattr(cfg.trainer, name)) is type(getattr(back.trainer, name))


def test_yaml_shape_is_human_readable():
    text = to_yaml(CONFIGS[1])
    data = yaml.safe_load(text)
    assert data["model"]["type"] == "llama"
    assert data["trainer"]["tracker"][1] == {
        "type": "wandb",
        "project": "p",
        "entity": None,
        "tags": ["a", "b"],
        "mode": "offline",
    }
    assert data["trainer"]["mp"] == "p=f32,c=bf16,o=bf16"
    assert data["trainer"]["save_interval"] == "1h30m"
    assert "  fsdp_axis: [embed, mlp]\n" in text
    assert list(data) == ["data", "trainer", "model", "optimizer"]


def test_save_config_to_memory_and_local(tmp_path):
    cfg = CONFIGS[1]
    url = "memory://lm-config-save/run/config.yaml"
    save_config(cfg, url)
    try:
        assert decode(TrainCfg, load_yaml(url)) == cfg
    finally:
        fsspec.filesystem("memory").rm("/lm-config-save", recursive=True)
    local = tmp_path / "deep" / "dir" / "config.yaml"
    save_config(cfg, local)
    assert decode(TrainCfg, load_yaml(str(local))) == cfg


def test_to_flat_dict():
    flat = to_flat_dict(CONFIGS[1])
    assert flat["model.type"] == "llama"
    assert flat["model.num_kv_heads"] == 2
    assert flat["optimizer.type"] == "adam"
    assert flat["trainer.tracker[0].type"] == "noop"
    assert flat["trainer.tracker[1].project"] == "p"
    assert flat["trainer.tracker[1].tags"] == '["a", "b"]'
    assert flat["trainer.mp"] == "p=f32,c=bf16,o=bf16"
    assert flat["trainer.save_interval"] == "1h30m"
    assert flat["trainer.train_batch_size[1].value"] == 64
    assert flat["trainer.axis_resources.batch"] == '["replica", "data"]'
    assert flat["trainer.skip_bad_steps.rolling_window"] == 7
    assert flat["data.train_urls"] == '["gs://b/x.{1..128}-of-128.jsonl.gz"]'
    assert flat["trainer.extra.free"] == '["form", 1]'
    for key, value in flat.items():
        assert isinstance(value, str | int | float | bool | type(None)), key
    assert (
        to_flat_dict(TrainCfg(trainer=TrainerCfg(axis_resources={})))["trainer.axis_resources"]
        == "{}"
    )


def test_jmp_policy_default_round_trips():
    cfg = TrainerCfg(mp=jmp.get_policy("p=f32,c=bf16"))
    assert decode(TrainerCfg, yaml.safe_load(to_yaml(cfg))) == cfg


def test_str_enum_fields_encode_to_their_names():
    import dataclasses
    import enum

    import yaml

    from lm.config import decode, to_yaml

    class Act(enum.StrEnum):
        gelu_new = "gelu_new"
        silu = "silu"

    @dataclasses.dataclass(frozen=True)
    class WithEnum:
        act: Act = Act.gelu_new

    text = to_yaml(WithEnum(Act.silu))
    assert yaml.safe_load(text) == {"act": "silu"}
    assert decode(WithEnum, yaml.safe_load(text)) == WithEnum(Act.silu)
