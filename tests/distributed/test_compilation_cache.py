"""`trainer.jax_compilation_cache_dir` (issue 9, item 7): a run fills the directory, and a
second start of the same run loads its train step from it instead of compiling.

Each start is a fresh process (the cache is persistent, not in-memory); jax's monitoring
events count cache hits and misses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.entry

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, haliax as hax, numpy as np, optax
from lm.data import ListDataset
from lm.tracker import NoopConfig
from lm.trainer import Trainer, TrainerConfig

events = {"hits": 0, "misses": 0}
def listen(name, **kwargs):
    if name == "/jax/compilation_cache/cache_hits":
        events["hits"] += 1
    elif name == "/jax/compilation_cache/cache_misses":
        events["misses"] += 1
jax.monitoring.register_event_listener(listen)

config = TrainerConfig(
    jax_compilation_cache_dir=sys.argv[1],
    # cache even sub-second compiles (the default threshold is 1 s)
    jax_config={"jax_threefry_partitionable": True,
                "jax_persistent_cache_min_compile_time_secs": 0},
    num_train_steps=3, train_batch_size=4, require_accelerator=False, tracker=NoopConfig(),
    log_dir=sys.argv[2], id="cache", log_jaxprs=False, log_xla_hlo=False,
)
config.initialize()
Feature = hax.Axis("feature", 4)
rng = np.random.default_rng(0)
data = ListDataset([hax.named(rng.normal(size=4).astype(np.float32), Feature) for _ in range(12)])

def loss(w, x):
    return hax.mean((hax.dot(x, w, axis=Feature) - 1.0) ** 2).scalar()

trainer = Trainer(config, optax.sgd(0.1), loss, add_default_hooks=False)
with trainer:
    state = trainer.initial_state(jax.random.PRNGKey(0), model=hax.zeros(Feature))
    info = trainer.train(state, trainer.data_loader(data))
print("RESULT " + json.dumps({**events, "loss": float(info.loss)}))
"""


def _start(script, cache, tmp_path, env) -> dict:
    proc = subprocess.run(
        [sys.executable, str(script), str(cache), str(tmp_path / "logs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def test_second_start_loads_compiled_steps_from_the_cache(tmp_path, subprocess_env):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    cache = tmp_path / "jax-cache"
    cold = _start(script, cache, tmp_path, subprocess_env)
    entries = sorted(p.name for p in cache.iterdir())
    assert cold["hits"] == 0 and cold["misses"] >= 2  # at least the init and the train step
    assert len(entries) >= cold["misses"], entries
    warm = _start(script, cache, tmp_path, subprocess_env)
    assert warm["misses"] == 0 and warm["hits"] == cold["misses"], (cold, warm)
    assert warm["loss"] == cold["loss"]
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing new was compiled
