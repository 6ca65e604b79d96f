"""What each `lm.main.plan` suggestion saves: plan a run, then apply each suggested config
change on its own and plan again (XLA memory analysis of the compiled step, per device).

    PYTHONPATH=src python bench/plan_advice.py --num_devices 4

The default run is a 6-layer GPT-2 (hidden 256, seq 512, batch 32, f32, no gradient
checkpointing); `--config_path` plans another run YAML instead.
"""

from __future__ import annotations

import argparse
import time

from bench_args import positive_int

BASE = {
    "model.type": "gpt2",
    "model.seq_len": "512",
    "model.hidden_dim": "256",
    "model.num_layers": "6",
    "model.num_heads": "4",
    "model.gradient_checkpointing": "false",
    "trainer.train_batch_size": "32",
    "trainer.num_train_steps": "1000",
    "trainer.require_accelerator": "false",
    "trainer.tracker.type": "noop",
}

VARIANTS = {
    "as configured": {},
    "model.gradient_checkpointing: true": {"model.gradient_checkpointing": "true"},
    "trainer.per_device_parallelism: half": {"trainer.per_device_parallelism": "HALF"},
    'trainer.mp: "p=f32,c=bfloat16"': {"trainer.mp": "p=f32,c=bfloat16"},
    "model.cross_entropy_block_size: 1024": {"model.cross_entropy_block_size": "1024"},
    "all of the above": {
        "model.gradient_checkpointing": "true",
        "trainer.per_device_parallelism": "HALF",
        "trainer.mp": "p=f32,c=bfloat16",
        "model.cross_entropy_block_size": "1024",
    },
    "for contrast: trainer.model_axis_size: 2": {"trainer.model_axis_size": "2"},
    "for contrast: trainer.fsdp_axis: null": {"trainer.fsdp_axis": "null"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config_path", default=None)
    p.add_argument("--num_devices", type=positive_int, default=4)
    args = p.parse_args()

    from lm.main.plan import PlanConfig, use_simulated_devices

    use_simulated_devices(args.num_devices)
    import jax

    import lm.config
    from lm.plan import format_size, plan_lm

    base = {} if args.config_path else dict(BASE)
    try:
        first = plan_lm(lm.config.parse(PlanConfig, args.config_path, args=_flags(base)))
    except lm.config.ConfigError as e:
        where = f"--config_path {args.config_path}" if args.config_path else "the default run"
        p.error(f"{where}: " + "; ".join(str(problem) for problem in e.problems))
    except lm.config.SetupConfigError as e:
        p.error(f"--num_devices {args.num_devices}: {e}")
    half = str(max(first.examples_per_device // 2, 1))
    print(
        f"jax {jax.__version__}, {args.num_devices} simulated CPU devices; "
        f"{first.num_params / 1e6:.1f}M parameters, batch {first.batch_size}, "
        f"{first.examples_per_device} examples per device per forward"
    )
    rows = [("change", "total", "arguments", "temporaries", "compile")]
    for name, overrides in VARIANTS.items():
        flags = {**base, **{k: half if v == "HALF" else v for k, v in overrides.items()}}
        config = lm.config.parse(PlanConfig, args.config_path, args=_flags(flags))
        start = time.perf_counter()
        plan = first if not overrides else plan_lm(config)
        seconds = plan.compile_seconds if not overrides else time.perf_counter() - start
        m = plan.memory
        rows.append(
            (
                name.replace("half", half),
                format_size(m.total_bytes),
                format_size(m.argument_bytes),
                format_size(m.temp_bytes),
                f"{seconds:.1f} s",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print(
            "| "
            + " | ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            + " |"
        )
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def _flags(values: dict[str, str]) -> list[str]:
    return [item for k, v in values.items() for item in (f"--{k}", v)]


if __name__ == "__main__":
    main()
