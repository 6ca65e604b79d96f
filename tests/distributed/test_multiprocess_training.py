"""Multi-process training on one machine (issue 9, item 4): 2 `train_lm` processes x 4 CPU
devices joined by `jax.distributed` on localhost.

- A process that dies takes the other down within a bounded time (the coordinator's
  heartbeat check), with an error that says another task died, instead of a hang.
- (slow) FSDP training over the 2 processes checkpoints (each process writing the shards it
  holds), is SIGKILLed, resumes with 2 processes, and ends with the losses and parameters of a
  1-process 8-device run of the same config.
"""

from __future__ import annotations

import json
import pathlib
import signal
import socket
import subprocess
import sys
import sysconfig
import time

import jax
import numpy as np
import pytest
import yaml

from lm.checkpoint import discover_latest_checkpoint, load_checkpoint
from lm.tracker import read_json_log

pytestmark = pytest.mark.entry

RUN_ID = "mp"
# A dead peer must be noticed within 120 s (the bound the issue sets). A dead coordinator is
# noticed at once (its connections close); a dead worker after `heartbeat_timeout_seconds`.
# That timeout cannot be very low on a loaded 2-core box: with 10 s, a long compile at load
# ~10 once starved the heartbeats of *both* live processes and the run was stopped.
DEATH_BOUND_S = 120
WORKER_HEARTBEAT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _write_corpus(directory: pathlib.Path) -> str:
    """~35 documents of ~40 lines from a few stdlib modules (no network, no big cache)."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    path = directory / "train.jsonl"
    with open(path, "w") as f:
        for name in ["textwrap.py", "string.py", "shlex.py", "fnmatch.py"]:
            lines = (stdlib / name).read_text().splitlines()
            for i in range(0, len(lines), 40):
                f.write(json.dumps({"text": "\n".join(lines[i : i + 40])}) + "\n")
    return str(path)


def _run_yaml(tmp: pathlib.Path, corpus: str, *, steps: int) -> pathlib.Path:
    config = {
        "data": {
            "train_urls": [corpus],
            "cache_dir": str(pathlib.Path(corpus).parent / "cache"),
            "cache_options": {"backend": "local"},
        },
        "model": {
            "type": "gpt2",
            "seq_len": 32,
            "hidden_dim": 32,
            "num_layers": 2,
            "num_heads": 2,
            "gradient_checkpointing": False,
        },
        "trainer": {
            "id": RUN_ID,
            "num_train_steps": steps,
            "train_batch_size": 8,
            "fsdp_axis": "embed",  # parameters split over all 8 devices, i.e. both processes
            "max_eval_batches": 0,
            "require_accelerator": False,
            "log_dir": str(tmp / "logs"),
            "tracker": {"type": "json"},
            "log_jaxprs": False,
            "log_xla_hlo": False,
            "watch": {"interval": 0},
            "jax_config": {
                "jax_threefry_partitionable": True,
                # cross-process collectives on CPU need gloo
                "jax_cpu_collectives_implementation": "gloo",
            },
            "checkpointer": {
                "base_path": str(tmp / "ckpt"),
                "keep": [{"every": 4}],
                "save_interval": "1h",
            },
        },
        "optimizer": {"learning_rate": 1e-2, "warmup": 0.1},
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env(base: dict[str, str], devices: int) -> dict[str, str]:
    env = dict(base)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _start_pair(
    config, base_env, out_dir: pathlib.Path, *extra, own_args=((), ()), cwds=(None, None)
) -> list[subprocess.Popen]:
    """Process 0 and 1 of a 2-process run; `extra` are more command-line overrides for both,
    `own_args[i]` for process i only, which runs in `cwds[i]`."""
    port = _free_port()
    procs = []
    for pid in range(2):
        log = open(out_dir / f"process{pid}.out", "ab")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lm.main.train_lm",
                    "--config_path",
                    str(config),
                    "--trainer.distributed.coordinator_address",
                    f"localhost:{port}",
                    "--trainer.distributed.num_processes",
                    "2",
                    "--trainer.distributed.process_id",
                    str(pid),
                    *extra,
                    *own_args[pid],
                ],
                env=_env(base_env, 4),
                cwd=cwds[pid],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
    return procs


def _output(out_dir: pathlib.Path, pid: int) -> str:
    return (out_dir / f"process{pid}.out").read_text(errors="replace")


def _wait_until(predicate, procs, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a process exited while waiting for {what}")
        time.sleep(0.05)


def _kill_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return _write_corpus(tmp_path_factory.mktemp("corpus"))


# ---------------------------------------------------------------- a dead peer is noticed


def _kill_one_and_time_the_other(tmp_path, corpus, env, *, victim: int, when: str) -> None:
    config = _run_yaml(tmp_path, corpus, steps=100_000)
    heartbeat = ("--trainer.distributed.heartbeat_timeout_seconds", str(WORKER_HEARTBEAT_S))
    procs = _start_pair(config, env, tmp_path, *heartbeat)
    survivor = 1 - victim
    try:
        if when == "joined":  # both processes are past jax.distributed.initialize
            marker = "2 process(es)"
        else:  # both are training
            marker = "Saving permanent checkpoint at step 4"
        _wait_until(
            lambda: (
                all(marker in _output(tmp_path, i) for i in range(2))
                if when == "joined"
                else marker in _output(tmp_path, 0)
            ),
            procs,
            timeout=300,
            what=marker,
        )
        procs[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            code = procs[survivor].wait(timeout=DEATH_BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process {survivor} still running {DEATH_BOUND_S}s after process {victim} died"
            ) from None
        took = time.monotonic() - killed_at
    finally:
        _kill_all(procs)
    output = _output(tmp_path, survivor)
    assert code != 0, output[-3000:]
    # Either jax's coordination service aborts the survivor ("another task died", naming the
    # task that stopped sending heartbeats), or a collective with the dead peer fails first:
    # then lm says so in one line and leaves at once (no shutdown barrier with the dead peer)
    clean = "could not complete a collective operation with the other processes" in output
    assert clean or "another task died" in output, output[-3000:]
    if clean:
        assert code == 1 and "Traceback" not in output, output[-3000:]
    elif victim == 1:
        assert "stopped sending heartbeats" in output, output[-3000:]
    assert took < DEATH_BOUND_S
    print(f"process {survivor} exited ({code}) {took:.1f}s after process {victim} was killed")


@pytest.mark.parametrize(
    "steps, batches",
    [
        (1, 120),  # one evaluation (step 0 is the final step): ~40 s on a 2-core box
        pytest.param(2, 300, marks=pytest.mark.slow),  # the run that first hung: ~2 min
    ],
)
def test_two_process_eval_of_many_batches_finishes(
    tmp_path, corpus, subprocess_env, steps, batches
):
    """Eval steps dispatched ahead of each other ran concurrently on the CPU backend, and
    their gloo collectives could meet in a different order on each process: the run hung in
    its first eval (the docs' two-process example, with the whole validation set). Without
    the fix this configuration (watch and step artifacts on, 300 batches) hung every time;
    with 49 batches, or with watch and the artifacts off, it did not; 120 batches hung too.
    Each batch is ~0.12 s here (the FSDP step's collectives over gloo, one step at a time)."""
    config = _run_yaml(tmp_path, corpus, steps=steps)
    validation = tmp_path / "validation.jsonl"  # ~390 eval batches
    validation.write_text(pathlib.Path(corpus).read_text() * 8)
    eval_args = (
        "--data.validation_urls", f"[{validation}]",
        # its own caches: the module's shared cache_dir holds another test's validation set
        "--data.cache_dir", str(tmp_path / "cache"),
        "--trainer.max_eval_batches", str(batches),
        "--trainer.steps_per_eval", "1000",
        "--trainer.watch.interval", "10",
        "--trainer.log_jaxprs", "true",
        "--trainer.log_xla_hlo", "true",
    )  # fmt: skip
    procs = _start_pair(config, subprocess_env, tmp_path, *eval_args)
    try:
        for p in procs:
            p.wait(timeout=300)
    except subprocess.TimeoutExpired:
        raise AssertionError("the two processes hung:\n" + _output(tmp_path, 0)[-3000:]) from None
    finally:
        _kill_all(procs)
    for pid, p in enumerate(procs):
        assert p.returncode == 0, _output(tmp_path, pid)[-3000:]
    assert _output(tmp_path, 0).count("] eval loss") == steps  # at step 0 and the final step
    assert f"over {batches} batches" in _output(tmp_path, 0)
    # Both processes append to the one <run_id>.log; each line says which wrote it.
    log = (tmp_path / "logs" / f"{RUN_ID}.log").read_text()
    assert " process 0 INFO " in log and " process 1 INFO " in log


def test_a_process_given_another_config_is_named_before_training(tmp_path, corpus, subprocess_env):
    """A flag given to one process only used to train silently on different batches (seed,
    batch size) or hang in a collective the other never reached (num_train_steps)."""
    config = _run_yaml(tmp_path, corpus, steps=4)
    odd = ("--trainer.seed", "1", "--trainer.num_train_steps", "3")
    procs = _start_pair(config, subprocess_env, tmp_path, own_args=((), odd))
    try:
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        _kill_all(procs)
    assert codes == [1, 1], [_output(tmp_path, i)[-2000:] for i in range(2)]
    assert "error: process(es) [1] were given a config that differs from process 0's" in (
        _output(tmp_path, 0)
    )
    assert (
        "error: process 1's config differs from process 0's (every process of a run must be "
        "given the same config and flags, except trainer.distributed.process_id): "
        "trainer.num_train_steps: 3 here, 4 on process 0; trainer.seed: 1 here, 0 on process 0"
    ) in _output(tmp_path, 1)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(
    "field, relative",
    [("trainer.checkpointer.base_path", f"ckpt/{RUN_ID}"), ("data.cache_dir", "cache")],
)
def test_a_directory_the_processes_do_not_share_is_named(
    tmp_path, corpus, subprocess_env, field, relative
):
    """A relative base_path from two working directories: each process wrote only its own
    shards, every checkpoint was reported committed and none could be loaded. A relative
    cache_dir: process 1 waited for a cache process 0 built where it could not see it, and
    both ended in a failed collective."""
    config = _run_yaml(tmp_path, corpus, steps=4)
    absolute = (
        str(tmp_path / "ckpt")
        if field.startswith("trainer")
        else str(pathlib.Path(corpus).parent / "cache")
    )
    text = config.read_text().replace(absolute, relative.split("/")[0])
    config.write_text(text)
    cwds = (tmp_path / "host0", tmp_path / "host1")
    for cwd in cwds:
        cwd.mkdir()
    procs = _start_pair(config, subprocess_env, tmp_path, cwds=cwds)
    try:
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        _kill_all(procs)
    assert codes == [2, 2], [_output(tmp_path, i)[-2000:] for i in range(2)]
    for pid in range(2):
        assert (
            f"error: {field} ({relative}) is not one directory shared by the processes: "
            "process(es) [1] cannot see a file process 0 wrote into it"
        ) in _output(tmp_path, pid)
    assert not (tmp_path / "host0" / relative).exists()


def test_a_cache_build_that_fails_on_process_0_stops_every_process_with_its_error(
    tmp_path, subprocess_env
):
    """Process 1 waited for the cache forever, and process 0 sat in jax's shutdown barrier
    until both aborted with C++ stack dumps; now process 1 reports process 0's error."""
    bad = tmp_path / "data" / "train.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"content": "no text key here"}\n')
    config = _run_yaml(tmp_path, str(bad), steps=4)
    procs = _start_pair(config, subprocess_env, tmp_path)
    try:  # well before jax's 300 s shutdown barrier would have given up
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        _kill_all(procs)
    assert codes == [1, 1], [_output(tmp_path, i)[-2000:] for i in range(2)]
    assert f"error: {bad}:1: no key 'text'" in _output(tmp_path, 0)
    assert (
        f"error: process 0 could not build the cache at {tmp_path / 'data' / 'cache'}/train "
        f"that this process waited for: {bad}:1: no key 'text'"
    ) in _output(tmp_path, 1)
    for pid in range(2):
        assert "Check failure" not in _output(tmp_path, pid)


def test_dead_coordinator_stops_the_worker(tmp_path, corpus, subprocess_env):
    _kill_one_and_time_the_other(tmp_path, corpus, subprocess_env, victim=0, when="joined")


@pytest.mark.slow
def test_dead_worker_stops_the_coordinator(tmp_path, corpus, subprocess_env):
    _kill_one_and_time_the_other(tmp_path, corpus, subprocess_env, victim=1, when="joined")


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_dead_process_mid_training_stops_the_other(tmp_path, corpus, subprocess_env, victim):
    _kill_one_and_time_the_other(tmp_path, corpus, subprocess_env, victim=victim, when="training")


# ---------------------------------------------------------------- train, kill, resume, compare

STEPS = 24


def _run_one_process(config: pathlib.Path, env, *extra: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lm.main.train_lm", "--config_path", str(config), *extra],
        env=_env(env, 8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _run_two_processes(config: pathlib.Path, env, out_dir: pathlib.Path, *extra: str) -> None:
    procs = _start_pair(config, env, out_dir, *extra)
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        _kill_all(procs)
    for pid, p in enumerate(procs):
        assert p.returncode == 0, _output(out_dir, pid)[-4000:]


def _losses(tmp: pathlib.Path) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in read_json_log(str(tmp / "logs" / RUN_ID / "metrics.jsonl")):
        if r["event"] == "log" and "train/loss" in r["metrics"]:
            out.setdefault(r["step"], []).append(r["metrics"]["train/loss"])
    return out


def _final_params(tmp: pathlib.Path) -> list[np.ndarray]:
    path = discover_latest_checkpoint(str(tmp / "ckpt" / RUN_ID))
    assert path is not None and path.endswith(f"step-{STEPS - 1}"), path
    model = load_checkpoint(None, path, discover_latest=False, subpath="model")
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model)]


@pytest.mark.slow
def test_two_process_fsdp_kill_resume_matches_one_process(tmp_path, corpus, subprocess_env):
    # the reference: one process driving all 8 devices (it also builds the token cache)
    reference = tmp_path / "reference"
    _run_one_process(_run_yaml(reference, corpus, steps=STEPS), subprocess_env)

    run = tmp_path / "two"
    config = _run_yaml(run, corpus, steps=STEPS)
    step4 = run / "ckpt" / RUN_ID / "step-4"
    procs = _start_pair(config, subprocess_env, run)
    try:
        _wait_until(
            lambda: discover_latest_checkpoint(str(run / "ckpt" / RUN_ID)) is not None,
            procs,
            timeout=400,
            what="the first checkpoint",
        )
    finally:
        _kill_all(procs)  # both, mid-run
    killed_at = discover_latest_checkpoint(str(run / "ckpt" / RUN_ID))
    assert killed_at == str(step4), killed_at
    assert "2 process(es), 8 device(s)" in _output(run, 0)
    # FSDP splits the token embedding's `embed` axis over the 8 devices, 4 per process: every
    # chunk is on disk, so process 1 wrote the 4 it holds (process 0 never sees them).
    chunks = step4 / "model" / "embeddings" / "token_embeddings" / "weight" / "c"
    assert sorted(int(c.name) for c in (chunks / "0").iterdir()) == list(range(8))

    _run_two_processes(config, subprocess_env, run)
    assert f"Initial state resumed from {step4}" in _output(run, 0)

    losses, expected = _losses(run), _losses(reference)
    assert sorted(losses) == sorted(expected) == list(range(STEPS))
    for step, values in losses.items():
        # steps run before the kill and again after the resume all give the reference loss
        np.testing.assert_allclose(values, expected[step] * len(values), rtol=1e-5, err_msg=step)
    for a, b in zip(_final_params(run), _final_params(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_agree_to_skip_an_evaluation_logged_before_the_resume(
    tmp_path, corpus, subprocess_env
):
    """Only process 0 holds the JSON log that says whether the restored step's evaluation
    finished. The other process follows its answer: were they to disagree, one would wait
    in the evaluation's collectives for ever."""
    config = _run_yaml(tmp_path, corpus, steps=5)  # steps 0-4; step-4 is saved (every 4)
    validation = tmp_path / "validation.jsonl"
    validation.write_text(pathlib.Path(corpus).read_text())
    eval_args = (
        "--data.validation_urls", f"[{validation}]",
        # its own caches: the module's shared cache_dir holds another test's validation set
        "--data.cache_dir", str(tmp_path / "cache"),
        "--trainer.max_eval_batches", "2",
        "--trainer.steps_per_eval", "4",
    )  # fmt: skip
    _run_two_processes(config, subprocess_env, tmp_path, *eval_args)
    _run_two_processes(
        config, subprocess_env, tmp_path, *eval_args, "--trainer.num_train_steps", "7"
    )
    assert "The evaluation of step 4 was logged before the run stopped: not run again" in (
        _output(tmp_path, 0)
    )
    evals = [
        r["step"]
        for r in read_json_log(str(tmp_path / "logs" / RUN_ID / "metrics.jsonl"))
        if r["event"] == "log" and "eval/loss" in r["metrics"]
    ]
    assert evals == [0, 4, 6]


# ---------------------------------------------------------------- HF checkpoints across hosts

HF_STEPS = 3


def _exported(hf_root: pathlib.Path) -> pathlib.Path:
    (step_dir,) = list((hf_root / RUN_ID).iterdir())
    assert step_dir.name == f"step-{HF_STEPS - 1}", step_dir
    return step_dir


@pytest.mark.slow
def test_two_process_fsdp_hf_export_and_initialize_from_hf(tmp_path, corpus, subprocess_env):
    """HF checkpoints when the parameters are split over 2 processes (FSDP over 8 devices):
    the export (both processes gather, process 0 writes) holds exactly the run's final
    parameters, and a 2-process run initialized from it (each process placing only its own
    devices' shards) starts at the loss a 1-process run initialized from it starts at."""
    import equinox as eqx
    import haliax as hax

    from lm.models import Gpt2Config
    from lm.models.hf.compat import model_to_hf_state_dict
    from lm.models.hf.converter import read_hf_weights

    run = tmp_path / "export"
    _run_two_processes(
        _run_yaml(run, corpus, steps=HF_STEPS),
        subprocess_env,
        run,
        "--hf_save_path",
        str(run / "hf"),
    )
    assert "2 process(es), 8 device(s)" in _output(run, 0)
    exported_dir = _exported(run / "hf")
    exported, _ = read_hf_weights(str(exported_dir))

    # the run's own final checkpoint, in HF keys: the export must be exactly it
    vocab = json.loads((exported_dir / "config.json").read_text())["vocab_size"]
    model = yaml.safe_load((run / "run.yaml").read_text())["model"]
    model.pop("type")
    template = eqx.filter_eval_shape(
        Gpt2Config(**model).build, hax.Axis("vocab", vocab), key=jax.random.PRNGKey(0)
    )
    final = discover_latest_checkpoint(str(run / "ckpt" / RUN_ID))
    expected = model_to_hf_state_dict(load_checkpoint(template, final, subpath="model"))
    assert sorted(exported) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(exported[key], expected[key], err_msg=key)

    init = ("--initialize_from_hf", str(exported_dir))
    one_init, two_init = tmp_path / "one_init", tmp_path / "two_init"
    _run_one_process(_run_yaml(one_init, corpus, steps=1), subprocess_env, *init)
    _run_two_processes(_run_yaml(two_init, corpus, steps=1), subprocess_env, two_init, *init)
    assert f"Loaded the HF checkpoint {exported_dir}" in _output(two_init, 1)
    start, reference_start = _losses(two_init)[0], _losses(one_init)[0]
    np.testing.assert_allclose(start, reference_start, rtol=1e-5)
    # a run initialized from the export starts where the exporting run ended, not at ~ln(V)
    assert start[0] < _losses(run)[HF_STEPS - 1][-1] + 0.5
