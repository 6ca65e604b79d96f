"""Build a tokenized cache standalone: `python -m lm.main.cache_dataset --config_path data.yaml`.

The YAML is a run config with a `data:` section (single source or mixture) and an
optional `ray:` section; every split of every source is tokenized into its cache, with a
progress bar (docs/s, tokens/s). Rerunning after a crash finishes the build without
redoing finished shards; rerunning on a finished cache only checks its ledger.
"""

import dataclasses
import logging

import draccus

from lm.data import LMDatasetConfig, LMMixtureDatasetConfig, TokenCache
from lm.distributed import RayConfig, shutdown_ray

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CacheDatasetConfig:
    data: LMDatasetConfig | LMMixtureDatasetConfig = dataclasses.field(
        default_factory=LMDatasetConfig
    )
    """The sources, tokenizer and cache location (as in a training run)."""
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    """The Ray cluster for `cache_options.backend: ray`."""
    progress: bool = True
    """Show a progress bar per cache."""


def main(config: CacheDatasetConfig) -> dict[str, TokenCache]:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import ray

    started_ray = not ray.is_initialized()
    try:
        caches = config.data.build_caches(progress=config.progress, ray_config=config.ray)
    finally:
        if started_ray:
            shutdown_ray()
    for name, cache in caches.items():
        print(
            f"{name}: {cache.num_docs:,} documents, {cache.num_tokens:,} tokens at {cache.cache_dir}"
        )
    return caches


if __name__ == "__main__":
    # TODO(lead): switch to lm.config.main(main)() once lm.config lands (it adds base-config
    # inheritance and did-you-mean errors on top of draccus's --config_path/!include).
    draccus.wrap()(main)()
