"""What `TrainerConfig.initialize()` does: the process-level setup of a run.

In the order TRN-02/DST-03 require: the run's folders checked writable, jax config flags,
`jax.distributed`, the platform and accelerator checks, the mesh and batch sizes against
the devices, then the run id and logging to `<log_dir>/<run_id>.log`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import jax

from lm.config import FieldError, SetupConfigError

if TYPE_CHECKING:
    from lm.trainer.config import TrainerConfig

# the config's logger: what initialize() says is said by `lm.trainer.config`, as before it
# moved here (its warnings are filtered on that name)
logger = logging.getLogger("lm.trainer.config")


class NoAcceleratorError(SetupConfigError, RuntimeError):
    """`trainer.require_accelerator` is set (the default off CPU-only configs) and JAX found
    only the CPU."""


def initialize(config: TrainerConfig) -> None:
    """Process-level setup, in order: jax flags, jax.distributed, run id, logging, checks."""
    from lm.fs import cannot_write_directory

    # before anything is written: `os.makedirs` would fail mid-run on a file in the way,
    # and a folder the run cannot write would fail its first save, after the training
    for field, url in (
        ("log_dir", str(config.log_dir)),
        ("checkpointer.base_path", config.checkpointer.base_path),
    ):
        why = cannot_write_directory(url)
        if why is not None:
            raise FieldError(f"trainer.{field}", why)
    if config.checkpointer.base_path.startswith("memory://"):
        logger.warning(
            "trainer.checkpointer.base_path is %s: checkpoints in memory:// live as long "
            "as this process, so nothing can resume, evaluate or export this run after it "
            "exits (use a local path or a gs:// / s3:// URL to keep them)",
            config.checkpointer.base_path,
        )
    cache_dir = config.jax_compilation_cache_dir
    if cache_dir is not None:
        if "://" not in cache_dir:
            cache_dir = os.path.expanduser(cache_dir)  # jax takes `~/jc` as a folder named ~
        # jax turns the cache off with a warning per entry when it cannot write there
        why = cannot_write_directory(cache_dir)
        if why is not None:
            raise FieldError("trainer.jax_compilation_cache_dir", why)
    for key, value in config.jax_config.items():
        jax.config.update(key, value)
    if cache_dir is not None:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
    from lm.compile_options import use_unrolled_threefry_on_cpu

    use_unrolled_threefry_on_cpu()
    config.distributed.initialize()
    check_platform_starts(config)
    # said before the log file exists, as other configuration problems are
    if config.effective_require_accelerator and jax.default_backend() == "cpu":
        raise NoAcceleratorError(
            "No accelerator found: JAX is running on CPU. Set trainer.require_accelerator: false "
            "to run on CPU anyway."
        )
    _ = config.device_mesh  # its sizes against the devices (a SetupConfigError), likewise
    config.validate_batch_sizes()  # and the batch sizes against them, before the log file
    run_id = config.run_id
    from lm.tracker.logs import configure_logging

    configure_logging(
        os.path.join(str(config.log_dir), f"{run_id}.log"),
        process_index=jax.process_index() if jax.process_count() > 1 else None,
    )
    from lm.launch.shutdown import register_shutdown_at_exit

    register_shutdown_at_exit(config.shutdown_at_exit)
    logger.info(
        "Run %s: %d process(es), %d device(s) (%s), mesh %s",
        run_id,
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
        dict(config.device_mesh.shape),
    )
    for message in config.mesh_warnings():
        logger.warning("%s", message)


def check_platform_starts(config: TrainerConfig) -> None:
    """JAX's backend for the platform asked for must start: `JAX_PLATFORMS=cuda` without
    a GPU plugin was a traceback ending in a bare AssertionError."""
    try:
        jax.devices()
    except (RuntimeError, AssertionError) as e:
        if "jax_platforms" in config.jax_config:
            asked = f"trainer.jax_config.jax_platforms ({config.jax_config['jax_platforms']})"
        elif os.environ.get("JAX_PLATFORMS"):
            asked = f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']} (the environment variable)"
        else:
            raise
        why = (
            str(e).strip().splitlines()[0]
            if str(e).strip()
            else (
                "no device of that platform was found (is its jax plugin installed, e.g. "
                "jax[cuda12]?)"
            )
        )
        raise SetupConfigError(f"{asked}: JAX cannot start it: {why}") from None
