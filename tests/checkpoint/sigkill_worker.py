"""A tiny deterministic "training" loop that checkpoints and resumes (for test_checkpoint_sigkill.py).

Usage: python sigkill_worker.py <run dir> <num steps>

The state after step s is a pure function of s, so the test can check a resumed run
against an uninterrupted one bit for bit. Prints `resumed <step>` / `fresh`, then
`saving <step>` whenever a save is in flight after `on_step`, and `done` at the end.
"""

import datetime
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

SIZE = 1 << 22  # 16 MiB of float32: saves take long enough to be killed mid-way


@jax.jit
def update(w, step):
    return w * 0.999 + jnp.sin(step.astype(jnp.float32) + jnp.arange(w.shape[0]) * 1e-3)


def initial():
    return jnp.zeros((SIZE,), jnp.float32)


def main() -> None:
    run_dir, num_steps = sys.argv[1], int(sys.argv[2])
    from lm.checkpoint import Checkpointer, CheckpointInterval
    from lm.trainer.state import StepInfo, TrainerState

    def make_state(step, w):
        return TrainerState(
            step=jnp.asarray(step, jnp.int32),
            model={"w": w},
            opt_state=(),
            training_key=jax.random.PRNGKey(0),
        )

    ckpt = Checkpointer(run_dir, datetime.timedelta(milliseconds=1), [CheckpointInterval(5)])
    state = ckpt.load_checkpoint(make_state(0, initial()))
    if state is None:
        state = make_state(0, initial())
        print("fresh", flush=True)
    else:
        print(f"resumed {int(state.step)}", flush=True)
    w = state.model["w"]
    for step in range(int(state.step), num_steps):
        w = update(w, jnp.asarray(step))
        info = StepInfo(state=make_state(step + 1, w), loss=0.0, step_duration=0.0)
        ckpt.on_step(info, force=step == num_steps - 1)
        if ckpt.is_saving:
            print(f"saving {step}", flush=True)
    ckpt.wait_until_finished()
    print("done", flush=True)


if __name__ == "__main__":
    main()
