"""Two jax processes (4 CPU devices each) save one checkpoint; one process loads it."""

import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lm.checkpoint import list_checkpoints, load_checkpoint

WORKER = pathlib.Path(__file__).with_name("multiprocess_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_process_save_restores_on_one_process(tmp_path, subprocess_env):
    run = tmp_path / "run"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(port), str(run)],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append(out)
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]

    # Process 0's clock said "no temporary save yet"; process 1's (skewed) clock said
    # yes. Only the forced save at step 4 exists, so the decision was broadcast.
    statuses = list_checkpoints(str(run))
    assert [(s.step, s.complete, s.is_temporary) for s in statuses] == [(4, True, False)]
    exemplar = {
        "step": jnp.zeros((), jnp.int32),
        "model": {"w": jnp.zeros((16, 6)), "b": jnp.zeros(3)},
        "training_key": jax.random.PRNGKey(1),
    }
    restored = load_checkpoint(exemplar, str(run), subpath=None, allow_partial=False)
    np.testing.assert_array_equal(
        restored["model"]["w"], np.arange(16 * 6, dtype=np.float32).reshape(16, 6)
    )
    np.testing.assert_array_equal(restored["model"]["b"], [1.0, 2.0, 3.0])
    assert int(restored["step"]) == 5
