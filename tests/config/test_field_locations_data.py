"""`data` and `trainer.watch` problems are reported at the field, where its value was written
(the YAML line or the command-line flag), not at the section's own line."""

import pytest

import lm.config
from lm.main.train_lm import TrainLmConfig


def _problems(tmp_path, yaml_text: str, *args: str) -> dict[str, tuple[str | None, str]]:
    """{path: (location, message)} of every problem parsing `yaml_text` plus `args`."""
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml_text)
    with pytest.raises(lm.config.ConfigError) as caught:
        lm.config.parse(TrainLmConfig, str(run_yaml), list(args))
    found = {p.path: (p.location, p.message) for p in caught.value.problems}
    assert len(found) == len(caught.value.problems)
    return {
        path: (None if loc is None else loc.replace(str(run_yaml), "run.yaml"), message)
        for path, (loc, message) in found.items()
    }


def test_a_bad_yaml_value_is_reported_at_its_line(tmp_path):
    found = _problems(tmp_path, "data:\n  tokenizer: ''\n  cache_dir: c\n")
    assert found == {
        "data.tokenizer": ("run.yaml:2", "got '', expected a non-empty name or path"),
    }


def test_a_bad_flag_value_is_reported_at_the_flag_not_at_a_file_line(tmp_path):
    found = _problems(
        tmp_path,
        "data:\n  tokenizer: gpt2\n  cache_options:\n    backend: local\n",
        "--data.cache_options.num_workers",
        "0",
        "--trainer.watch.interval",
        "-1",
    )
    assert found == {
        "data.cache_options.num_workers": (
            "--data.cache_options.num_workers 0",
            "got 0, expected a positive int or null",
        ),
        "trainer.watch.interval": (
            "--trainer.watch.interval -1",
            "got -1, expected a number of steps >= 0 (0 disables watching)",
        ),
    }


def test_mixture_problems_are_reported_at_the_component_or_stage(tmp_path):
    mixture = (
        "data:\n"
        "  configs:\n"
        "    web: {builtin: stdlib}\n"
        "    code: {validation_urls: [v.jsonl]}\n"
        "  train_weights:\n"
        "    - [0, {web: 1}]\n"
        "    - [0, {web: 1}]\n"
    )
    assert _problems(tmp_path, mixture) == {
        "data.train_weights[1][0]": ("run.yaml:7", "stage steps must increase, got 0 then 0"),
    }
    assert _problems(tmp_path, mixture, "--data.train_weights", "{web: 1, code: 1}") == {
        "data.configs.code": (
            "run.yaml:4",
            "has train weight > 0 but no training source (set train_urls, id or builtin)",
        ),
    }
    assert _problems(tmp_path, mixture, "--data.train_weights", "{web: 1, cod: 1}") == {
        "data.train_weights.cod": (
            "--data.train_weights {web: 1, cod: 1}",
            "unknown component 'cod'; components: web, code (did you mean 'code'?)",
        ),
    }
