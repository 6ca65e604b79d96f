"""Reference cases (REFERENCE_CASES §3) and the spec's example run YAML (CFG-03)."""

import datetime

import fsspec
import jax.numpy as jnp
import yaml
from config_schemas import (
    AdamCfg,
    DataCfg,
    Gpt2Cfg,
    SimpleCfg,
    TrainCfg,
    WandbCfg,
)

import lm.config


def test_main_wrapper_loads_from_fsspec():
    with fsspec.open("memory://test.yaml", "w") as f:
        f.write("project: test\n")
    seen = []

    def entry(config: SimpleCfg):
        seen.append(config)
        return "ran"

    try:
        result = lm.config.main(entry)(args=["--config_path", "memory://test.yaml", "--x", "2"])
    finally:
        fsspec.filesystem("memory").rm("/test.yaml")
    assert result == "ran"
    (config,) = seen
    assert config.project == "test"
    assert config.x == 2


# levanter-configuration.txt lines 20-48, verbatim.
EXAMPLE_RUN_YAML = """\
data:
    train_urls:
      - "gs://my_bucket/openwebtext-sharded/openwebtext_train.{1..128}-of-128.jsonl.gz"
    validation_urls:
      - "gs://my_bucket/openwebtext-sharded/openwebtext_val.{1..8}-of-8.jsonl.gz"
    cache_dir: "gs://my_bucket/tokenized/openwebtext_2/"
model:
  type: gpt2
  hidden_dim: 768
  num_heads: 12
  num_layers: 12
  seq_len: 1024
  gradient_checkpointing: true
  scale_attn_by_inverse_layer_idx: true
trainer:
  tracker:
    type: wandb
    project: "levanter"
    tags: [ "openwebtext", "gpt2"]

  mp: p=f32,c=bfloat16
  model_axis_size: 1
  per_device_parallelism: 4

  train_batch_size: 512
optimizer:
  learning_rate: 6E-4
  weight_decay: 0.1
  min_lr_ratio: 0.1
"""


def test_example_yaml_parses_exactly_as_written(tmp_path):
    path = tmp_path / "my-run.yaml"
    path.write_text(EXAMPLE_RUN_YAML)
    cfg = lm.config.parse(TrainCfg, str(path))
    assert cfg.data == DataCfg(
        train_urls=[
            "gs://my_bucket/openwebtext-sharded/openwebtext_train.{1..128}-of-128.jsonl.gz"
        ],
        validation_urls=["gs://my_bucket/openwebtext-sharded/openwebtext_val.{1..8}-of-8.jsonl.gz"],
        cache_dir="gs://my_bucket/tokenized/openwebtext_2/",
    )
    assert cfg.model == Gpt2Cfg(
        hidden_dim=768,
        num_heads=12,
        num_layers=12,
        seq_len=1024,
        gradient_checkpointing=True,
        scale_attn_by_inverse_layer_idx=True,
    )
    assert cfg.trainer.tracker == WandbCfg(project="levanter", tags=("openwebtext", "gpt2"))
    _assert_example_trainer(cfg.trainer)
    assert cfg.optimizer == AdamCfg(learning_rate=6e-4, weight_decay=0.1, min_lr_ratio=0.1)
    assert type(cfg.optimizer.learning_rate) is float
    assert cfg.trainer.save_interval == datetime.timedelta(minutes=15)


def _assert_example_trainer(trainer) -> None:
    """The example's trainer fields that the look-alike schema and TrainerConfig share."""
    mp = trainer.mp
    assert (mp.param_dtype, mp.compute_dtype, mp.output_dtype) == (
        jnp.float32,
        jnp.bfloat16,
        jnp.bfloat16,
    )
    assert trainer.model_axis_size == 1
    assert trainer.per_device_parallelism == 4
    assert trainer.train_batch_size == 512


def test_example_yaml_round_trips():
    cfg = lm.config.decode(TrainCfg, yaml.safe_load(EXAMPLE_RUN_YAML))
    assert lm.config.decode(TrainCfg, yaml.safe_load(lm.config.to_yaml(cfg))) == cfg


def test_example_yaml_parses_into_the_real_run_config(tmp_path):
    """The same YAML through `lm.main.train_lm.TrainLmConfig`, not the look-alike schema."""
    from lm.main.train_lm import TrainLmConfig
    from lm.models import Gpt2Config
    from lm.optim import AdamConfig
    from lm.tracker import WandbConfig

    path = tmp_path / "my-run.yaml"
    path.write_text(EXAMPLE_RUN_YAML)
    cfg = lm.config.parse(TrainLmConfig, str(path))
    assert cfg.data.train_urls == [
        "gs://my_bucket/openwebtext-sharded/openwebtext_train.{1..128}-of-128.jsonl.gz"
    ]
    assert cfg.data.validation_urls == [
        "gs://my_bucket/openwebtext-sharded/openwebtext_val.{1..8}-of-8.jsonl.gz"
    ]
    assert cfg.data.cache_dir == "gs://my_bucket/tokenized/openwebtext_2/"
    assert cfg.model == Gpt2Config(
        hidden_dim=768,
        num_heads=12,
        num_layers=12,
        seq_len=1024,
        gradient_checkpointing=True,
        scale_attn_by_inverse_layer_idx=True,
    )
    assert cfg.trainer.tracker == WandbConfig(project="levanter", tags=["openwebtext", "gpt2"])
    _assert_example_trainer(cfg.trainer)
    assert cfg.optimizer == AdamConfig(learning_rate=6e-4, weight_decay=0.1, min_lr_ratio=0.1)
    assert type(cfg.optimizer.learning_rate) is float
    assert cfg.trainer.checkpointer.save_interval == datetime.timedelta(minutes=15)
    assert lm.config.decode(TrainLmConfig, yaml.safe_load(lm.config.to_yaml(cfg))) == cfg
