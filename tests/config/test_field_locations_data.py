"""`data` and `trainer.watch` problems are reported at the field, where its value was written
(the YAML line or the command-line flag), not at the section's own line."""

from lm.main.train_lm import TrainLmConfig


def test_a_bad_yaml_value_is_reported_at_its_line(config_problems):
    found = config_problems(TrainLmConfig, "data:\n  tokenizer: ''\n  cache_dir: c\n")
    assert found == {
        "data.tokenizer": ("run.yaml:2", "got '', expected a non-empty name or path"),
    }


def test_a_bad_flag_value_is_reported_at_the_flag_not_at_a_file_line(config_problems):
    found = config_problems(
        TrainLmConfig,
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


def test_mixture_problems_are_reported_at_the_component_or_stage(config_problems):
    mixture = (
        "data:\n"
        "  configs:\n"
        "    web: {builtin: stdlib}\n"
        "    code: {validation_urls: [v.jsonl]}\n"
        "  train_weights:\n"
        "    - [0, {web: 1}]\n"
        "    - [0, {web: 1}]\n"
    )
    assert config_problems(TrainLmConfig, mixture) == {
        "data.train_weights[1][0]": ("run.yaml:7", "stage steps must increase, got 0 then 0"),
    }
    assert config_problems(TrainLmConfig, mixture, "--data.train_weights", "{web: 1, code: 1}") == {
        "data.configs.code": (
            "run.yaml:4",
            "has train weight > 0 but no training source (set train_urls, id or builtin)",
        ),
    }
    assert config_problems(TrainLmConfig, mixture, "--data.train_weights", "{web: 1, cod: 1}") == {
        "data.train_weights.cod": (
            "--data.train_weights {web: 1, cod: 1}",
            "unknown component 'cod'; components: web, code; did you mean 'code'?",
        ),
    }
