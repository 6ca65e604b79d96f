"""Never lose a run: kill `train_lm` (SIGKILL at random moments, including mid-save, and
SIGTERM), resume each time, and compare with an uninterrupted run bit for bit."""

import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from run_helpers import run_train_lm, step_losses, tiny_run_yaml, write_tiny_corpus

from lm.checkpoint import discover_latest_checkpoint, load_checkpoint

STEPS = 30
# Checkpoint often (every 2 steps permanently, and by time) so kills land around saves.
CHECKPOINTING = {"base_path": None, "keep": [{"every": 2}], "save_interval": "1s"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def _config(tmp, corpus):
    ckpt = dict(CHECKPOINTING, base_path=str(tmp / "ckpt"))
    return tiny_run_yaml(tmp, corpus, steps=STEPS, steps_per_eval=1000, checkpointer=ckpt)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, subprocess_env):
    tmp = tmp_path_factory.mktemp("reference")
    run_train_lm(_config(tmp, corpus), subprocess_env)
    return tmp


def _start(config, env, log_path):
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lm.main.train_lm", "--config_path", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, log


def _wait_for(predicate, proc, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError("train_lm did not reach the kill point in time")


def _final_state_leaves(tmp):
    path = discover_latest_checkpoint(str(tmp / "ckpt" / "tiny"))
    return jax.tree_util.tree_leaves(
        load_checkpoint(None, path, discover_latest=False, subpath="model")
    )


def _assert_same_run(tmp, reference):
    losses, expected = step_losses(tmp / "logs"), step_losses(reference / "logs")
    assert sorted(losses) == list(range(STEPS))
    for step, values in losses.items():
        # every time a step ran (again, after a restart) it gave exactly the same loss
        assert set(values) == {expected[step][0]}, (step, values, expected[step])
    for a, b in zip(_final_state_leaves(tmp), _final_state_leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _saves_started(log_path) -> int:
    return log_path.read_text(errors="replace").count("Saving ")


def _sigkill_trials(tmp, corpus, env, reference, trials, seed):
    rng = random.Random(seed)
    config = _config(tmp, corpus)
    log_path = tmp / "train.log"
    kills = 0
    while kills < trials:
        proc, log = _start(config, env, log_path)
        try:
            before = _saves_started(log_path)
            if rng.random() < 0.4:
                # mid-save: kill as soon as a new save starts
                reached = _wait_for(lambda b=before: _saves_started(log_path) > b, proc)
            else:
                delay = rng.uniform(0.0, 6.0)
                reached = _wait_for(lambda: False, proc, timeout=delay) if delay else True
        except TimeoutError:
            reached = True
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            log.close()
        if not reached and proc.returncode == 0:
            break  # it finished before we could kill it: the run is done
    run_train_lm(config, env)  # resume to completion
    _assert_same_run(tmp, reference)


@pytest.mark.entry
def test_sigkill_at_random_moments_loses_nothing(tmp_path, corpus, subprocess_env, reference):
    _sigkill_trials(tmp_path, corpus, subprocess_env, reference, trials=3, seed=0)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.entry
def test_sigkill_ten_trials_loses_nothing(tmp_path, corpus, subprocess_env, reference):
    _sigkill_trials(tmp_path, corpus, subprocess_env, reference, trials=10, seed=1)


@pytest.mark.entry
def test_sigterm_checkpoints_the_current_step_then_resume_finishes(
    tmp_path, corpus, subprocess_env, reference
):
    config = _config(tmp_path, corpus)
    # no time-based saves, so the checkpoint after SIGTERM can only come from the signal
    config.write_text(config.read_text().replace("save_interval: 1s", "save_interval: 1h"))
    log_path = tmp_path / "train.log"
    proc, log = _start(config, subprocess_env, log_path)
    try:
        metrics = tmp_path / "logs" / "tiny" / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and '"step": 5,' in metrics.read_text(), proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        log.close()
    output = log_path.read_text()
    assert "Run tiny: Preempted (signal 15) after step " in output
    assert "Traceback" not in output
    saved = discover_latest_checkpoint(str(tmp_path / "ckpt" / "tiny"))
    assert saved is not None and not saved.endswith(
        ("step-1", "step-3")
    )  # an odd step: the signal's
    run_train_lm(config, subprocess_env)
    _assert_same_run(tmp_path, reference)
