"""One process of a 2-process checkpoint save (run by test_checkpoint_multiprocess.py).

Usage: python multiprocess_worker.py <process_id> <coordinator port> <checkpoint dir>

Each process has 4 CPU devices; together they hold an 8-way sharded array (each process
owns half of the rows) and a replicated one. Both processes save with a Checkpointer
(process 0 decides, the decision is broadcast); the parent process then loads the
checkpoint on one process and checks every value.
"""

import datetime
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402


def main() -> None:
    process_id, port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    from lm.checkpoint import Checkpointer, CheckpointInterval
    from lm.trainer.state import StepInfo, TrainerState

    assert jax.process_count() == 2 and len(jax.devices()) == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    full = np.arange(16 * 6, dtype=np.float32).reshape(16, 6)
    sharded = jax.make_array_from_callback(
        full.shape, NamedSharding(mesh, P("data", None)), lambda idx: full[idx]
    )
    replicated = jax.make_array_from_callback(
        (3,), NamedSharding(mesh, P()), lambda idx: np.array([1.0, 2.0, 3.0], np.float32)[idx]
    )
    state = TrainerState(
        step=jnp.asarray(5, dtype=jnp.int32),
        model={"w": sharded, "b": replicated},
        opt_state=(),
        training_key=jax.random.PRNGKey(0),
    )
    # Skewed clocks: only process 0's decision counts.
    clock = [datetime.datetime(2021, 1, 1)]
    ckpt = Checkpointer(
        path,
        datetime.timedelta(seconds=50),
        [CheckpointInterval(1000)],
        dt_now_injection=lambda: clock[0],
    )
    clock[0] += datetime.timedelta(seconds=100 * process_id)
    ckpt.on_step(StepInfo(state=state, loss=0.0, step_duration=0.0))  # no save: 0 s passed
    ckpt.on_step(StepInfo(state=state, loss=0.0, step_duration=0.0), force=True)
    ckpt.wait_until_finished()
    print(f"process {process_id} done", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
