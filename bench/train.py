"""Training throughput of `python -m lm.main.train_lm` on a config: step time, tokens/s, MFU,
time to first step, peak memory.

Usage:
    PYTHONPATH=src python bench/train.py --config bench/configs/gpt2_256.yaml \
        [--steps 20] [--warmup 3] [--repeats 1] [--json out.json] [--timeline] \
        [-- --model.x y ...]

Each repeat runs the real CLI (`lm.config.main(lm.main.train_lm.main)`) in a fresh Python
process, so the time to first step counts interpreter start, imports, data-cache checks,
model init and compilation: it is measured from just before the process is spawned to the
end of step 0 (the loss on the host). Each step's end is stamped when the trainer runs its
hooks (after the loss is on the host), so a step's time includes data loading and the hooks.

Reported per run (JSON on stdout, then one summary line):
- `step_s`: median step time over the steps after `--warmup` (step 0 compiles, and the step
  after the first jit-hook step compiles the hook-free variant);
- `tokens_per_s` = batch x seq_len / `step_s`;
- `mfu` = 3 x `flops_per_token` (forward + backward) x tokens/s / (peak x devices), where the
  peak is the best of 10 float32 2048^2 matmuls in the same process after training on CPU and the
  dense table peak for the compute dtype on accelerators (lm.trainer.throughput);
- `first_step_s`: process spawn -> end of step 0; `steady_s`: spawn -> end of step `warmup - 1`;
- `peak_rss_gb` (the worker's max RSS) and `peak_device_gb` (accelerators: peak bytes in use).

`--timeline` also prints, per run, when each start-up phase ended (seconds from spawn: jax and
lm imported, the config parsed, jax's trace / lower / compile spans of 0.05 s or more, the
state initialized, the prefault pool released, steps 0-4 done), each with the CPU time and
page faults since the previous line.

Extra arguments after `--` go to train_lm (e.g. `-- --model.gradient_checkpointing true`).
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping

from bench_args import non_negative_int, positive_int

MARKER = "BENCH_TRAIN_RESULT "
# the CPU peak: best of PEAK_REPEATS float32 PEAK_N^2 matmuls, measured after training (both
# lm's and the reference's workers)
PEAK_N = 2048
PEAK_REPEATS = 10
DEFAULT_CACHE = os.path.expanduser("~/.cache/lm-bench/stdlib-cache")


def _worker(argv: list[str]) -> None:
    """Runs train_lm in this process and prints MARKER + JSON with per-step end times."""
    t0 = float(os.environ["BENCH_T0"])
    # What `python -m lm.main.train_lm` does first (before jax is imported).
    from lm.host_memory import cpu_only, tune_host_allocator
    from lm.startup_gc import pause

    tune_host_allocator()
    pause()
    if cpu_only():
        import lm.prefault

        lm.prefault.start()
    import functools

    timeline = _Timeline(t0) if os.environ.get("BENCH_TIMELINE") else None
    import jax

    if timeline is not None:
        timeline.mark("jax imported")
        timeline.listen(jax)
    import lm.config
    import lm.main.train_lm as train_lm
    from lm.trainer import Trainer

    if timeline is not None:
        timeline.mark("lm imported")
        timeline.wrap(Trainer, "initial_state", "state initialized")
        timeline.wrap_prefault()

    step_ends: dict[int, float] = {}
    captured = {}
    original_run_hooks = Trainer.run_hooks

    def run_hooks(self, info, force: bool = False):
        if not force and info.step not in step_ends:
            step_ends[info.step] = time.time() - t0
            if timeline is not None and info.step < 5:
                timeline.mark(f"step {info.step} done")
        return original_run_hooks(self, info, force)

    Trainer.run_hooks = run_hooks

    @functools.wraps(train_lm.main)
    def main(config):
        captured["config"] = config
        if timeline is not None:
            timeline.mark("configured")
        return train_lm.main(config)

    lm.config.main(main)(args=argv)
    end = time.time() - t0

    import jax

    from lm.trainer.throughput import device_peak_flops, measured_cpu_peak_flops

    config = captured["config"]
    vocab = len(config.data.the_tokenizer)
    flops = config.model.flops_per_token(vocab)
    device = jax.devices()[0]
    if device.platform == "cpu":
        # measured again now that training is over (the throughput hook measures at step 0,
        # beside the data loader's thread), as the reference comparison measures its peak
        peak = measured_cpu_peak_flops(PEAK_N, PEAK_REPEATS) / max(1, jax.local_device_count())
    else:
        peak = device_peak_flops(config.trainer.mp.compute_dtype)
    device_gb = None
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        device_gb = stats["peak_bytes_in_use"] / 2**30
    result = {
        "step_ends": [step_ends[s] for s in sorted(step_ends)],
        "process_s": end,
        "train_flops_per_token": 3 * flops if flops is not None else None,
        "tokens_per_step": config.trainer.batch_schedule.batch_size_at_step(0)
        * config.model.Pos.size,
        "peak_flops_per_device": peak,
        "devices": jax.device_count(),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "peak_device_gb": device_gb,
        "jax": jax.__version__,
    }
    if timeline is not None:
        result["timeline"] = timeline.events
    print(MARKER + json.dumps(result), flush=True)


class _Timeline:
    """Seconds from process spawn at which start-up phases end (`--timeline`): marks placed by
    the worker and jax's own trace / lowering / compile spans (jax.monitoring), in order."""

    EVENTS = {  # jax's span events -> short names
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "compile",
    }

    def __init__(self, t0: float):
        self.t0 = t0
        self.events: list[dict] = []

    def mark(self, what: str, end: float | None = None, **extra) -> None:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.events.append(
            {
                "what": what,
                "end": (time.time() if end is None else end) - self.t0,
                "cpu": {"user": ru.ru_utime, "system": ru.ru_stime, "minor_faults": ru.ru_minflt},
                **extra,
            }
        )

    def listen(self, jax) -> None:
        def span(event: str, start: float, end: float, **kwargs) -> None:
            name = self.EVENTS.get(event)
            if name is not None and end - start >= 0.05:  # the many tiny ones: noise
                self.mark(f"{name} {kwargs.get('fun_name', '?')}", end, seconds=end - start)

        jax.monitoring.register_event_time_span_listener(span)

    def wrap_prefault(self) -> None:
        """Marks when lm.prefault hands pages back, and how many."""
        import lm.prefault

        original = lm.prefault.release

        def release(nbytes=None):
            freed = original(nbytes)
            if freed:
                what = "the rest" if nbytes is None else "the state's share"
                self.mark(f"prefault pool: {what} released, {freed / 2**20:.0f} MiB")
            return freed

        lm.prefault.release = release

    def wrap(self, cls, method: str, what: str) -> None:
        original = getattr(cls, method)

        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            self.mark(what)
            return out

        setattr(cls, method, wrapped)


def print_timeline(events: list[dict]) -> None:
    """One line per event, with the process's CPU time and minor page faults since the
    previous one."""
    last = {"user": 0.0, "system": 0.0, "minor_faults": 0}
    for e in sorted(events, key=lambda e: e["end"]):
        took = f" ({e['seconds']:.2f} s)" if "seconds" in e else ""
        cpu = ""
        if "cpu" in e:
            d = {k: e["cpu"][k] - last[k] for k in last}
            cpu = (
                f"  [cpu +{d['user']:.2f} s user, +{d['system']:.2f} s system, "
                f"+{d['minor_faults']:,} faults]"
            )
            last = e["cpu"]
        print(f"  {e['end']:7.2f} s  {e['what']}{took}{cpu}")


def summarize(raw: dict, warmup: int) -> dict:
    """Step times from step-end stamps, tokens/s, MFU (pure function; also used by the
    reference comparison)."""
    ends = raw["step_ends"]
    if len(ends) <= warmup:
        raise ValueError(f"{len(ends)} steps ran; need more than --warmup ({warmup})")
    times = [ends[0]] + [b - a for a, b in zip(ends, ends[1:], strict=False)]
    steady = times[warmup:]
    step_s = statistics.median(steady)
    tokens_per_s = raw["tokens_per_step"] / step_s
    mfu = None
    if raw.get("train_flops_per_token") and raw.get("peak_flops_per_device"):
        peak = raw["peak_flops_per_device"] * raw.get("devices", 1)
        mfu = 100.0 * raw["train_flops_per_token"] * tokens_per_s / peak
    return {
        "step_s": step_s,
        "step_s_min": min(steady),
        "step_s_max": max(steady),
        "tokens_per_s": tokens_per_s,
        "mfu": mfu,
        "first_step_s": ends[0],
        "steady_s": ends[warmup - 1] if warmup > 0 else ends[0],
        "step_times": times,
    }


def run_once(
    config: str, steps: int, extra: list[str], *, cache_dir: str, run_dir: str
) -> tuple[dict, float]:
    """One fresh-process run of train_lm; returns (worker result, peak RSS GB)."""
    argv = [
        "--config_path",
        config,
        "--trainer.num_train_steps",
        str(steps),
        "--data.cache_dir",
        cache_dir,
        "--trainer.log_dir",
        os.path.join(run_dir, "logs"),
        "--trainer.checkpointer.base_path",
        os.path.join(run_dir, "checkpoints"),
        *extra,
    ]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *argv]
    return run_marked(cmd, os.environ, marker=MARKER, what=f"train_lm on {config}")


def run_marked(
    cmd: list[str], env: Mapping[str, str], *, marker: str, what: str, cwd: str | None = None
) -> tuple[dict, float]:
    """Run `cmd` in a fresh process (BENCH_T0 = its start time) and return the JSON it prints
    after `marker`, with the process's peak RSS in GB. Exits with its output tail on failure."""
    env = {**env, "BENCH_T0": repr(time.time())}
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = proc.stdout.read()
    _, status, rusage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    result = None
    for line in output.splitlines():
        if line.startswith(marker):
            result = json.loads(line[len(marker) :])
    if code != 0 or result is None:
        sys.stderr.write(output[-6000:])
        raise SystemExit(f"{what} failed (exit {code})")
    return result, rusage.ru_maxrss * 1024 / 2**30  # Linux: KiB


def bench(
    config: str, *, steps: int, warmup: int, repeats: int, extra: list[str], cache_dir: str
) -> dict:
    import tempfile

    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="lm-bench-") as run_dir:
            raw, rss = run_once(config, steps, extra, cache_dir=cache_dir, run_dir=run_dir)
        summary = summarize(raw, warmup)
        summary["peak_rss_gb"] = rss
        summary["peak_device_gb"] = raw["peak_device_gb"]
        runs.append((summary, raw))
        if raw.get("timeline"):
            print(f"run {len(runs)}: start-up timeline (seconds from spawn)")
            print_timeline(raw["timeline"])
    med = lambda key: statistics.median(r[0][key] for r in runs)  # noqa: E731
    raw = runs[0][1]
    mfus = [r[0]["mfu"] for r in runs if r[0]["mfu"] is not None]
    return {
        "impl": "lm",
        "config": config,
        "extra_args": extra,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "tokens_per_step": raw["tokens_per_step"],
        "train_flops_per_token": raw["train_flops_per_token"],
        "peak_flops_per_device": raw["peak_flops_per_device"],
        "devices": raw["devices"],
        "device_kind": raw["device_kind"],
        "jax": raw["jax"],
        "step_s": med("step_s"),
        "tokens_per_s": med("tokens_per_s"),
        "tokens_per_s_all": [r[0]["tokens_per_s"] for r in runs],
        "mfu": statistics.median(mfus) if mfus else None,
        "first_step_s": med("first_step_s"),
        "steady_s": med("steady_s"),
        "peak_rss_gb": med("peak_rss_gb"),
        "peak_device_gb": raw["peak_device_gb"],
        "runs": [r[0] for r in runs],
    }


def summary_line(r: dict) -> str:
    mfu = f"{r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    dev = f", device peak {r['peak_device_gb']:.2f} GB" if r.get("peak_device_gb") else ""
    return (
        f"{r['impl']} {os.path.basename(r['config'])}: {r['tokens_per_s']:,.0f} tokens/s "
        f"(step {r['step_s']:.3f} s, median of {r['repeats']} run(s)), MFU {mfu}, "
        f"first step {r['first_step_s']:.1f} s, steady after {r['steady_s']:.1f} s, "
        f"peak RSS {r['peak_rss_gb']:.2f} GB{dev}"
    )


def ensure_bytecode() -> None:
    """Compile lm's sources to bytecode before timing anything, even under
    PYTHONDONTWRITEBYTECODE=1: pip compiled the reference's installed package, while lm's
    editable install has no bytecode until something writes it (~0.2 s per process start)."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    compileall.compile_dir(src, quiet=1)


def ensure_cache(config: str, cache_dir: str) -> None:
    """Build the token cache once (outside any timed run), so runs time training, not
    tokenization."""
    if os.path.exists(os.path.join(cache_dir, "train")) and os.path.exists(
        os.path.join(cache_dir, "validation")
    ):
        return
    cmd = [sys.executable, "-m", "lm.main.cache_dataset", "--config_path", config]
    cmd += ["--data.cache_dir", cache_dir]
    if importlib.util.find_spec("ray") is None:
        # e.g. the GPU machines' image, which has no Ray and cannot fetch it
        print("Ray is not installed: building the token cache in this process", flush=True)
        cmd += ["--data.cache_options.backend", "local"]
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise SystemExit(
            f"error: building the token cache for {config} failed (exit {code}; output above)"
        )


def check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`parser.error` (one line, exit 2) for --steps/--warmup/--json values that could not
    give a result, before anything runs (also used by compare_reference.py); the counts' own
    bounds are their argparse types (bench_args.py)."""
    if args.steps <= args.warmup:
        parser.error(
            f"--steps {args.steps}: must be more than --warmup ({args.warmup}), the steps "
            "left out of the median"
        )
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json}: its directory does not exist")


def check_config_exists(parser: argparse.ArgumentParser, flag: str, config: str) -> None:
    """`parser.error` for a local config file that is not there (URLs are left to lm)."""
    if "://" not in config and not os.path.isfile(config):
        parser.error(f"{flag} {config}: no such file")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2:])
        return
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s --config CONFIG [options] [-- train_lm arguments ...]",
        epilog="Arguments after `--` go to train_lm as they are, e.g.\n"
        "  -- --model.gradient_checkpointing true",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=3,
        help="first steps left out of the median step time",
    )
    parser.add_argument("--repeats", type=positive_int, default=1)
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE)
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="print when each start-up phase of each run ended (jax's trace / lower / "
        "compile spans of 0.05 s or more, state init, prefault releases, steps 0-4), in "
        "seconds from spawn, with the CPU time and page faults since the line before",
    )
    args = parser.parse_args(argv)
    check_run_args(parser, args)
    check_config_exists(parser, "--config", args.config)
    ensure_bytecode()
    ensure_cache(args.config, args.cache_dir)
    if args.timeline:
        os.environ["BENCH_TIMELINE"] = "1"
    result = bench(
        args.config,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        extra=extra,
        cache_dir=args.cache_dir,
    )
    result["load_avg_1m"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    if args.json:
        text = json.dumps(result, indent=2)  # serialised first: no half-written file
        with open(args.json, "w") as f:
            f.write(text)
    print(summary_line(result))


if __name__ == "__main__":
    main()
