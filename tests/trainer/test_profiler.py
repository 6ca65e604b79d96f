"""The profiler hook (TRN-14): a JAX trace of the configured steps under
`<run_dir>/profiler/plugins/profile/<timestamp>/`, read back from its trace JSON."""

import gzip
import json
import pathlib

import jax
import optax
import pytest
from toy import Mlp, make_dataset, mse, trainer_config

from lm.trainer import Trainer
from lm.trainer.default_hooks import ProfilerHook


def _traced_steps(profile_dir: pathlib.Path) -> list[int]:
    """The `step_num` of every `train` step annotation in the trace files (the Chrome-trace
    JSON JAX writes beside the XPlane file; reading the XPlane back through
    `jax.profiler.ProfileData` aborted the process on jax 0.11.2)."""
    files = sorted(profile_dir.glob("plugins/profile/*/*.trace.json.gz"))
    assert files, f"no trace under {profile_dir}: {sorted(profile_dir.rglob('*'))}"
    assert sorted(profile_dir.glob("plugins/profile/*/*.xplane.pb"))  # what TensorBoard reads
    steps = []
    for file in files:
        events = json.loads(gzip.decompress(file.read_bytes()))["traceEvents"]
        steps += [int(e["args"]["step_num"]) for e in events if e.get("name") == "train"]
    return sorted(steps)


@pytest.mark.parametrize(
    "start, num_steps, expected",
    [
        (0, 2, [0, 1]),  # from the very first step
        (1, 2, [1, 2]),
        (3, 100, [3]),  # clamped to the run's 4 steps
    ],
)
def test_trace_holds_the_configured_steps(tmp_path, start, num_steps, expected):
    config = trainer_config(
        tmp_path,
        num_train_steps=4,
        steps_per_eval=100,
        profiler=True,
        profiler_start_step=start,
        profiler_num_steps=num_steps,
    )
    trainer = Trainer(config, optax.sgd(0.1), mse)
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(0), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
        )
        trainer.train(state, trainer.data_loader(make_dataset()))
    assert _traced_steps(pathlib.Path(config.run_dir) / "profiler") == expected


def test_a_resumed_run_starting_at_the_window_traces_from_its_first_step(tmp_path):
    first = trainer_config(tmp_path, num_train_steps=2, steps_per_eval=100)
    init = lambda: Mlp.init(key=jax.random.PRNGKey(0))  # noqa: E731
    trainer = Trainer(first, optax.sgd(0.1), mse)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(0), model_init=init)
        trainer.train(state, trainer.data_loader(make_dataset()))
    resumed = trainer_config(
        tmp_path, num_train_steps=4, steps_per_eval=100, profiler=True, profiler_start_step=2
    )
    trainer = Trainer(resumed, optax.sgd(0.1), mse)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(0), model_init=init)
        assert int(state.step) == 2
        trainer.train(state, trainer.data_loader(make_dataset()))
    assert _traced_steps(pathlib.Path(resumed.run_dir) / "profiler") == [2, 3]


@pytest.mark.parametrize("process, link", [(0, True), (1, False)])
def test_only_process_zero_makes_a_perfetto_link(tmp_path, monkeypatch, process, link):
    calls = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr(jax, "process_index", lambda *a: process)
    config = trainer_config(
        tmp_path, profiler=True, profiler_start_step=0, profiler_perfetto_link=True
    )
    hook = ProfilerHook(Trainer(config, optax.sgd(0.1), mse, add_default_hooks=False))
    hook.on_train_start(0)
    # every process still writes the Perfetto trace file; only process 0 waits on a link
    assert calls == [{"create_perfetto_link": link, "create_perfetto_trace": True}]
