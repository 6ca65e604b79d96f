"""`LMMixtureDatasetConfig`: several named sources sampled with weights.

`data: {configs: {name: ...}, train_weights: ...}`: each component is an
`LMDatasetSourceConfig` with its own cache (`<cache_dir>/<name>/<split>`, or
`<component cache_dir>/<split>`); training samples the weighted components block by block
(`MixtureDataset`), optionally with weights that change by step (stages); every component
with validation data is its own validation set (`eval/<name>/...`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import field

import haliax as hax

from lm.config.errors import (
    FieldError,
    did_you_mean,
    field_problem,
    invalid,
    join_path,
    raise_problems,
)
from lm.data.cache import TokenCache
from lm.data.dataset import AsyncDataset
from lm.data.mixture import MixtureDataset, MixtureStage, block_counts
from lm.data.permutation import mix_seed
from lm.data.source_config import LMDatasetSourceConfig
from lm.data.sources import ShardedSource
from lm.data.task_config import SPLITS, LMTaskConfig, _join
from lm.models.lm_model import LmExample
from lm.schedule import BatchSchedule

# The data configs' messages go to one logger, the one a run's logging config (and the
# tests) look at.
logger = logging.getLogger("lm.data.config")


@dataclasses.dataclass(frozen=True)
class LMMixtureDatasetConfig(LMTaskConfig):
    """Several named sources sampled with weights (`data: {configs: ..., train_weights: ...}`)."""

    configs: dict[str, LMDatasetSourceConfig] = field(default_factory=dict)
    """The components, by name. The name is used in cache paths and `eval/<name>/loss`."""
    train_weights: dict[str, float] | list[tuple[int, dict[str, float]]] = field(
        default_factory=dict
    )
    """Sampling weights (normalized): `{name: weight}`, or a schedule `[[step, {name:
    weight}], ...]` starting at step 0. A component left out has weight 0 (validation only)."""
    mixture_block_size: int = 2048
    """Each block of this many consecutive examples has fixed per-component counts
    (largest remainder of weight * block size) in a seeded random order."""
    stop_strategy: str = "restart"
    """`restart`: a component that runs out starts over (the mixture is infinite)."""

    def __post_init__(self):
        problems = self._task_problems()
        if not self.configs:
            problems.append(FieldError("configs", "must name at least one source"))
        sources: dict[str, LMDatasetSourceConfig] = {}  # the components that are sources
        for name, cfg in self.configs.items():
            if not name or "/" in name:
                problems.append(
                    FieldError(
                        join_path("configs", name),
                        f"component name {name!r} must be non-empty without '/'",
                    )
                )
            elif not isinstance(cfg, LMDatasetSourceConfig):
                problems.append(invalid(join_path("configs", name), cfg, "a source config"))
            else:
                sources[name] = cfg
        for name, cfg in sources.items():
            for i, tag in enumerate(cfg.tags):
                if tag in self.configs and tag != name:
                    problems.append(
                        FieldError(
                            f"configs.{name}.tags[{i}]",
                            f"{tag!r} is the name of another component, whose eval/{tag}/... "
                            "metrics it would mix with this tag's; choose another tag",
                        )
                    )
        block_ok = self.mixture_block_size > 0
        if not block_ok:
            problems.append(
                invalid(
                    "mixture_block_size", self.mixture_block_size, "a positive number of examples"
                )
            )
        if self.stop_strategy != "restart":
            problems.append(
                FieldError(
                    "stop_strategy", f"only 'restart' is supported, got {self.stop_strategy!r}"
                )
            )
        problems += self._train_weight_problems(sources, block_ok)
        raise_problems(problems)

    def _train_weight_problems(
        self, sources: dict[str, LMDatasetSourceConfig], block_ok: bool
    ) -> list[FieldError]:
        """The weights (once the stages are well formed), the mixture blocks (once the
        components, the weights and the block size are valid), and the weighted sources'
        training data."""
        try:
            stages = self.weight_stages
        except FieldError as e:
            return [e]
        problems = self._weight_problems(stages)
        configs_ok = bool(self.configs) and len(sources) == len(self.configs)
        if configs_ok and block_ok and not problems:
            staged = not isinstance(self.train_weights, Mapping)
            problems += field_problem(lambda: self._check_blocks(stages, staged))
        for name in self.components_with_weight():
            if name in sources and not sources[name].has_split("train"):
                problems.append(
                    FieldError(
                        join_path("configs", name),
                        "has train weight > 0 but no training source (set train_urls, id or "
                        "builtin)",
                    )
                )
        return problems

    def _weight_problems(self, stages: list[tuple[int, dict[str, float]]]) -> list[FieldError]:
        """Each weight that names no component or is not a finite number >= 0; a stage whose
        weights are all zero (when they are all valid)."""
        problems: list[FieldError] = []
        staged = not isinstance(self.train_weights, Mapping)
        for i, (step, weights) in enumerate(stages):
            stage = f"train_weights[{i}][1]" if staged else "train_weights"
            at_step = f" (at step {step})" if staged else ""
            valid = True  # (an unknown name's weight would go to another component)
            for name, w in weights.items():
                if self.configs and name not in self.configs:
                    valid = False
                    problems.append(
                        FieldError(
                            join_path(stage, name),
                            f"unknown component {name!r}{at_step}; components: "
                            f"{', '.join(self.configs)}{did_you_mean(name, self.configs)}",
                        )
                    )
                elif not (w >= 0 and math.isfinite(w)):  # NaN fails both
                    valid = False
                    problems.append(
                        FieldError(
                            join_path(stage, name),
                            f"weight of {name!r} must be >= 0 and finite, got {w} (at step "
                            f"{step}); weights are relative, e.g. 0.7 and 0.3",
                        )
                    )
            if valid and sum(weights.values()) <= 0:
                problems.append(FieldError(stage, f"all weights are zero{at_step}"))
        return problems

    def _check_blocks(self, stages: list[tuple[int, dict[str, float]]], staged: bool) -> None:
        """Every weighted component must get at least one example per mixture block (the
        same largest-remainder counts `MixtureDataset` uses), or it is never sampled."""
        names = self.components_with_weight()
        block = self.mixture_block_size
        for i, (step, weights) in enumerate(stages):
            values = [float(weights.get(n, 0.0)) for n in names]
            starved = _starved(names, values, block)
            if not starved:
                continue
            # enough for sure (each weight's floor share is >= 1), then the smallest block
            # size below that (a search bounded for extreme weights) that also works
            enough = math.ceil(sum(values) / min(weights[n] for n in starved))
            while _starved(names, values, enough):  # (floating point)
                enough += 1
            sizes = range(block + 1, min(enough, block + 100_000))
            need = next((b for b in sizes if not _starved(names, values, b)), enough)
            where = f"train_weights[{i}] (step {step})" if staged else "train_weights"
            shown = {n: weights[n] for n in names if n in weights}
            raise FieldError(
                "mixture_block_size",
                f"{block} examples per block give {starved} no example with {where} {shown}, "
                f"so they would never be sampled: raise mixture_block_size (with {need} "
                f"each gets at least one) or their weights in train_weights",
            )

    @property
    def weight_stages(self) -> list[tuple[int, dict[str, float]]]:
        w = self.train_weights
        if isinstance(w, Mapping):
            if not w:
                raise FieldError("train_weights", "must give at least one component a weight")
            return [(0, dict(w))]
        stages = [(int(step), dict(weights)) for step, weights in w]
        if not stages:
            raise FieldError("train_weights", "must have at least one [step, weights] stage")
        if stages[0][0] != 0:
            raise FieldError(
                "train_weights[0][0]", f"the first stage must start at step 0, not {stages[0][0]}"
            )
        for i, ((a, _), (b, _)) in enumerate(zip(stages, stages[1:], strict=False), start=1):
            if b <= a:
                raise FieldError(
                    f"train_weights[{i}][0]", f"stage steps must increase, got {a} then {b}"
                )
        return stages

    def components_with_weight(self) -> list[str]:
        names = {n for _, w in self.weight_stages for n, v in w.items() if v > 0}
        return [n for n in self.configs if n in names]

    def _urls(self) -> list[tuple[str, str]]:
        out = LMTaskConfig._urls(self)
        for name, cfg in self.configs.items():
            where = f"data.configs.{name}."
            out += cfg._source_urls(where)
            if cfg.cache_dir is not None:
                out.append((f"{where}cache_dir", cfg.cache_dir))
        return out

    def validation_tags(self) -> dict[str, list[str]]:
        """`{name: tags}` for every component (no I/O); a component's own name is left out
        of its tags, since its set already logs `eval/<name>/...`."""
        return {name: [t for t in cfg.tags if t != name] for name, cfg in self.configs.items()}

    def cache_dir_for(self, name: str, split: str) -> str:
        own = self.configs[name].cache_dir
        return _join(own if own else _join(self.cache_dir, name), split)

    def _component_source(self, name: str, split: str) -> ShardedSource | None:
        return self.configs[name].source_for(split, where=f"data.configs.{name}.")

    def _component_cache(
        self, name: str, split: str, source: ShardedSource | None = None, **kw
    ) -> TokenCache | None:
        source = source if source is not None else self._component_source(name, split)
        if source is None:
            return None
        logger.info("data %s/%s: %s, tokenizer %s", name, split, source.describe(), self.tokenizer)
        return self._build_cache(source, self.cache_dir_for(name, split), **kw)

    def build_caches(self, *, progress: bool = False, ray_config=None) -> dict[str, TokenCache]:
        """Build (or open) the caches a run reads; keys are `<name>/<split>`: every
        component's validation split, and the train split of the components with a train
        weight (`components_with_weight`; the others are never sampled, as in Levanter).
        Every component's files are found first, so a missing one is reported before any
        cache is built."""
        self.check_filesystems()
        weighted = set(self.components_with_weight())
        unweighted = [
            n for n in self.configs if n not in weighted and self.configs[n].has_split("train")
        ]
        if unweighted:
            logger.info(
                "data: not tokenizing the train split of %s: no weight in data.train_weights "
                "(used for validation only)",
                ", ".join(unweighted),
            )
        sources = {
            (name, split): source
            for name in self.configs
            for split in SPLITS
            if split != "train" or name in weighted
            if (source := self._component_source(name, split)) is not None
        }
        return {
            f"{name}/{split}": self._component_cache(
                name, split, source, progress=progress, ray_config=ray_config
            )
            for (name, split), source in sources.items()
        }

    def train_set(
        self, Pos: hax.Axis, *, key=None, batch_schedule: BatchSchedule | None = None
    ) -> AsyncDataset[LmExample]:
        """An infinite mixture of the weighted components' packed windows.

        Args:
            Pos: the position axis (its size is seq_len).
            key: PRNG key for the block order and shuffles (ignored if `data_seed` is set).
            batch_schedule: converts weight-stage steps into example offsets; required when
                `train_weights` has more than one stage.
        """
        self.check_filesystems()
        seed = self._shuffle_seed(key)
        if seed is None:
            raise ValueError(
                "a mixture's train_set needs key= or data.data_seed (block sampling is seeded)"
            )
        stages = self.weight_stages
        if len(stages) > 1 and batch_schedule is None:
            raise ValueError(
                "data.train_weights has several stages; train_set needs batch_schedule="
            )
        components: dict[str, AsyncDataset] = {}
        for name in self.components_with_weight():
            cache = self._component_cache(name, "train")
            assert cache is not None
            urls = self.configs[name]._urls_field("train", f"data.configs.{name}.")
            ds = self._packed(cache, Pos, f"data.configs.{name} (training)", urls)
            components[name] = self._shuffled(ds, mix_seed(seed, _stable_hash(name)), "train_set")
        mixture_stages = [
            MixtureStage(
                start_index=0 if step == 0 else batch_schedule.global_data_offset_by_step(step),
                weights={n: float(w.get(n, 0.0)) for n in components},
            )
            for step, w in stages
        ]
        return MixtureDataset(components, mixture_stages, self.mixture_block_size, seed)

    def validation_sets(self, Pos: hax.Axis) -> dict[str, AsyncDataset[LmExample]]:
        """`{name: dataset}` for every component with validation data; `validation_tags()`
        gives their tags."""
        self.check_filesystems()
        out = {}
        for name in self.configs:
            cache = self._component_cache(name, "validation")
            if cache is not None:
                urls = self.configs[name]._urls_field("validation", f"data.configs.{name}.")
                out[name] = self._packed(cache, Pos, f"data.configs.{name} (validation)", urls)
        return out


def _starved(names: list[str], weights: list[float], block_size: int) -> list[str]:
    """The components with a weight > 0 that get no example in a block of `block_size`."""
    counts = block_counts(weights, block_size)
    return [n for n, w, c in zip(names, weights, counts, strict=True) if w > 0 and c == 0]


def _stable_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
