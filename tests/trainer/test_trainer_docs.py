"""The worked examples of docs/trainer.md: the custom `type:` file registers, parses from a
run config only once imported, and its optimizer does what it says."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import lm.config
from lm.config import ConfigError
from lm.main.train_lm import TrainLmConfig
from lm.optim import OptimizerConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "trainer.md"


def _titled_block(title: str) -> str:
    (block,) = re.findall(rf'```python title="{re.escape(title)}"\n(.*?)```', DOC.read_text(), re.S)
    return block


@pytest.fixture
def my_optim(tmp_path):
    """The doc's my_optim.py, imported as a module (its registration undone afterwards)."""
    path = tmp_path / "my_optim.py"
    path.write_text(_titled_block("my_optim.py"))
    spec = importlib.util.spec_from_file_location("my_optim", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        OptimizerConfig._choice_registry.pop("sign_sgd", None)
        sys.modules.pop("my_optim", None)


def _parse(*args: str) -> TrainLmConfig:
    return lm.config.parse(TrainLmConfig, str(ROOT / "config" / "gpt2_nano.yaml"), list(args))


def test_a_type_is_unknown_until_its_module_is_imported(my_optim):
    OptimizerConfig._choice_registry.pop("sign_sgd")
    with pytest.raises(ConfigError, match="unknown OptimizerConfig type 'sign_sgd'"):
        _parse("--optimizer.type", "sign_sgd")


def test_the_doc_optimizer_parses_builds_and_steps_by_the_sign(my_optim):
    config = _parse(
        "--optimizer.type", "sign_sgd", "--optimizer.learning_rate", "0.5",
        "--optimizer.warmup", "0", "--optimizer.weight_decay", "0",
    )  # fmt: skip
    assert type(config.optimizer) is my_optim.SignSgdConfig
    assert "type: sign_sgd" in lm.config.to_yaml(config)
    optimizer = config.optimizer.build(10)
    params = {"w": jnp.ones(4)}
    grads = {"w": jnp.array([0.3, -2.0, 0.0, 1e-6])}
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.5 * np.sign(grads["w"]), rtol=1e-6)
    assert callable(my_optim.lm.config.main(my_optim.train_lm.main))


@pytest.mark.entry
def test_the_inference_example_loads_a_train_lm_checkpoint(tmp_path, subprocess_env):
    """The "Using a trained model from Python" block, on a 2-step tiny GPT-2 `train_lm` run."""
    import json
    import subprocess

    words = "alpha beta gamma delta def return import class while for if else".split()
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        docs = [" ".join(rng.choice(words, size=20)) + "\n" for _ in range(40)]
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": d}) + "\n" for d in docs)
        )
    (tmp_path / "run.yaml").write_text(
        f"""\
data: {{train_urls: ["{tmp_path}/train.jsonl"], validation_urls: ["{tmp_path}/validation.jsonl"],
       cache_dir: {tmp_path}/cache, tokenizer: builtin, cache_options: {{backend: local}}}}
model: {{type: gpt2, seq_len: 32, hidden_dim: 32, num_layers: 2, num_heads: 2}}
trainer:
  id: inf
  num_train_steps: 2
  train_batch_size: 8
  max_eval_batches: 0
  require_accelerator: false
  log_dir: {tmp_path}/logs
  tracker: {{type: json}}
  watch: {{interval: 0}}
  model_averaging: {{type: ema, beta: 0.5}}
  checkpointer: {{base_path: {tmp_path}/ckpt}}
"""
    )
    train = [sys.executable, "-m", "lm.main.train_lm", "--config_path", str(tmp_path / "run.yaml")]
    subprocess.run(train, env=subprocess_env, check=True, capture_output=True, timeout=600)
    i = DOC.read_text().index("## Using a trained model from Python")
    block = re.findall(r"```python\n(.*?)```", DOC.read_text()[i:], re.S)[0]
    block = block.replace("logs/<run_id>/", f"{tmp_path}/logs/inf/")
    block = block.replace("checkpoints/<run_id>", f"{tmp_path}/ckpt/inf")
    block += "\nprint('RESULT', [(a.name, a.size) for a in logits.axes], step_dir)\n"
    out = subprocess.run(
        [sys.executable, "-c", block],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"RESULT [('position', 3), ('vocab', 8192)] {tmp_path}/ckpt/inf/step-1" in out.stdout
