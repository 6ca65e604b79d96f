"""Every process of a multi-process run must run the same config.

Each process parses its own command line, so a flag given to one process only (another seed,
batch size or step count) would otherwise go unnoticed: the processes then train on
different batches and silently diverge, or one of them waits forever in a collective the
other never reaches. `check_same_config` compares the resolved configs once, right after
`jax.distributed` starts, and names the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lm.config.errors import SetupConfigError

PER_PROCESS_FIELDS = ("trainer.distributed.process_id", "trainer.distributed.local_device_ids")
"""Fields that legitimately differ between the processes of one run."""


def config_differences(mine: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """`field: value here vs value on process 0` for every flat key whose values differ."""
    out = []
    for key in sorted(set(mine) | set(reference)):
        if mine.get(key, "<unset>") != reference.get(key, "<unset>"):
            out.append(
                f"{key}: {mine.get(key, '<unset>')!r} here, {reference.get(key, '<unset>')!r} "
                "on process 0"
            )
    return out


def check_same_config(config: Any, *, exclude: Iterable[str] = PER_PROCESS_FIELDS) -> None:
    """Raise a ValueError on every process unless all processes hold the same config (a
    config dataclass, compared field by field through `lm.config.to_flat_dict`), leaving out
    `exclude`. A no-op for one process.

    Collective: every process must call it, in the same place.
    """
    import jax
    from jax.experimental import multihost_utils

    import lm.config

    if jax.process_count() == 1:
        return
    skip = set(exclude)
    mine = {k: v for k, v in lm.config.to_flat_dict(config).items() if k not in skip}
    text = json.dumps(mine, sort_keys=True, default=str).encode()
    digest = np.frombuffer(hashlib.sha256(text).digest(), dtype=np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest))
    differing = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
    if not differing:
        return
    # Name the fields: process 0's config goes to everyone (length first, then the bytes).
    size = int(multihost_utils.broadcast_one_to_all(np.int64(len(text))))
    padded = np.zeros(size, np.uint8)
    if jax.process_index() == 0:
        padded[:] = np.frombuffer(text, np.uint8)
    reference = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))))
    here = jax.process_index()
    if here in differing:
        lines = config_differences(json.loads(text), reference)
        raise ValueError(
            f"process {here}'s config differs from process 0's (every process of a run must "
            "be given the same config and flags, except trainer.distributed.process_id): "
            + "; ".join(lines)
        )
    raise ValueError(
        f"process(es) {differing} were given a config that differs from process 0's (their "
        "output names the fields); every process of a run must be given the same config and "
        "flags, except trainer.distributed.process_id"
    )


_CHECKPOINTS = "Every process writes its own shards of each checkpoint there"
CACHES = "Process 0 builds the data cache there while the others wait to read it"


def check_shared_directory(url: str, *, field: str, why: str = _CHECKPOINTS) -> None:
    """Raise a `SetupConfigError` on every process unless all processes see the same local
    directory `url` (a checkpoint directory, which each process writes its own shards into;
    a data cache, which process 0 builds for the others; `why` says which). Remote URLs
    (gs://, s3://) are shared by nature and are not checked. A no-op for one process. A
    directory made for the check is removed again.

    Collective: every process must call it, in the same place.
    """
    import os

    import jax
    from jax.experimental import multihost_utils

    from lm.fs import local_path

    path = local_path(url)
    if jax.process_count() == 1 or path is None:
        return
    marker = os.path.join(path, ".lm-shared-directory-check")
    created = not os.path.exists(path)
    if jax.process_index() == 0:
        os.makedirs(path, exist_ok=True)
        with open(marker, "w") as f:
            f.write("written by process 0 to check that every process sees this directory\n")
    multihost_utils.sync_global_devices("lm-shared-directory-written")
    seen = np.asarray(multihost_utils.process_allgather(np.int32(os.path.exists(marker))))
    if jax.process_index() == 0:
        os.remove(marker)
    blind = [i for i, s in enumerate(seen.reshape(-1)) if not s]
    if created and jax.process_index() == 0:
        os.rmdir(path)  # made only for the check
    if blind:
        raise SetupConfigError(
            f"{field} ({url}) is not one directory shared by the processes: process(es) "
            f"{blind} cannot see a file process 0 wrote into it. {why}, so it must be shared "
            "storage (a network filesystem mounted at the same path on every host, or gs:// / "
            "s3://)"
        )
