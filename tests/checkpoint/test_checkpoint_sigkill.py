"""SIGKILL a checkpointing loop at random moments (some mid-save) and resume each time.

After every kill the newest loadable checkpoint must hold exactly the state of its step,
progress must never go backwards, and the finished run must equal an uninterrupted one
bit for bit. The trainer-level version (train_lm, data loader, loss sequence) lives
with the trainer tests.
"""

import pathlib
import random
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sigkill_worker

from lm.checkpoint import load_checkpoint

WORKER = pathlib.Path(__file__).with_name("sigkill_worker.py")
NUM_STEPS = 16


@pytest.fixture(scope="module")
def reference():
    """w after s updates, for every s."""
    w = sigkill_worker.initial()
    out = [np.asarray(w)]
    for step in range(NUM_STEPS):
        w = sigkill_worker.update(w, jnp.asarray(step))
        out.append(np.asarray(w))
    return out


def _exemplar():
    return {
        "step": jnp.zeros((), jnp.int32),
        "model": {"w": jnp.zeros((sigkill_worker.SIZE,), jnp.float32)},
        "training_key": jax.random.PRNGKey(0),
    }


def _run_and_kill(run, env, rng, mid_save):
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(run), str(NUM_STEPS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    timer = None
    lines = []
    saves = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.strip())
        if not line.startswith("saving"):
            continue
        saves += 1
        if mid_save and saves == 2:
            # A save waits for the previous commit, so save 1 is committed and save 2's
            # commit thread is writing right now.
            proc.kill()
            break
        if not mid_save and saves == 1:
            timer = threading.Timer(rng.uniform(0.0, 1.5), proc.kill)
            timer.start()
    proc.wait(timeout=120)
    if timer is not None:
        timer.cancel()
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
    assert proc.returncode in (0, -9), stderr[-3000:]
    return lines


def _check_latest(run, reference):
    restored = load_checkpoint(_exemplar(), str(run))
    step = int(restored["step"])
    np.testing.assert_array_equal(np.asarray(restored["model"]["w"]), reference[step])
    return step


def _trials(tmp_path, subprocess_env, reference, num_trials):
    rng = random.Random(1234)
    run = tmp_path / "run"
    env = dict(subprocess_env)
    last = 0
    for trial in range(num_trials):
        lines = _run_and_kill(run, env, rng, mid_save=trial % 2 == 0)
        if trial > 0:
            assert lines and lines[0].startswith("resumed"), lines[:3]
        if "done" in lines:
            break
        step = _check_latest(run, reference)
        assert step >= last, f"progress went backwards: {last} -> {step}"
        last = step
    final = subprocess.run(
        [sys.executable, str(WORKER), str(run), str(NUM_STEPS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert final.stdout.strip().endswith("done")
    assert _check_latest(run, reference) == NUM_STEPS


def test_sigkill_trials(tmp_path, subprocess_env, reference):
    _trials(tmp_path, subprocess_env, reference, num_trials=3)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_many_trials(tmp_path, subprocess_env, reference):
    _trials(tmp_path, subprocess_env, reference, num_trials=12)
