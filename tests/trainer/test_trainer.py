import dataclasses
import json
import logging
import math
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp
import jmp
import numpy as np
import optax
import pytest
from toy import (
    Feature,
    Hidden,
    Mlp,
    assert_leaves_equal,
    make_dataset,
    mse,
    mse_with_metrics,
    trainer_config,
)

from lm.data import ListDataset
from lm.schedule import ScheduleStep
from lm.tracker import read_json_log
from lm.trainer import (
    Callback,
    JitCallback,
    NoAcceleratorError,
    NonFiniteLossError,
    Trainer,
    TrainerConfig,
)


def _train(config, loss_fn=mse, *, optimizer=None, hooks=(), is_trainable=True, seed=0):
    trainer = Trainer(config, optimizer or optax.adam(1e-2), loss_fn)
    for hook, every in hooks:
        trainer.add_hook(hook, every=every)
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(1),
            model_init=lambda: Mlp.init(key=jax.random.PRNGKey(seed)),
            is_trainable=is_trainable,
        )
        info = trainer.train(state, trainer.data_loader(make_dataset()))
    return trainer, info


def _metrics(config, step=None):
    records = read_json_log(f"{config.run_dir}/metrics.jsonl")
    logs = [r for r in records if r["event"] == "log"]
    return logs if step is None else [r["metrics"] for r in logs if r["step"] == step]


def test_a_startup_gc_pause_ends_after_the_first_step(tmp_path):
    import gc

    from lm import startup_gc

    enabled = []
    try:
        assert startup_gc.pause()
        _train(
            trainer_config(tmp_path, num_train_steps=2),
            hooks=[(lambda info: enabled.append(gc.isenabled()), 1)],
        )
        assert enabled == [True, True, True] and not startup_gc.paused()  # + the final hooks
        assert gc.get_freeze_count() > 0
    finally:
        startup_gc.end_pause()
        gc.unfreeze()
        gc.enable()


def test_loss_decreases_and_step_semantics(tmp_path):
    seen = []
    config = trainer_config(tmp_path, num_train_steps=30)
    trainer, info = _train(
        config, hooks=[(lambda info: seen.append((info.step, int(info.state.step))), 1)]
    )
    # StepInfo.step is the step just completed; state.step counts steps taken.
    assert seen[:3] == [(0, 1), (1, 2), (2, 3)]
    assert info.step == 29 and int(info.state.step) == 30
    losses = [m["metrics"]["train/loss"] for m in _metrics(config)]
    assert losses[-1] < 0.5 * losses[0]


def test_hooks_all_forms_every_and_force(tmp_path):
    calls = {"fn": [], "cb": [], "deco": [], "forced": []}

    class Counter(Callback):
        def on_step(self, info, force=False):
            calls["cb"].append(info.step)
            if force:
                calls["forced"].append(info.step)

    config = trainer_config(tmp_path, num_train_steps=7)
    trainer = Trainer(config, optax.sgd(1e-2), mse)
    trainer.add_hook(lambda info: calls["fn"].append(info.step), every=2)
    trainer.add_hook(Counter(), every=3)

    @trainer.add_hook(every=5)
    def deco(info):
        calls["deco"].append(info.step)

    with pytest.raises(ValueError, match="add_hook expects a callable"):
        trainer.add_hook(42)
    with pytest.raises(ValueError, match="positive"):
        trainer.add_hook(lambda info: None, every=0)
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(0), model=Mlp.init(key=jax.random.PRNGKey(0))
        )
        trainer.train(state, trainer.data_loader(make_dataset()))
    # every=N runs at steps divisible by N; the final forced pass runs every hook once more.
    assert calls["fn"] == [0, 2, 4, 6, 6]
    assert calls["cb"] == [0, 3, 6, 6]
    assert calls["forced"] == [6]
    assert calls["deco"] == [0, 5, 6]


def test_step_traces_once(tmp_path):
    traces = []

    def counting_loss(model, batch):
        traces.append(1)
        return mse(model, batch)

    config = trainer_config(tmp_path, num_train_steps=6, steps_per_eval=100, log_jaxprs=False)
    _train(config, counting_loss)
    # one trace for all six steps: no separate shape pass for the outputs' placement (haliax's
    # named_jit traced twice); log_jaxprs reuses it too (tested below)
    assert len(traces) == 1


def test_initial_state_needs_exactly_one_of_model_and_init(tmp_path):
    trainer = Trainer(trainer_config(tmp_path), optax.sgd(0.1), mse)
    with trainer, pytest.raises(ValueError, match="exactly one"):
        trainer.initial_state(jax.random.PRNGKey(0))
    with trainer, pytest.raises(ValueError, match="exactly one"):
        m = Mlp.init(key=jax.random.PRNGKey(0))
        trainer.initial_state(jax.random.PRNGKey(0), model=m, model_init=lambda: m)


def test_checkpoint_path_is_the_configs(tmp_path):
    config = trainer_config(tmp_path)
    trainer = Trainer(config, optax.sgd(0.1), mse)
    assert trainer.checkpoint_path == config.checkpoint_path == str(tmp_path / "ckpt" / "toy")
    elsewhere = trainer_config(tmp_path, load_checkpoint_path=str(tmp_path / "other" / "step-3"))
    trainer = Trainer(elsewhere, optax.sgd(0.1), mse)
    assert trainer.checkpoint_path == str(tmp_path / "other" / "step-3")


def test_metrics_are_logged_with_prefixes(tmp_path):
    config = trainer_config(tmp_path, num_train_steps=5, steps_per_eval=5)
    trainer = Trainer(config, optax.adam(1e-2), mse_with_metrics)
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(0), model=Mlp.init(key=jax.random.PRNGKey(0))
        )
        trainer.add_eval_hook(make_dataset(64, seed=1), "heldout")
        trainer.train(state, trainer.data_loader(make_dataset()))
    first = _metrics(config, 0)
    merged = {k: v for m in first for k, v in m.items()}
    for key in [
        "train/loss",
        "train/abs_err",
        "optim/grad_norm",
        "throughput/examples_per_second",
        "throughput/loading_time",
        "eval/heldout/loss",
        "eval/heldout/abs_err",
    ]:
        assert key in merged, key


def _train_with_eval(config, *, enter_twice=False):
    trainer = Trainer(config, optax.adam(1e-2), mse)
    trainer.add_eval_hook(make_dataset(64, seed=1), "heldout")
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(0), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
        )
        if not enter_twice:
            return trainer.train(state, trainer.data_loader(make_dataset()))
    with trainer:  # entered again: a new tracker (the first exit finished the old one)
        return trainer.train(state, trainer.data_loader(make_dataset()))


def _eval_records(config):
    if not os.path.exists(f"{config.run_dir}/metrics.jsonl"):
        return []
    return [r["step"] for r in _metrics(config) if "eval/heldout/loss" in r["metrics"]]


def test_a_trainer_entered_twice_logs_and_saves_as_one_entry(tmp_path):
    """The second `with trainer:` reused the finished tracker: a closed-file error at the
    first step, no checkpoint."""
    config = trainer_config(tmp_path, num_train_steps=3, steps_per_eval=100)
    info = _train_with_eval(config, enter_twice=True)
    assert int(info.state.step) == 3
    assert (tmp_path / "ckpt" / "toy" / "step-2" / "metadata.json").exists()
    assert _eval_records(config) == [0, 2]


def test_a_finished_run_rerun_does_not_evaluate_again(tmp_path):
    """The final hooks of a rerun of a finished run evaluated the last step again and logged
    it twice."""
    config = trainer_config(tmp_path, num_train_steps=3, steps_per_eval=100)
    _train_with_eval(config)
    assert _eval_records(config) == [0, 2]
    info = _train_with_eval(config)
    assert int(info.state.step) == 3
    assert _eval_records(config) == [0, 2]  # step 2 once


def test_num_train_steps_0_trains_and_writes_nothing(tmp_path):
    """It saved a checkpoint named step--1 and logged an evaluation at step -1."""
    config = trainer_config(tmp_path, num_train_steps=0, steps_per_eval=100)
    info = _train_with_eval(config)
    assert info.step == -1 and int(info.state.step) == 0
    assert not (tmp_path / "ckpt").exists() or list((tmp_path / "ckpt").rglob("step-*")) == []
    assert _eval_records(config) == []


def _live_loader_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "lm-data-loader" and t.is_alive()}


class _SlowDataset(ListDataset):
    """Slow to produce a batch, so a producer told to stop takes a while to notice."""

    def get_batch(self, indices):
        time.sleep(0.3)
        return super().get_batch(indices)


def test_train_and_eval_join_their_loader_threads(tmp_path):
    # The producers are joined as soon as the training steps and each evaluation end (the
    # eval loop stops early at max_eval_batches), not left to stop on their own once collected.
    def slow(n=512, seed=0):
        return _SlowDataset(make_dataset(n, seed).items)

    before = _live_loader_threads()
    config = trainer_config(tmp_path, num_train_steps=3, max_eval_batches=1)
    trainer = Trainer(config, optax.adam(1e-2), mse)
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(0), model=Mlp.init(key=jax.random.PRNGKey(0))
        )
        trainer.add_eval_hook(slow(64, seed=1))
        infos = list(trainer.training_steps(state, trainer.data_loader(slow())))
        assert len(infos) == 3 and not (_live_loader_threads() - before)
        trainer._eval_hooks[0].evaluate(infos[-1].state.model)
        assert not (_live_loader_threads() - before)

        # An iterator the caller made and passed in is theirs to close.
        mine = trainer.data_loader(slow()).iter_from_step(3)
        list(trainer.training_steps(infos[-1].state, mine))
        assert mine._producer.thread.is_alive()
        with mine:
            pass
        assert not mine._producer.thread.is_alive()


def test_microbatching_matches_full_batch(tmp_path):
    grads = {}

    class GradCapture(JitCallback):
        def inside_step(self, state, inside_info):
            return inside_info.grads

        def on_step(self, step_info, cb_info):
            grads.setdefault(self.label, cb_info)

    results = {}
    for label, per_device in [("full", -1), ("micro", 1)]:
        capture = GradCapture()
        capture.label = label
        # 16 examples on 8 devices: per_device_parallelism=1 -> 2 microbatches of 8
        config = trainer_config(
            tmp_path / label, num_train_steps=3, per_device_parallelism=per_device
        )
        assert config.num_microbatches_at_step(0) == (1 if label == "full" else 2)
        _, info = _train(config, optimizer=optax.sgd(0.1), hooks=[(capture, 1)])
        results[label] = info
    np.testing.assert_allclose(float(results["full"].loss), float(results["micro"].loss), rtol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves(grads["full"]),
        jax.tree_util.tree_leaves(grads["micro"]),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for a, b in zip(
        jax.tree_util.tree_leaves(results["full"].state.model),
        jax.tree_util.tree_leaves(results["micro"].state.model),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_crash_on_nan_names_the_step(tmp_path):
    def nan_after_two(model, batch):
        loss = mse(model, batch)
        return jnp.where(model.bias.array > 10.0, jnp.nan, loss)

    config = trainer_config(tmp_path, num_train_steps=5)

    def nan_loss(model, batch):
        return mse(model, batch) * jnp.nan

    with pytest.raises(NonFiniteLossError, match="Loss is NaN at step 0"):
        _train(config, nan_loss)
    kept_going = trainer_config(
        tmp_path / "ok", num_train_steps=2, crash_on_nan=False, steps_per_eval=100
    )
    _, info = _train(kept_going, nan_loss)
    assert math.isnan(float(info.loss))


@pytest.mark.parametrize(
    "bad, flags, crashes",
    [
        (jnp.inf, dict(crash_on_inf=True, crash_on_nan=False), "Loss is infinite at step 0"),
        (jnp.inf, dict(crash_on_inf=False, crash_on_nan=True), None),
        (jnp.nan, dict(crash_on_nan=True, crash_on_inf=False), "Loss is NaN at step 0"),
        (jnp.nan, dict(crash_on_nan=False, crash_on_inf=True), None),
    ],
)
def test_crash_on_inf_and_nan_are_separate_switches(tmp_path, bad, flags, crashes):
    def bad_loss(model, batch):
        # a non-finite loss with finite gradients: the parameters stay finite
        return mse(model, batch) + jax.lax.stop_gradient(jnp.float32(bad))

    config = trainer_config(tmp_path, num_train_steps=3, steps_per_eval=100, **flags)
    if crashes:
        with pytest.raises(NonFiniteLossError, match=crashes):
            _train(config, bad_loss)
    else:
        _, info = _train(config, bad_loss)
        assert info.step == 2
        assert math.isinf(float(info.loss)) if math.isinf(bad) else math.isnan(float(info.loss))


def test_hook_time_is_the_previous_steps(tmp_path):
    """`throughput/hook_time` at step N is how long step N-1's hooks took (step N's own hooks,
    the logging one included, are still running when it is logged); 0 at the first step."""

    def slow_at_step_one(info):
        if info.step == 1:
            time.sleep(0.5)

    config = trainer_config(tmp_path, num_train_steps=4, steps_per_eval=100)
    _train(config, hooks=[(slow_at_step_one, 1)])
    hook_time = {r["step"]: r["metrics"].get("throughput/hook_time") for r in _metrics(config)}
    hook_time = {step: t for step, t in hook_time.items() if t is not None}
    assert sorted(hook_time) == [0, 1, 2, 3]
    assert hook_time[0] == 0.0
    assert hook_time[2] >= 0.5
    assert hook_time[1] < 0.5 and hook_time[3] < 0.5


def test_frozen_parameters_are_untouched(tmp_path):
    spec = Mlp(w1=False, w2=True, bias=True)
    config = trainer_config(tmp_path, num_train_steps=4)
    init = Mlp.init(key=jax.random.PRNGKey(0))
    trainer, info = _train(config, is_trainable=spec)
    np.testing.assert_array_equal(np.asarray(info.state.model.w1.array), np.asarray(init.w1.array))
    assert not np.allclose(np.asarray(info.state.model.w2.array), np.asarray(init.w2.array))
    # no optimizer state for the frozen leaf
    opt_leaves = jax.tree_util.tree_leaves(info.state.opt_state)
    assert all(leaf.shape != (Feature.size, 8) for leaf in opt_leaves)


def test_frozen_parameters_train_with_the_watch_hook_on(tmp_path):
    """The watch hook measured the frozen leaf too (a NamedArray holding None in the
    trainable model, the gradients and the updates) and crashed at step 0."""
    watch = dataclasses.replace(TrainerConfig().watch, interval=1)
    config = trainer_config(tmp_path, num_train_steps=2, watch=watch)
    _train(config, is_trainable=Mlp(w1=False, w2=True, bias=True))
    metrics = _metrics(config, step=0)[0]
    assert "grad/norm/w2" in metrics and "params/norm/w2" in metrics
    assert not any(key.endswith("/w1") for key in metrics)


def test_mixed_precision_computes_in_bf16_and_keeps_f32_params(tmp_path):
    dtypes = []

    def loss(model, batch):
        dtypes.append(model.w1.dtype)
        return mse(model, batch).astype(jnp.float32)

    config = trainer_config(tmp_path, num_train_steps=2, mp=jmp.get_policy("p=f32,c=bfloat16"))
    _, info = _train(config, loss)
    assert jnp.bfloat16 in dtypes
    assert info.state.model.w1.dtype == jnp.float32


def test_batch_schedule_changes_batch_size(tmp_path):
    sizes = []

    def loss(model, batch):
        sizes.append(batch.x.resolve_axis("batch").size)
        return mse(model, batch)

    schedule = [ScheduleStep(0, 8), ScheduleStep(3, 16)]
    config = trainer_config(
        tmp_path, num_train_steps=5, train_batch_size=schedule, steps_per_eval=100
    )
    _train(config, loss)
    assert 8 in sizes and 16 in sizes  # one trace per batch size (plus eval)


def test_nondivisible_batch_schedule_names_the_phase(tmp_path):
    schedule = [ScheduleStep(0, 8), ScheduleStep(100, 12)]
    config = trainer_config(tmp_path, train_batch_size=schedule)
    with pytest.raises(ValueError, match="phase starting at step 100 .12. must be divisible"):
        config.validate_batch_sizes()


def test_write_artifact(tmp_path):
    config = trainer_config(tmp_path)
    trainer = Trainer(config, optax.sgd(0.1), mse)
    with trainer:
        path = trainer.write_artifact("notes.txt", "hello")
        gz = trainer.write_artifact("blob.bin.gz", b"\x00\x01")
    import gzip
    import pathlib

    assert pathlib.Path(path).read_text() == "hello"
    assert gzip.decompress(pathlib.Path(gz).read_bytes()) == b"\x00\x01"


def _zstd_decompress(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _unzip(data: bytes) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read("file")


@pytest.mark.parametrize(
    "suffix, decompress",
    [
        (".gz", lambda b: __import__("gzip").decompress(b)),
        (".bz2", lambda b: __import__("bz2").decompress(b)),
        (".xz", lambda b: __import__("lzma").decompress(b)),
        (".lzma", lambda b: __import__("lzma").decompress(b)),
        (".zst", _zstd_decompress),
        (".zip", _unzip),
    ],
)
def test_write_artifact_compresses_by_extension(tmp_path, suffix, decompress):
    import pathlib

    trainer = Trainer(trainer_config(tmp_path), optax.sgd(0.1), mse)
    text = "step 1: loss 2.5\n" * 50
    with trainer:
        text_path = trainer.write_artifact(f"notes.txt{suffix}", text)
        bytes_path = trainer.write_artifact(f"blob.bin{suffix}", b"\x00\x01" * 100)
    assert decompress(pathlib.Path(text_path).read_bytes()).decode() == text
    assert decompress(pathlib.Path(bytes_path).read_bytes()) == b"\x00\x01" * 100
    assert pathlib.Path(text_path).read_bytes() != text.encode()  # compressed, not plain


@pytest.mark.parametrize("artifact", [{"lr": 0.1}, 5, None])
def test_write_artifact_rejects_other_types_by_name(tmp_path, artifact):
    trainer = Trainer(trainer_config(tmp_path), optax.sgd(0.1), mse)
    with trainer, pytest.raises(TypeError, match=r"write_artifact\('cfg.json'\).*str.*bytes.*got"):
        trainer.write_artifact("cfg.json", artifact)
    assert not (tmp_path / "logs" / "toy" / "artifacts" / "cfg.json").exists()
    trainer = Trainer(trainer_config(tmp_path), optax.sgd(0.1), mse)
    with trainer:  # the accepted byte types
        path = trainer.write_artifact("view.bin", memoryview(bytearray(b"ab")))
    with open(path, "rb") as f:
        assert f.read() == b"ab"


def test_require_accelerator_refuses_cpu(tmp_path):
    config = trainer_config(tmp_path, require_accelerator=True)
    with pytest.raises(NoAcceleratorError, match="No accelerator found"):
        config.initialize()


def test_watch_logs_norms_every_interval(tmp_path):
    watch = dataclasses.replace(trainer_config(tmp_path).watch, interval=2, include_histograms=True)
    config = trainer_config(tmp_path, num_train_steps=4, watch=watch, steps_per_eval=100)
    _train(config)
    step0 = {k: v for m in _metrics(config, 0) for k, v in m.items()}
    assert "grad/norm/total" in step0 and "params/norm/w1" in step0
    assert "grad/hist/w1" in step0
    assert not any(k.startswith("grad/") for m in _metrics(config, 1) for k in m)


def test_jit_hook_steps_see_the_real_gradients_and_compile_once_more(tmp_path):
    """Jit hooks due at steps 0, 2 and 4: the steps with hooks share one compiled variant and
    the others another (two compiles for five steps), and a due hook sees the step's gradient
    (watch's logged norm is its norm)."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    seen = {}

    class GradCapture(JitCallback):
        def inside_step(self, state, inside_info):
            return inside_info.grads

        def on_step(self, step_info, cb_info):
            seen[step_info.step] = cb_info

    watch = dataclasses.replace(trainer_config(tmp_path).watch, interval=2)
    config = trainer_config(tmp_path, num_train_steps=5, watch=watch, steps_per_eval=100)
    _train(config, hooks=[(GradCapture(), 2)])
    assert compiles.count("jit(train_step)") == 2, compiles
    assert sorted(seen) == [0, 2, 4]
    for step in (0, 2, 4):
        leaves = jax.tree_util.tree_leaves(seen[step])
        norm = np.sqrt(sum(float(np.sum(np.square(np.asarray(x)))) for x in leaves))
        logged = {k: v for m in _metrics(config, step) for k, v in m.items()}
        np.testing.assert_allclose(logged["grad/norm/total"], norm, rtol=1e-5)
        assert norm > 0
    assert not any(k.startswith("grad/") for m in _metrics(config, 3) for k in m)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pool maps memory")
def test_a_prefault_pool_is_released_after_the_first_compile_before_the_step_runs(
    tmp_path, monkeypatch
):
    """train_lm's pool of prefaulted pages goes back to the kernel once step 0 is compiled
    and before it runs; compiling ahead of the call adds no compile."""
    from lm import prefault

    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    pool = prefault.Prefaulter(8 << 20, initial=4 << 20, chunk=1 << 20)
    monkeypatch.setattr(prefault, "_pool", pool)
    released_at = []
    steps_done = []
    original = pool.release

    def release(nbytes=None):
        released_at.append((nbytes, compiles.count("jit(train_step)"), len(steps_done)))
        return original(nbytes)

    monkeypatch.setattr(pool, "release", release)
    try:
        watch = dataclasses.replace(trainer_config(tmp_path).watch, interval=2)
        config = trainer_config(tmp_path, num_train_steps=3, watch=watch, steps_per_eval=100)
        _train(config, hooks=[(lambda info: steps_done.append(info.step), 1)])
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert released_at == [(None, 1, 0)]  # all of it, after one compile, before any step
    assert pool.closed and not prefault.active()
    # steps 0 (watch due) and 1 (not) compile one variant each, as without a pool
    assert compiles.count("jit(train_step)") == 2, compiles
    assert steps_done[:3] == [0, 1, 2]  # (and the final hooks at step 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pool maps memory")
def test_a_first_step_that_fails_to_trace_with_a_pool_raises_its_own_error(tmp_path, monkeypatch):
    from lm import prefault

    pool = prefault.Prefaulter(4 << 20, initial=2 << 20, chunk=1 << 20)
    monkeypatch.setattr(prefault, "_pool", pool)

    def broken_loss(model, batch):
        raise ValueError("the loss cannot be traced")

    try:
        with pytest.raises(ValueError, match="the loss cannot be traced"):
            _train(trainer_config(tmp_path, num_train_steps=2), broken_loss)
    finally:
        pool.release()


def test_a_fresh_states_step_is_read_without_waiting_for_the_init(tmp_path):
    """The loop reads `state.step` before the first step; on a fresh start it is not the
    init's output, so the first step traces and compiles while the init still runs."""
    import equinox as eqx

    init_may_finish = threading.Event()
    waited = []

    def hold(x):
        waited.append(init_may_finish.wait(timeout=20))
        return x

    def model_init():
        model = Mlp.init(key=jax.random.PRNGKey(0))
        bias = jax.pure_callback(hold, jax.ShapeDtypeStruct((), jnp.float32), model.bias.array)
        return eqx.tree_at(lambda m: m.bias.array, model, bias)

    trainer = Trainer(trainer_config(tmp_path, num_train_steps=1), optax.adam(1e-2), mse)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(1), model_init=model_init)
        assert int(state.step) == 0  # while the init waits in its callback
        init_may_finish.set()
        jax.block_until_ready(state)
        assert waited == [True]
        assert state.step.dtype == jnp.int32 and state.step.shape == ()
        assert state.step.sharding.is_fully_replicated
        info = trainer.train(state, trainer.data_loader(make_dataset()))
    assert int(info.state.step) == 1


def test_loss_fn_with_key_gets_a_fresh_key_each_step(tmp_path):
    keys = []

    def loss(model, batch, *, key):
        return mse(model, batch) + 0.0 * jax.random.uniform(key)

    class KeyCapture(Callback):
        def on_step(self, info, force=False):
            keys.append(np.asarray(jax.random.key_data(info.state.training_key)).tolist())

    _train(trainer_config(tmp_path, num_train_steps=3), loss, hooks=[(KeyCapture(), 1)])
    assert len({str(k) for k in keys[:3]}) == 3


def test_bad_loss_shape_is_a_clear_error(tmp_path):
    def vector_loss(model, batch):
        return (model(batch.x) - batch.y).array

    with pytest.raises(ValueError, match="scalar loss"):
        _train(trainer_config(tmp_path, num_train_steps=1), vector_loss)


def test_resume_continues_exactly(tmp_path):
    full = trainer_config(tmp_path / "a", num_train_steps=8, steps_per_eval=100)
    _, info_full = _train(full)
    first = trainer_config(tmp_path / "b", num_train_steps=4, steps_per_eval=100)
    _train(first)
    resumed = dataclasses.replace(first, num_train_steps=8)
    _, info_resumed = _train(resumed)
    assert int(info_resumed.state.step) == 8
    assert_leaves_equal(info_full.state.model, info_resumed.state.model)
    full_losses = [m["metrics"]["train/loss"] for m in _metrics(full)]
    resumed_losses = [
        m["metrics"]["train/loss"] for m in _metrics(resumed) if "train/loss" in m["metrics"]
    ]
    assert resumed_losses == full_losses


def test_a_finished_runs_temporary_final_checkpoint_is_made_permanent_on_rerun(tmp_path):
    """A preemption save in the last step is temporary. Rerunning the finished run skips the
    final save (the state is on disk) but must mark that checkpoint permanent: a temporary
    one would be deleted by the next attempt's sweep of leftovers."""
    config = trainer_config(tmp_path, num_train_steps=4, steps_per_eval=100)
    _train(config)
    meta_path = tmp_path / "ckpt" / "toy" / "step-3" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    assert meta["is_temporary"] is False
    meta_path.write_text(json.dumps({**meta, "is_temporary": True}))  # as a preemption save
    _, info = _train(config)
    assert int(info.state.step) == 4
    meta = json.loads(meta_path.read_text())
    assert meta["is_temporary"] is False
    _train(dataclasses.replace(config, num_train_steps=6))  # its sweep keeps step-3
    assert meta_path.exists()


def test_load_checkpoint_false_refuses_a_directory_holding_checkpoints(tmp_path):
    """Starting over where an earlier attempt saved would mix the two runs' checkpoints."""
    from lm.config import SetupConfigError

    first = trainer_config(tmp_path, num_train_steps=4, steps_per_eval=100)
    _train(first)
    again = dataclasses.replace(first, load_checkpoint=False)
    with pytest.raises(SetupConfigError) as info:
        _train(again)
    assert str(info.value).startswith(
        f"trainer.load_checkpoint is false, but this run's checkpoint directory "
        f"{tmp_path}/ckpt/toy already holds checkpoints of an earlier attempt (step-3)"
    )
    # elsewhere it starts fresh
    _, fresh = _train(dataclasses.replace(again, id="other"))
    assert int(fresh.state.step) == 4


def test_a_run_started_from_load_checkpoint_path_resumes_from_its_own_checkpoints(tmp_path, caplog):
    """load_checkpoint_path is where a run starts. Rerunning the same command after a crash
    reloaded it and threw away every step trained since; it now resumes from the run's own
    directory. A load_checkpoint_path inside that directory is a rollback, loaded as given."""
    source = trainer_config(tmp_path / "src", num_train_steps=2, steps_per_eval=100)
    _train(source)
    start = str(tmp_path / "src" / "ckpt" / "toy" / "step-1")
    run = trainer_config(tmp_path, num_train_steps=4, steps_per_eval=100, id="run")
    _, info = _train(dataclasses.replace(run, load_checkpoint_path=start))
    assert int(info.state.step) == 4
    caplog.set_level(logging.INFO, logger="lm.trainer.resume")
    longer = dataclasses.replace(run, load_checkpoint_path=start, num_train_steps=6)
    trainer, info = _train(longer)
    assert int(info.state.step) == 6
    assert trainer.restored_from.kind == "resumed"
    assert trainer.restored_from.checkpoint == str(tmp_path / "ckpt" / "run" / "step-3")
    assert f"trainer.load_checkpoint_path ({start}) is where this run started" in caplog.text
    # the same 6 steps as one run from the same start
    whole = trainer_config(tmp_path / "b", num_train_steps=6, steps_per_eval=100, id="run")
    _, straight = _train(dataclasses.replace(whole, load_checkpoint_path=start))
    assert_leaves_equal(straight.state.model, info.state.model)
    # a rollback to one of its own checkpoints
    own = str(tmp_path / "ckpt" / "run" / "step-3")
    trainer, _ = _train(dataclasses.replace(run, load_checkpoint_path=own, num_train_steps=5))
    assert trainer.restored_from.checkpoint == own
    assert "is a checkpoint of this run's own directory, which holds a newer one" in caplog.text


def test_load_checkpoint_false_is_refused_with_load_checkpoint_path_too(tmp_path):
    """The run saves to its own directory whatever it loads: the new run's checkpoints would
    land beside the earlier attempt's, and the summary named the old run's newest."""
    from lm.config import SetupConfigError

    first = trainer_config(tmp_path, num_train_steps=4, steps_per_eval=100)
    _train(first)
    again = dataclasses.replace(
        first, load_checkpoint=False, load_checkpoint_path=str(tmp_path / "ckpt" / "toy")
    )
    with pytest.raises(SetupConfigError, match="already holds checkpoints of an earlier attempt"):
        _train(again)


def test_resuming_with_another_batch_size_is_an_error_unless_scheduled(tmp_path):
    """The loader of a resumed run starts where the batch schedule puts the step: with a
    changed batch size that is not where the run stopped, and data would be skipped."""
    from lm.config import SetupConfigError

    first = trainer_config(tmp_path, num_train_steps=4, steps_per_eval=100, train_batch_size=8)
    _train(first)
    meta = json.loads((tmp_path / "ckpt" / "toy" / "step-3" / "metadata.json").read_text())
    assert meta["examples_seen"] == 32
    log = tmp_path / "logs" / "toy" / "metrics.jsonl"
    logged = log.read_text()
    with pytest.raises(SetupConfigError) as info:
        _train(dataclasses.replace(first, num_train_steps=6, train_batch_size=16))
    # nothing half-written: no hparams of the refused run, no "finish" line in the run's log
    assert log.read_text() == logged
    assert str(info.value).startswith(
        f"trainer.train_batch_size changed since {tmp_path}/ckpt/toy/step-3 was saved (with a "
        "batch of 8): the run has trained on 32 examples, but the current schedule starts step "
        "4 at example 64, so resuming would skip 32 examples. To go on, keep "
        "trainer.train_batch_size: 8, or change it from this step on with a schedule: "
        "train_batch_size: [{start: 0, value: 8}, {start: 4, value: 16}]"
    )
    scheduled = [ScheduleStep(0, 8), ScheduleStep(4, 16)]
    _, info = _train(dataclasses.replace(first, num_train_steps=6, train_batch_size=scheduled))
    assert int(info.state.step) == 6


def test_an_evaluation_cut_short_after_its_checkpoint_is_redone_on_resume(tmp_path, monkeypatch):
    """The checkpoint hook runs before the eval at a step: a run that stops during step 5's
    eval resumes from step 5's checkpoint and must still log step 5's eval."""
    from lm.checkpoint import CheckpointerConfig
    from lm.trainer.evaluation import EvalHook

    checkpointer = CheckpointerConfig(base_path=str(tmp_path / "ckpt"), keep=[{"every": 5}])
    config = trainer_config(tmp_path, num_train_steps=8, checkpointer=checkpointer)
    calls = []
    evaluate = EvalHook.evaluate

    def stopping_at_the_second_eval(self, model):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped during the eval of step 5")
        return evaluate(self, model)

    monkeypatch.setattr(EvalHook, "evaluate", stopping_at_the_second_eval)

    def run():
        trainer = Trainer(config, optax.adam(1e-2), mse)
        with trainer:
            trainer.add_eval_hook(make_dataset(64, seed=1))
            state = trainer.initial_state(
                jax.random.PRNGKey(1), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
            )
            trainer.train(state, trainer.data_loader(make_dataset()))

    with pytest.raises(RuntimeError, match="stopped during the eval of step 5"):
        run()
    assert (tmp_path / "ckpt" / "toy" / "step-5" / "metadata.json").exists()
    run()
    evals = [r["step"] for r in _metrics(config) if "eval/loss" in r["metrics"]]
    assert evals == [0, 5, 7]


def test_an_evaluation_logged_before_the_stop_is_not_redone_on_resume(tmp_path, caplog):
    """A run that stops during step 6, after step 5's checkpoint and evaluation, resumes
    from step 5's checkpoint: its JSON log shows that step 5's eval finished, so it is not
    run (and logged) a second time."""
    from lm.checkpoint import CheckpointerConfig

    checkpointer = CheckpointerConfig(base_path=str(tmp_path / "ckpt"), keep=[{"every": 5}])
    config = trainer_config(tmp_path, num_train_steps=8, checkpointer=checkpointer)
    stop = [True]

    def stop_at_step_6(info):
        if info.step == 6 and stop[0]:
            stop[0] = False
            raise RuntimeError("stopped at step 6")

    def run():
        trainer = Trainer(config, optax.adam(1e-2), mse)
        with trainer:
            trainer.add_eval_hook(make_dataset(64, seed=1))
            trainer.add_hook(stop_at_step_6)
            state = trainer.initial_state(
                jax.random.PRNGKey(1), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
            )
            trainer.train(state, trainer.data_loader(make_dataset()))

    with pytest.raises(RuntimeError, match="stopped at step 6"):
        run()
    assert not (tmp_path / "ckpt" / "toy" / "step-6").exists()
    with caplog.at_level(logging.INFO, logger="lm.trainer"):
        run()
    evals = [r["step"] for r in _metrics(config) if "eval/loss" in r["metrics"]]
    assert evals == [0, 5, 7]
    assert "The evaluation of step 5 was logged before the run stopped: not run again" in (
        caplog.text
    )


def test_step_jaxpr_and_hlo_are_written_once(tmp_path):
    traces = []

    def counting_loss(model, batch):
        traces.append(1)
        return mse(model, batch)

    config = trainer_config(tmp_path, num_train_steps=3, log_jaxprs=True, log_xla_hlo=True)
    _train(config, counting_loss)
    assert len(traces) == 1  # the artifacts come from the step's own trace
    artifacts = tmp_path / "logs" / "toy" / "artifacts"
    assert (artifacts / "train_step.hlo.txt").read_text().strip()
    import gzip

    jaxpr = gzip.decompress((artifacts / "train_step.jaxpr.txt.gz").read_bytes()).decode()
    assert "dot_general" in jaxpr and "tanh" in jaxpr  # the toy model's ops are in the step
    records = [
        r for r in read_json_log(f"{config.run_dir}/metrics.jsonl") if r["event"] == "artifact"
    ]
    assert sorted(r["name"] for r in records) == ["train_step.hlo.txt", "train_step.jaxpr.txt.gz"]


def test_artifact_logging_errors_surface_in_the_step(tmp_path, monkeypatch):
    """The artifacts are logged in a background thread during the first step's compile; a
    failure there is raised by that step, not lost."""
    import lm.tracker.jit_artifacts as jit_artifacts

    def broken(*args, **kwargs):
        raise OSError("artifact store unavailable")

    monkeypatch.setattr(jit_artifacts, "log_jaxpr", broken)
    config = trainer_config(tmp_path, num_train_steps=2, log_jaxprs=True, log_xla_hlo=False)
    with pytest.raises(OSError, match="artifact store unavailable"):
        _train(config)


def test_every_run_keeps_a_local_metrics_log_unless_tracking_is_off(tmp_path):
    from lm.tracker import NoopConfig, TensorboardConfig

    with_tb = trainer_config(
        tmp_path / "tb", tracker=TensorboardConfig(logdir=str(tmp_path / "tb" / "tb"))
    )
    trainer = Trainer(with_tb, optax.sgd(0.1), mse)
    assert {type(t).__name__ for t in trainer.tracker.trackers} == {
        "TensorboardTracker",
        "JsonLogger",
    }
    trainer.tracker.finish()
    off = Trainer(trainer_config(tmp_path / "off", tracker=NoopConfig()), optax.sgd(0.1), mse)
    assert type(off.tracker).__name__ == "NoopTracker"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_tracker_that_fails_mid_run_is_dropped_and_training_goes_on(tmp_path):
    """A JSON log on a full disk ended the run with a traceback (and no checkpoint at that
    step); a tracker that fails is now dropped with an error and the run finishes."""
    from lm.tracker import JsonLoggerConfig

    config = trainer_config(tmp_path, num_train_steps=3, tracker=JsonLoggerConfig(path="/dev/full"))
    trainer, info = _train(config)
    assert int(info.state.step) == 3
    assert (tmp_path / "ckpt" / "toy" / "step-2" / "metadata.json").exists()
    assert trainer.tracker.trackers == []
    [failure] = trainer.tracker.failures  # at its first write (the step's HLO artifact)
    assert failure.startswith("trainer.tracker (json) failed logging ")
    assert failure.endswith(": OSError: [Errno 28] No space left on device")


def test_a_failing_tracker_finish_does_not_hide_the_runs_error(tmp_path, caplog):
    config = trainer_config(tmp_path, num_train_steps=2)
    trainer = Trainer(config, optax.sgd(0.1), mse)

    def broken_finish():
        raise RuntimeError("finish broke")

    trainer.tracker.finish = broken_finish
    with pytest.raises(ValueError, match="the run's own error"):
        with trainer:
            raise ValueError("the run's own error")
    assert "Finishing the trackers failed too" in caplog.text and "finish broke" in caplog.text


def test_model_averaging_is_evaluated_and_checkpointed(tmp_path):
    from lm.optim.model_averaging import EmaModelAveragingConfig

    config = trainer_config(
        tmp_path,
        num_train_steps=4,
        model_averaging=EmaModelAveragingConfig(beta=0.5),
        steps_per_eval=100,
    )
    _, info = _train(config)
    averaged = info.state.model_averaging.model_params
    assert not np.allclose(np.asarray(averaged.w2.array), np.asarray(info.state.model.w2.array))
    np.testing.assert_array_equal(
        np.asarray(info.state.eval_model.w2.array), np.asarray(averaged.w2.array)
    )
    from lm.checkpoint import discover_latest_checkpoint, load_checkpoint

    path = discover_latest_checkpoint(config.checkpoint_path)
    restored = load_checkpoint(info.state, path, discover_latest=False)
    np.testing.assert_array_equal(
        np.asarray(restored.model_averaging.model_params.w2.array), np.asarray(averaged.w2.array)
    )


def test_abstract_state_is_the_initial_states_shapes_and_shardings(tmp_path):
    """What `abstract_state` describes is what `initial_state` builds, leaf by leaf (shape,
    dtype, sharding), so a step lowered on it is the step that runs."""
    # 8 fake devices: data 4 x model 2, the toy's hidden axis split over model
    config = trainer_config(
        tmp_path, model_axis_size=2, parameter_axis_resources={"hidden": "model"}
    )
    trainer = Trainer(config, optax.adam(1e-2), mse)
    init = lambda: Mlp.init(key=jax.random.PRNGKey(0))  # noqa: E731
    with trainer:
        abstract = trainer.abstract_state(jax.random.PRNGKey(1), model_init=init)
        state = trainer.initial_state(jax.random.PRNGKey(1), model_init=init)
    got = jax.tree_util.tree_leaves(abstract)
    real = jax.tree_util.tree_leaves(state)
    assert len(got) == len(real) > 0
    assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(state)
    for a, r in zip(got, real, strict=True):
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype, a.weak_type) == (r.shape, r.dtype, r.weak_type)
        assert a.sharding.is_equivalent_to(r.sharding, len(r.shape)), (a.sharding, r.sharding)
    assert any(not r.sharding.is_fully_replicated for r in real)


def test_data_too_small_for_one_batch_is_an_error_and_saves_nothing(tmp_path):
    """A loader with no batch for step 0 used to run the final hooks of a run that never
    stepped: a checkpoint named step--1."""
    config = trainer_config(tmp_path)
    trainer = Trainer(config, optax.sgd(0.1), mse)
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(1), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
        )
        with pytest.raises(ValueError, match="no batch for step 0 .* nothing was trained"):
            trainer.train(state, trainer.data_loader(make_dataset(n=5)))  # batch is 16
    assert not (tmp_path / "ckpt").exists() or list((tmp_path / "ckpt").rglob("step-*")) == []


def test_data_that_runs_out_mid_run_stops_and_saves_the_last_step(tmp_path):
    config = trainer_config(tmp_path, num_train_steps=10)
    trainer = Trainer(config, optax.sgd(0.1), mse)
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(1), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
        )
        info = trainer.train(state, trainer.data_loader(make_dataset(n=16 * 3)))
    assert info.step == 2
    saved = sorted(p.name for p in (tmp_path / "ckpt" / "toy").iterdir())
    assert saved == ["step-2"]


def test_a_preemption_signalled_on_another_process_says_so():
    import types

    from lm.trainer.trainer import _preemption_cause

    assert _preemption_cause(types.SimpleNamespace(signal_received=15)) == "signal 15"
    assert _preemption_cause(types.SimpleNamespace(signal_received=None)) == (
        "another process received SIGTERM"
    )


def test_a_preempted_run_without_an_id_says_which_id_resumes_it(tmp_path, monkeypatch):
    import signal

    from lm.trainer import Preempted

    monkeypatch.delenv("RUN_ID", raising=False)
    config = trainer_config(tmp_path, num_train_steps=6, id=None)

    def sigterm_at_step_2(info):
        if info.step == 2:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Preempted) as e:
        _train(config, hooks=[(sigterm_at_step_2, 1)])
    assert str(e.value).endswith(
        f"Rerun with --trainer.id {config.run_id} to resume (the run id was not set)."
    )
    with pytest.raises(Preempted) as e:
        _train(trainer_config(tmp_path / "b", num_train_steps=6), hooks=[(sigterm_at_step_2, 1)])
    assert str(e.value).endswith("Rerun the same command to resume.")


def test_a_sigterm_during_the_final_hooks_lets_the_final_checkpoint_commit(tmp_path, caplog):
    import signal

    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:

        def sigterm_in_the_final_hooks(info, force=False):
            if force:
                signal.raise_signal(signal.SIGTERM)

        with caplog.at_level("WARNING"):
            _, info = _train(
                trainer_config(tmp_path, num_train_steps=3),
                hooks=[(sigterm_in_the_final_hooks, 1000)],
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
    # The trainer's handler took the signal (not the default, which ends the process), and
    # the final hooks went on to commit the final checkpoint.
    assert received == []
    assert "Termination signal received during the final hooks" in caplog.text
    assert info.step == 2
    assert (tmp_path / "ckpt" / "toy" / "step-2" / "metadata.json").exists()


def test_a_single_trackers_output_problem_is_named_without_an_index(tmp_path):
    """The Trainer adds its local JSON log to a single tracker; messages about the user's
    tracker still name it as written (`trainer.tracker.logdir`, not `trainer.tracker[0]`)."""
    from lm.config import SetupConfigError
    from lm.tracker import TensorboardConfig

    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "toy").write_text("a file where the run's event folder goes")
    config = trainer_config(tmp_path, tracker=TensorboardConfig(logdir=str(tmp_path / "tb")))
    with pytest.raises(SetupConfigError, match=r"^trainer\.tracker\.logdir: cannot write"):
        _ = Trainer(config, optax.sgd(0.1), mse).tracker


def test_real_axis_sizes_are_recorded_and_checked_on_resume(tmp_path):
    """`Trainer.real_axis_sizes` goes into every checkpoint's metadata.json, and
    `initial_state` restores under `padded_axes(**real_axis_sizes)`: a checkpoint saved with
    other real sizes (a vocabulary of another tokenizer, in train_lm) is not resumed."""

    def run(config, real):
        trainer = Trainer(config, optax.adam(1e-2), mse)
        trainer.real_axis_sizes.update(real)
        trainer.checkpoint_metadata["model"] = {"type": "mlp", "width": Hidden.size}
        with trainer:
            state = trainer.initial_state(
                jax.random.PRNGKey(1), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
            )
            return trainer.train(state, trainer.data_loader(make_dataset()))

    config = trainer_config(tmp_path, num_train_steps=2, steps_per_eval=100)
    run(config, {"hidden": Hidden.size})
    meta = json.loads((tmp_path / "ckpt" / "toy" / "step-1" / "metadata.json").read_text())
    assert meta["real_axis_sizes"] == {"hidden": Hidden.size}
    assert meta["model"] == {"type": "mlp", "width": Hidden.size}  # checkpoint_metadata
    assert meta["examples_seen"] > 0 and meta["step"] == 1  # not overridden by it
    longer = dataclasses.replace(config, num_train_steps=3)
    with pytest.raises(ValueError, match=rf"saved with a 'hidden' axis of {Hidden.size} "):
        run(longer, {"hidden": Hidden.size - 1})
    assert int(run(longer, {"hidden": Hidden.size}).state.step) == 3


def test_an_mfu_above_100_percent_measures_the_cpu_peak_again_then_warns(
    tmp_path, monkeypatch, caplog
):
    """On a busy CPU the step-0 peak measurement came out low and the logged MFU read 112%,
    with nothing said. The peak is measured again (the larger kept, logged in the summary);
    if MFU stays above 100%, a warning says what it is relative to."""
    import lm.trainer.default_hooks as default_hooks

    monkeypatch.setattr(default_hooks, "device_peak_flops", lambda dtype: 1.0)  # a "busy" peak

    def run(name):
        config = trainer_config(tmp_path / name, num_train_steps=3, steps_per_eval=100)
        trainer = Trainer(config, optax.adam(1e-2), mse)
        trainer.set_throughput_model(flops_per_example=1e6)
        with trainer:
            state = trainer.initial_state(
                jax.random.PRNGKey(1), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
            )
            trainer.train(state, trainer.data_loader(make_dataset()))
        records = read_json_log(f"{config.run_dir}/metrics.jsonl")
        mfus = [r["metrics"]["throughput/mfu"] for r in records if r["event"] == "log"]
        peaks = [
            r["summary"]["throughput/peak_flops_per_device"]
            for r in records
            if r["event"] == "summary" and "throughput/peak_flops_per_device" in r["summary"]
        ]
        return mfus, peaks

    caplog.set_level(logging.WARNING, logger="lm.trainer.default_hooks")
    mfus, peaks = run("remeasured")
    assert peaks[0] == 1.0 and peaks[-1] > 1e8  # a 2048² float32 matmul runs faster than that
    assert all(m < 100 for m in mfus[1:])
    assert "MFU is" not in caplog.text

    class StillLow:
        __wrapped__ = staticmethod(lambda: 0.5)

    monkeypatch.setattr(default_hooks, "measured_cpu_peak_flops", StillLow)
    mfus, peaks = run("low")
    assert peaks == [1.0] and all(m > 100 for m in mfus)
    assert caplog.text.count("MFU is") == 1
    assert "above the device's peak of 0.0 GFLOP/s (measured on this CPU" in caplog.text


@pytest.mark.parametrize("how", ["partial_resume", "warm_start"])
def test_a_model_average_added_to_loaded_weights_starts_from_them(tmp_path, caplog, how):
    """Model averaging over weights loaded from a checkpoint without an average (a partial
    resume of a run trained without it, or a warm start) started from the fresh state's
    random weights: evals of "the averaged model" stayed near untrained for thousands of
    steps. It starts from the loaded weights."""
    from lm.optim.model_averaging import EmaModelAveragingConfig

    first = trainer_config(tmp_path / "a", num_train_steps=2, steps_per_eval=100)
    _, done = _train(first)
    ema = EmaModelAveragingConfig(beta=0.999)
    if how == "partial_resume":
        config = dataclasses.replace(
            first, num_train_steps=3, model_averaging=ema, allow_partial_checkpoint=True
        )
    else:
        config = trainer_config(
            tmp_path / "b",
            num_train_steps=1,
            steps_per_eval=100,
            model_averaging=ema,
            initialize_from=str(tmp_path / "a" / "ckpt" / "toy"),
            initialize_from_params_only=True,
        )
    trainer = Trainer(config, optax.adam(1e-2), mse)
    caplog.set_level(logging.INFO, logger="lm.trainer.resume")
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(1), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
        )
        assert_leaves_equal(state.model_averaging.model, done.state.model)
        assert_leaves_equal(state.model, done.state.model)
        info = trainer.train(state, trainer.data_loader(make_dataset()))  # donation is fine
    assert int(info.state.step) == (3 if how == "partial_resume" else 1)
    expected = (
        "holds no averaged model" if how == "partial_resume" else "The model average starts from"
    )
    assert expected in caplog.text
