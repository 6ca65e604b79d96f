"""HF `datasets` sources: one split of a dataset (a `save_to_disk` directory, a folder of
data files, or a hub id: only the local HF cache when the hub cannot be reached), cut into
contiguous row-range shards.

A bad row (a value the tokenizer cannot take) is an error naming the dataset, split and row,
or with `skip_bad_lines: true` it is skipped and counted, as for files (`lm.data.sources`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os

from lm.data.formats import bad_line
from lm.data.sources import DEFAULT_TRAIN_SPLIT, ShardedSource, local_directory

ROWS_PER_HF_SHARD = 10_000
MAX_HF_SHARDS = 256


class MissingSplit(ValueError):
    """An HF dataset has no split of the name asked for (for `validation_split`: no
    validation set, with a warning)."""


def _unknown_split(e: Exception) -> bool:
    """Whether `datasets` raised `e` for a split name the dataset does not have."""
    return str(e).startswith("Unknown split")


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """`datasets` and `huggingface_hub` in offline mode (the local HF cache only), for one
    load: both read these module flags at call time, and there is no per-call switch."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _load_hf_split(id: str, name: str | None, split: str):
    """One split of an HF dataset: a `save_to_disk` directory, a folder of data files, or a
    hub id (the local HF cache first).

    Raises:
        MissingSplit: the dataset has no split `split` (a bare `Dataset` saved with
            `save_to_disk` has none: it is the train split).
        ValueError: the dataset cannot be loaded.
    """
    import datasets
    import huggingface_hub.constants

    from lm.data.tokenizer import hub_unresolvable

    path = os.path.expanduser(id[len("file://") :] if id.startswith("file://") else id)
    if os.path.isdir(path):
        saved = os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(
            os.path.join(path, "state.json")
        )
        if saved:
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise MissingSplit(
                        f"HF dataset {id!r} has no split {split!r}; splits: {', '.join(ds)}"
                    )
                ds = ds[split]
            elif split != DEFAULT_TRAIN_SPLIT:
                raise MissingSplit(
                    f"HF dataset {id!r} has no split {split!r}: it is a single Dataset (saved "
                    "with Dataset.save_to_disk), which has no splits and is used whole as the "
                    f"train split. Leave train_split at {DEFAULT_TRAIN_SPLIT!r}, or save a "
                    "DatasetDict to choose splits"
                )
            return ds
        try:
            return datasets.load_dataset(path, name, split=split)
        except ValueError as e:
            if _unknown_split(e):
                raise MissingSplit(
                    f"HF dataset directory {id!r} has no split {split!r}; datasets says: {e}"
                ) from e
            raise ValueError(f"HF dataset directory {id!r}, split {split!r}: {e}") from e
    unreachable = None if huggingface_hub.constants.HF_HUB_OFFLINE else hub_unresolvable()
    try:
        # With the hub unreachable, only the local HF cache is tried: no ~30 s of retries.
        with _hub_offline(unreachable is not None):
            return datasets.load_dataset(id, name, split=split)
    except ValueError as e:
        if _unknown_split(e):
            raise MissingSplit(
                f"HF dataset {id!r} has no split {split!r}; datasets says: {e}"
            ) from e
        if "split" in str(e).lower():
            raise ValueError(f"HF dataset {id!r}: {e}") from e
        raise _offline_error(id, e, unreachable) from e
    except Exception as e:  # connection errors come in many types (requests, httpx, OSError)
        raise _offline_error(id, e, unreachable) from e


def _offline_error(id: str, e: Exception, unreachable: str | None = None) -> ValueError:
    if unreachable is not None:
        import huggingface_hub.constants

        return ValueError(
            f"HF dataset {id!r} is not a local directory and not in the local HF cache, and the "
            f"hub ({huggingface_hub.constants.ENDPOINT}) cannot be reached: {unreachable}. Point "
            "id at a local dataset directory (datasets.save_to_disk or a folder of data files), "
            "or download the dataset into the HF cache where there is network."
        )
    return ValueError(
        f"HF dataset {id!r} is not a local directory and could not be loaded from the HF cache "
        f"or the hub ({type(e).__name__}: {e}). Without network access, point id at a local "
        "dataset directory (datasets.save_to_disk or a folder of data files), or pre-download "
        "it into the HF cache."
    )


@dataclasses.dataclass(frozen=True)
class HfSource(ShardedSource):
    """One split of an HF `datasets` dataset, cut into contiguous row-range shards."""

    id: str
    name: str | None
    split: str
    text_key: str = "text"
    num_rows: int = 0
    data_fingerprint: str = ""
    skip_bad_lines: bool = False

    @staticmethod
    def load(
        id: str, name: str | None, split: str, text_key: str = "text", skip_bad_lines=False
    ) -> HfSource:
        ds = _load_hf_split(id, name, split)
        if text_key not in ds.column_names:
            raise ValueError(
                f"HF dataset {id!r} split {split!r} has no column {text_key!r} (text_key); "
                f"columns: {', '.join(ds.column_names)}"
            )
        return HfSource(id, name, split, text_key, len(ds), ds._fingerprint, skip_bad_lines)

    def for_workers(self) -> HfSource:
        # a local directory (as `_load_hf_split` decides), not a hub id
        local = local_directory(self.id)
        return self if local is None else dataclasses.replace(self, id=local)

    @property
    def num_shards(self) -> int:
        return max(1, min(MAX_HF_SHARDS, math.ceil(self.num_rows / ROWS_PER_HF_SHARD)))

    def shard_names(self) -> list[str]:
        n = self.num_shards
        return [f"hf:{self.id}:{self.name or ''}:{self.split}:{i:05d}-of-{n:05d}" for i in range(n)]

    def open_shard(self, index: int, on_bad_line=None, check=None, on_file=None):
        ds = _load_hf_split(self.id, self.name, self.split)
        shard = ds.shard(num_shards=self.num_shards, index=index, contiguous=True)
        # the first row (from 0, as ds[i]) of contiguous shard `index`, as `Dataset.shard` has it
        div, mod = divmod(len(ds), self.num_shards)
        row = div * index + min(index, mod)
        for batch in shard.select_columns([self.text_key]).iter(batch_size=1024):
            for doc in batch[self.text_key]:
                why = check(doc) if check is not None else None
                if why is None:
                    yield doc
                else:
                    problem = (
                        f"HF dataset {self.id} split {self.split} row {row}: {why} "
                        f"(column {self.text_key!r})"
                    )
                    bad_line(problem, self.skip_bad_lines, on_bad_line)
                row += 1

    def fingerprint(self) -> str:
        # skip_bad_lines joined the fingerprint later: it is left out when false, so caches
        # built before keep their fingerprint
        skip = " skip_bad_lines" if self.skip_bad_lines else ""
        return hashlib.sha256(
            f"hf {self.id} {self.name} {self.split} {self.text_key} {self.num_rows} "
            f"{self.data_fingerprint}{skip}".encode()
        ).hexdigest()[:16]

    def describe(self) -> str:
        name = f" ({self.name})" if self.name else ""
        skip = ", skip_bad_lines=true" if self.skip_bad_lines else ""
        return (
            f"HF dataset {self.id}{name} split {self.split}, text_key={self.text_key!r}{skip}, "
            f"{self.num_rows} rows"
        )
