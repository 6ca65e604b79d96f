"""Build a run's tokenized caches ahead of training:
`python -m lm.main.cache_dataset --config_path run.yaml`.

Takes the same YAML as `train_lm` and builds every split of every source in its `data:`
section (on the Ray cluster of `trainer.ray` for `cache_options.backend: ray`), with a progress
bar (docs/s, tokens/s). Rerunning after a crash finishes the build without redoing finished
shards; rerunning on a finished cache only checks its ledger.
"""

from __future__ import annotations

import logging

import lm.config
from lm.data import TokenCache
from lm.main.run_checks import check_data_paths
from lm.main.train_lm import TrainLmConfig, build_data_caches
from lm.tracker.logs import configure_logging

logger = logging.getLogger(__name__)


def main(config: TrainLmConfig) -> dict[str, TokenCache]:
    check_data_paths(config)  # before anything is written, as train_lm checks them
    configure_logging(None)
    caches = build_data_caches(config, progress=True)
    for name, cache in caches.items():
        print(
            f"{name}: {cache.num_docs:,} documents, {cache.num_tokens:,} tokens at {cache.cache_dir}"
        )
    return caches


if __name__ == "__main__":
    lm.config.main(main)()
