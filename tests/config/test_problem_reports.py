"""What `lm.config.main` reports for configs YAML reads otherwise than written (files that are
not UTF-8, recursive aliases, numbers for string fields, YAML 1.1 booleans), keys in the wrong
section or union member, overrides inside mappings and lists, and `base:` in included files:
one message each, exit status 2, and the entry point never runs."""

import pytest
import yaml
from config_schemas import ByKeysA, ByKeysB, TrainCfg, UnionHolder

import lm.config
from lm.config import ConfigError, decode, parse
from lm.main.train_lm import TrainLmConfig

HELP_LINE = "(run with --help to list the fields of {})\n"


@pytest.fixture
def run_main(tmp_path, capsys):
    """`run_main(cls, *args) -> stderr` of `lm.config.main` on a config problem (after
    checking exit status 2 and that the entry point, which writes a file, never ran), with
    `tmp_path` shown as `TMP`."""

    def run(cls, *args: str) -> str:
        ran = tmp_path / "entry-ran"

        def entry(config: cls):  # the entry point writes: it must not run
            ran.write_text("ran")

        entry.__annotations__["config"] = cls
        with pytest.raises(SystemExit) as info:
            lm.config.main(entry)(args=list(args))
        captured = capsys.readouterr()
        assert info.value.code == 2
        assert not ran.exists()
        assert captured.out == ""
        assert "Traceback" not in captured.err
        return captured.err.replace(str(tmp_path), "TMP")

    return run


# --- 1. files that are not UTF-8 --------------------------------------------------------------


def test_a_latin1_config_file_is_a_problem_naming_the_byte(tmp_path, run_main):
    (tmp_path / "run.yaml").write_bytes(b"trainer:\n  seed: 3 # caf\xe9\n")
    err = run_main(TrainCfg, "--config_path", str(tmp_path / "run.yaml"))
    assert err == (
        "Invalid configuration in TMP/run.yaml (1 problem):\n"
        "  - (top level) [--config_path]: cannot read TMP/run.yaml as a YAML file: byte 0xe9 "
        "at offset 24 (line 2) is not UTF-8; config files are UTF-8 text\n"
    ) + HELP_LINE.format("TrainCfg")


def test_a_utf16_file_and_an_included_binary_file_are_problems(tmp_path, run_main):
    (tmp_path / "run.yaml").write_bytes("trainer:\n  seed: 3\n".encode("utf-16"))
    err = run_main(TrainCfg, "--config_path", str(tmp_path / "run.yaml"))
    assert (
        "  - (top level) [--config_path]: cannot read TMP/run.yaml as a YAML file: it is UTF-16 "
        "text (it starts with a UTF-16 byte order mark); config files are UTF-8 text\n"
    ) in err
    (tmp_path / "blob.bin").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00\xf0\x9f")
    (tmp_path / "inc.yaml").write_text("data: !include blob.bin\n")
    err = run_main(TrainCfg, "--config_path", str(tmp_path / "inc.yaml"))
    assert err == (
        "Invalid configuration in TMP/inc.yaml (1 problem):\n"
        "  - data [TMP/inc.yaml:1]: cannot read TMP/blob.bin as a YAML file: it is a binary "
        "file, not text; config files are UTF-8 text\n"
    ) + HELP_LINE.format("TrainCfg")


# --- 2. numbers for string fields are kept as written -----------------------------------------


@pytest.mark.parametrize(
    "written", ["0123", "007", "12:30", "0x1F", "1_000", "1.50", "1.0e+3", ".5", "-0", "+12"]
)
def test_a_string_field_keeps_a_number_as_written(tmp_path, written):
    (tmp_path / "run.yaml").write_text(
        f"trainer:\n  id: {written}\n  tracker: {{type: wandb, tags: [{written}]}}\n"
        f"data:\n  tokenizer: {written}\n"
    )
    cfg = parse(TrainCfg, str(tmp_path / "run.yaml"))
    assert cfg.trainer.id == written
    assert cfg.trainer.tracker.tags == (written,)
    assert cfg.data.tokenizer == written
    text = lm.config.to_yaml(cfg)
    assert decode(TrainCfg, yaml.safe_load(text)) == cfg
    assert f"id: '{written}'" in text
    cfg = parse(TrainCfg, args=["--trainer.id", written, "--data.tokenizer", written])
    assert (cfg.trainer.id, cfg.data.tokenizer) == (written, written)
    cfg = parse(TrainCfg, args=["--trainer.tracker", f"{{tags: [{written}, x]}}"])
    assert cfg.trainer.tracker.tags == (written, "x")


def test_int_and_float_fields_still_get_numbers(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "trainer:\n  seed: 0x10\n  num_train_steps: 1_000\n  shutdown_at_exit: 1.50\n"
        "optimizer:\n  learning_rate: 1.50\n  warmup: 010\n"
    )
    cfg = parse(TrainCfg, str(tmp_path / "run.yaml"), ["--trainer.model_axis_size", "002"])
    assert (cfg.trainer.seed, cfg.trainer.num_train_steps) == (16, 1000)
    assert type(cfg.trainer.seed) is int and type(cfg.trainer.num_train_steps) is int
    assert cfg.trainer.model_axis_size == 2 and type(cfg.trainer.model_axis_size) is int
    assert cfg.trainer.shutdown_at_exit == 1.5 and type(cfg.trainer.shutdown_at_exit) is float
    assert cfg.optimizer.learning_rate == 1.5 and cfg.optimizer.warmup == 8
    assert type(cfg.optimizer.warmup) is int


def test_the_text_follows_base_files_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("trainer:\n  id: 0123\n  seed: 1\ndata: {tokenizer: 007}\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\ntrainer:\n  id: 83\n")
    cfg = parse(TrainCfg, str(tmp_path / "run.yaml"))
    assert (cfg.trainer.id, cfg.data.tokenizer) == ("83", "007")
    (tmp_path / "run.yaml").write_text("base: base.yaml\ntrainer:\n  seed: 2\n")
    assert parse(TrainCfg, str(tmp_path / "run.yaml")).trainer.id == "0123"
    cfg = parse(TrainCfg, str(tmp_path / "run.yaml"), ["--trainer.id", "83"])
    assert cfg.trainer.id == "83"
    cfg = parse(TrainCfg, str(tmp_path / "run.yaml"), ["--trainer", "{seed: 3}"])
    assert cfg.trainer.id is None
    cfg = parse(TrainCfg, str(tmp_path / "run.yaml"), ["--trainer", "{id: 0x7}"])
    assert cfg.trainer.id == "0x7"


def test_a_mapping_key_does_not_take_its_value_s_text(tmp_path):
    (tmp_path / "run.yaml").write_text("trainer:\n  jax_config: {7: 010}\n")
    cfg = parse(TrainCfg, str(tmp_path / "run.yaml"))
    assert cfg.trainer.jax_config == {"7": 8}


# --- 3. recursive aliases ---------------------------------------------------------------------


def test_a_recursive_alias_is_a_problem_at_its_path(tmp_path, run_main):
    (tmp_path / "run.yaml").write_text("trainer:\n  fsdp_axis: &a [*a]\n")
    err = run_main(TrainCfg, "--config_path", str(tmp_path / "run.yaml"))
    assert err == (
        "Invalid configuration in TMP/run.yaml (1 problem):\n"
        "  - trainer.fsdp_axis[0] [TMP/run.yaml:2]: recursive YAML alias: `*a` stands for the "
        "value anchored as `&a` at line 2, which contains it; a config value cannot contain "
        "itself\n"
    ) + HELP_LINE.format("TrainCfg")
    (tmp_path / "run.yaml").write_text("extra: &top\n  inner:\n    again: *top\n")
    err = run_main(TrainCfg, "--config_path", str(tmp_path / "run.yaml"))
    assert (
        "  - extra.inner.again [TMP/run.yaml:3]: recursive YAML alias: `*top` stands for the "
        "value anchored as `&top` at line 1, which contains it"
    ) in err
    err = run_main(TrainCfg, "--trainer.fsdp_axis", "&b [x, *b]")
    assert err == (
        "Invalid configuration (1 problem):\n"
        "  - trainer.fsdp_axis[1] [--trainer.fsdp_axis &b [x, *b]]: recursive YAML alias: `*b` "
        "stands for the value anchored as `&b` at line 1, which contains it; a config value "
        "cannot contain itself\n"
    ) + HELP_LINE.format("TrainCfg")


def test_an_alias_used_twice_is_no_cycle(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "trainer:\n  fsdp_axis: &axes [embed, mlp]\n  axis_resources: {a: *axes, b: *axes}\n"
    )
    cfg = parse(TrainCfg, str(tmp_path / "run.yaml"))
    assert cfg.trainer.axis_resources == {"a": ("embed", "mlp"), "b": ("embed", "mlp")}


# --- 4. a mapping for a union of dataclasses --------------------------------------------------


def test_a_typo_in_a_mixture_is_reported_against_the_mixture(tmp_path, run_main):
    (tmp_path / "run.yaml").write_text(
        "data:\n  tokenizr: builtin\n  configs:\n    web: {builtin: stdlib}\n"
        "  train_weights: {web: 1}\n"
    )
    err = run_main(TrainLmConfig, "--config_path", str(tmp_path / "run.yaml"))
    assert err == (
        "Invalid configuration in TMP/run.yaml (1 problem):\n"
        "  - data.tokenizr [TMP/run.yaml:2]: unknown field `tokenizr` for "
        "LMMixtureDatasetConfig; did you mean `tokenizer`?\n"
    ) + HELP_LINE.format("TrainLmConfig")


def test_union_members_are_tried_by_how_many_keys_they_take(run_main):
    err = run_main(UnionHolder, "--pick", "{beta: 1, shared: 2, alph: 3}")
    assert err == (
        "Invalid configuration (1 problem):\n"
        "  - pick.alph [--pick {beta: 1, shared: 2, alph: 3}]: unknown field `alph` for "
        "ByKeysB; valid fields: beta, shared\n"
    ) + HELP_LINE.format("UnionHolder")
    # a tie keeps the order of the annotation
    err = run_main(UnionHolder, "--pick", "{shared: 2, zzz: 3}")
    assert "unknown field `zzz` for ByKeysA" in err
    assert parse(UnionHolder, args=["--pick", "{beta: 1, shared: 2}"]).pick == ByKeysB(1, 2)
    assert parse(UnionHolder, args=["--pick", "{shared: 2}"]).pick == ByKeysA(shared=2)


# --- 5. a field written in the wrong section --------------------------------------------------


def test_a_field_of_another_section_names_its_place(tmp_path, run_main):
    (tmp_path / "run.yaml").write_text(
        "num_train_steps: 10\n"
        "trainer:\n  learning_rate: 1e-3\n  save_interval: 10m\n  base_path: ckpt\n"
        "optimizer:\n  train_batch_size: 4\n"
        "data:\n  sliding_window: 8\n"
    )
    err = run_main(TrainLmConfig, "--config_path", str(tmp_path / "run.yaml"))
    # `model:` has no default `type:`: every model type's fields are searched
    assert err == (
        "Invalid configuration in TMP/run.yaml (6 problems):\n"
        "  - num_train_steps [TMP/run.yaml:1]: unknown field `num_train_steps` for "
        "TrainLmConfig; it belongs at `trainer.num_train_steps`\n"
        "  - trainer.learning_rate [TMP/run.yaml:3]: unknown field `learning_rate` for "
        "TrainerConfig; it belongs at `optimizer.learning_rate`\n"
        "  - trainer.save_interval [TMP/run.yaml:4]: unknown field `save_interval` for "
        "TrainerConfig; it belongs at `trainer.checkpointer.save_interval`\n"
        "  - trainer.base_path [TMP/run.yaml:5]: unknown field `base_path` for TrainerConfig; "
        "it belongs at `trainer.checkpointer.base_path`\n"
        "  - optimizer.train_batch_size [TMP/run.yaml:7]: unknown field `train_batch_size` for "
        "AdamConfig; it belongs at `trainer.train_batch_size`\n"
        "  - data.sliding_window [TMP/run.yaml:9]: unknown field `sliding_window` for "
        "LMDatasetConfig; it belongs at `model.sliding_window`\n"
    ) + HELP_LINE.format("TrainLmConfig")


def test_a_section_key_written_inside_another_section(run_main):
    err = run_main(TrainCfg, "--trainer.optimizer", "{type: adam}", "--extra_", "1")
    assert err == (
        "Invalid configuration (2 problems):\n"
        "  - trainer.optimizer [--trainer.optimizer {type: adam}]: unknown field `optimizer` "
        "for TrainerCfg; it belongs at the top level: `optimizer`\n"
        "  - extra_ [--extra_ 1]: unknown field `extra_` for TrainCfg; valid fields: data, "
        "model, optimizer, trainer\n"
    ) + HELP_LINE.format("TrainCfg")


def test_decode_names_the_place_under_its_own_path():
    with pytest.raises(ConfigError) as info:
        decode(TrainCfg, {"learning_rate": 1.0}, path="run")
    (problem,) = info.value.problems
    assert problem.message == (
        "unknown field `learning_rate` for TrainCfg; it belongs at `run.optimizer.learning_rate`"
    )


# --- 6. problems inside a value written whole on the command line ----------------------------


def test_a_problem_inside_a_mapping_flag_is_located_at_the_flag(run_main):
    err = run_main(TrainLmConfig, "--optimizer.skip_bad_steps", "{histroy_len: 3}")
    assert err == (
        "Invalid configuration (1 problem):\n"
        "  - optimizer.skip_bad_steps.histroy_len [--optimizer.skip_bad_steps {histroy_len: 3}]: "
        "unknown field `histroy_len` for SkipStepConfig; valid fields: rolling_interval_length, "
        "sigma_factor\n"
    ) + HELP_LINE.format("TrainLmConfig")
    flag = "--trainer.train_batch_size [{start: 0, value: 4}, {start: 10}]"
    err = run_main(TrainLmConfig, *flag.split(" ", 1))
    assert err == (
        "Invalid configuration (1 problem):\n"
        f"  - trainer.train_batch_size[1].value [{flag}]: missing required field `value` of "
        "ScheduleStep (expected an integer)\n"
    ) + HELP_LINE.format("TrainLmConfig")


# --- 7. an item of a list the file does not set -----------------------------------------------


def test_a_list_index_override_on_an_unset_list_says_to_give_the_list(tmp_path, run_main):
    (tmp_path / "run.yaml").write_text("trainer:\n  seed: 1\n")
    err = run_main(
        TrainLmConfig,
        "--config_path",
        str(tmp_path / "run.yaml"),
        "--trainer.checkpointer.keep[0].every",
        "5",
    )
    assert err == (
        "Invalid configuration in TMP/run.yaml (1 problem):\n"
        "  - trainer.checkpointer.keep [--trainer.checkpointer.keep[0].every 5]: cannot set "
        "--trainer.checkpointer.keep[0].every: the config file does not set "
        "trainer.checkpointer.keep, so it has no items to set one by one; give the whole list, "
        "like --trainer.checkpointer.keep '[{every: 5}]'\n"
    ) + HELP_LINE.format("TrainLmConfig")
    err = run_main(TrainLmConfig, "--trainer.tensor_parallel_axes[1]", "mlp")
    assert err == (
        "Invalid configuration (1 problem):\n"
        "  - trainer.tensor_parallel_axes [--trainer.tensor_parallel_axes[1] mlp]: cannot set "
        "--trainer.tensor_parallel_axes[1]: no config file sets trainer.tensor_parallel_axes, "
        "so it has no items to set one by one; give the whole list, like "
        "--trainer.tensor_parallel_axes '[..., mlp]'\n"
    ) + HELP_LINE.format("TrainLmConfig")
    (tmp_path / "run.yaml").write_text("trainer:\n  fsdp_axis: null\n")
    err = run_main(
        TrainCfg, "--config_path", str(tmp_path / "run.yaml"), "--trainer.fsdp_axis[0]", "x"
    )
    assert (
        "cannot set --trainer.fsdp_axis[0]: trainer.fsdp_axis is null in the config, so it has "
        "no items to set one by one; give the whole list, like --trainer.fsdp_axis '[x]'\n"
    ) in err


# --- 8. a boolean or number for an optional string --------------------------------------------


def test_an_optional_string_given_a_yaml_boolean_says_to_quote_it(tmp_path, run_main):
    (tmp_path / "run.yaml").write_text("trainer:\n  tracker: {mode: off}\n")
    err = run_main(TrainLmConfig, "--config_path", str(tmp_path / "run.yaml"))
    assert err == (
        "Invalid configuration in TMP/run.yaml (1 problem):\n"
        "  - trainer.tracker.mode [TMP/run.yaml:2]: expected a string or null, got false (a "
        "boolean); YAML 1.1 reads `off` as false; quote it to make it a string: 'off'\n"
    ) + HELP_LINE.format("TrainLmConfig")
    err = run_main(TrainCfg, "--trainer.id", "yes")
    assert err == (
        "Invalid configuration (1 problem):\n"
        "  - trainer.id [--trainer.id yes]: expected a string or null, got true (a boolean); "
        "YAML 1.1 reads `yes` as true; quote it to make it a string, inside the shell's "
        "quotes: --trainer.id \"'yes'\"\n"
    ) + HELP_LINE.format("TrainCfg")
    err = run_main(TrainCfg, "--trainer.id", "true")
    assert "got true (a boolean); quote it to make it a string, inside the shell's" in err


def test_decoding_a_number_without_its_text_says_to_quote_it():
    for tp in (str, str | None):
        with pytest.raises(ConfigError) as info:
            decode(tp, 1.5)
        assert info.value.problems[0].message.endswith(
            "got 1.5 (a number); quote it to make it a string: '1.5'"
        )


# --- 9. `base:` in an included file -----------------------------------------------------------


def test_base_in_an_included_file_says_where_base_works(tmp_path, run_main):
    (tmp_path / "parent.yaml").write_text("project: x\n")
    (tmp_path / "tracker.yaml").write_text("base: parent.yaml\ntype: wandb\n")
    (tmp_path / "run.yaml").write_text("trainer:\n  tracker: !include tracker.yaml\n")
    err = run_main(TrainCfg, "--config_path", str(tmp_path / "run.yaml"))
    assert err == (
        "Invalid configuration in TMP/run.yaml (1 problem):\n"
        "  - trainer.tracker.base [TMP/tracker.yaml:1]: `base:` only works at the top of a run "
        "file (the one --config_path names); TMP/tracker.yaml is read with `!include`, where "
        "it does not apply; to build on parent.yaml here, merge it in with `<<: !include "
        "parent.yaml` (keys written beside it win)\n"
    ) + HELP_LINE.format("TrainCfg")
    (tmp_path / "tracker.yaml").write_text("<<: !include parent.yaml\ntype: wandb\n")
    assert parse(TrainCfg, str(tmp_path / "run.yaml")).trainer.tracker.project == "x"


# --- 10. the order problems are listed in -----------------------------------------------------


def test_problems_follow_the_file_s_section_order(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "optimizer:\n  learning_rat: 1\nmodel:\n  type: gpt2\n  num_head: 2\n"
        "trainer:\n  sed: 1\ndata:\n  tokenizr: x\n"
    )
    with pytest.raises(ConfigError) as info:
        parse(TrainCfg, str(tmp_path / "run.yaml"), ["--data.x", "1", "--extra_", "1"])
    lines = str(info.value).splitlines()[1:]
    assert [line.split(" ")[3] for line in lines] == [
        "optimizer.learning_rat",
        "model.num_head",
        "trainer.sed",
        "data.tokenizr",
        "data.x",
        "extra_",
    ]
    with pytest.raises(ConfigError) as info:
        parse(TrainCfg, str(tmp_path / "run.yaml"), ["--trainer.fsdp_axis[0]", "x"])
    lines = str(info.value).splitlines()[1:]
    assert [line.split(" ")[3] for line in lines] == [
        "trainer.sed",
        "trainer.fsdp_axis",
        "optimizer.learning_rat",
        "model.num_head",
        "data.tokenizr",
    ]
