"""The type-directed decoder: union shapes (CFG-06), scalars, choices, aggregated errors."""

import dataclasses
import datetime
import pathlib
from typing import Literal

import draccus
import jax.numpy as jnp
import pytest
from config_schemas import (
    AdamCfg,
    AlphaPlugin,
    BetaPlugin,
    ByKeysA,
    ByKeysB,
    Color,
    Gpt2Cfg,
    LionCfg,
    LlamaCfg,
    ModelCfg,
    NoopCfg,
    OptimizerCfg,
    ScanPolicyCfg,
    ScheduleStep,
    SkipStepCfg,
    TensorboardCfg,
    TrackerCfg,
    TrainCfg,
    TrainerCfg,
    UnionHolder,
    WandbCfg,
)
from haliax import ScanCheckpointPolicy

import lm.config
from lm.config import ConfigError, FieldError, decode
from lm.config.errors import closest_name
from lm.main.train_lm import TrainLmConfig
from lm.optim import SkipStepConfig
from lm.tracker import JsonLoggerConfig, NoopConfig


def problems(cls, data) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        decode(cls, data)
    return [(p.path, p.message) for p in info.value.problems]


def only_problem(cls, data) -> tuple[str, str]:
    found = problems(cls, data)
    assert len(found) == 1, found
    return found[0]


# --- CFG-06: every union decodes by the shape of the YAML value -------------------------------


@pytest.mark.parametrize(
    "field, raw, expected",
    [
        ("tracker", {"type": "noop"}, NoopCfg()),
        ("tracker", {"project": "p"}, WandbCfg(project="p")),
        ("tracker", [{"type": "noop"}, {"type": "wandb"}], (NoopCfg(), WandbCfg())),
        ("tracker", [{"type": "tensorboard", "logdir": "x"}], (TensorboardCfg(logdir="x"),)),
        ("fsdp_axis", "embed", "embed"),
        ("fsdp_axis", ["embed", "mlp"], ["embed", "mlp"]),
        ("fsdp_axis", None, None),
        ("train_batch_size", 256, 256),
        (
            "train_batch_size",
            [{"start": 0, "value": 32}, {"start": 100, "value": 64}],
            [ScheduleStep(0, 32), ScheduleStep(100, 64)],
        ),
        ("skip_bad_steps", True, True),
        ("skip_bad_steps", False, False),
        ("skip_bad_steps", 50, 50),
        ("skip_bad_steps", {"rolling_window": 7}, SkipStepCfg(rolling_window=7)),
        ("local_device_ids", 3, 3),
        ("local_device_ids", [0, 1], [0, 1]),
        ("shutdown_at_exit", True, True),
        ("shutdown_at_exit", 5.5, 5.5),
        ("shutdown_at_exit", 5, 5.0),
        ("axis_resources", {"batch": "data"}, {"batch": "data"}),
        ("axis_resources", {"batch": ["replica", "data"]}, {"batch": ("replica", "data")}),
        (
            "axis_resources",
            {"mlp": "model", "batch": ["data"]},
            {"mlp": "model", "batch": ("data",)},
        ),
    ],
)
def test_trainer_union_fields_decode_by_shape(field, raw, expected):
    value = getattr(decode(TrainerCfg, {field: raw}), field)
    assert value == expected
    assert type(value) is type(expected)


def test_str_union_keeps_strings_whole():
    # draccus 0.11.6 turns "model" into ('m','o','d','e','l') for this annotation.
    value = decode(TrainerCfg, {"axis_resources": {"mlp": "model"}}).axis_resources
    assert value == {"mlp": "model"}


@pytest.mark.parametrize(
    "field, raw, expected",
    [
        ("cycles", 3, 3),
        ("cycles", [100, 200], [100, 200]),
        ("cycle_length", 100, 100),
        ("cycle_length", 0.25, 0.25),
        ("cycle_length", [10, 20], [10, 20]),
        ("warmup", 1, 1),
        ("warmup", 0.5, 0.5),
        ("warmup", 1000, 1000),
        ("warmup", "6E-4", 6e-4),
        ("weight_decay_modules", "attn", "attn"),
        ("weight_decay_modules", ["attn", "mlp"], ["attn", "mlp"]),
    ],
)
def test_optimizer_union_fields_decode_by_shape(field, raw, expected):
    value = getattr(decode(AdamCfg, {field: raw}), field)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (True, True),
        (False, False),
        ("full", "full"),
        ("nested", "nested"),
        ({"save_carries": False}, ScanPolicyCfg(save_carries=False)),
    ],
)
def test_gradient_checkpointing_bool_str_or_dataclass(raw, expected):
    value = decode(Gpt2Cfg, {"gradient_checkpointing": raw}).gradient_checkpointing
    assert value == expected
    assert type(value) is type(expected)


def test_union_reports_the_whole_union_when_no_member_fits():
    path, message = only_problem(TrainerCfg, {"skip_bad_steps": "often"})
    assert path == "skip_bad_steps"
    assert "expected a boolean (true or false) or an integer or a SkipStepCfg mapping" in message
    assert "'often' (a string)" in message
    path, message = only_problem(AdamCfg, {"cycles": {"a": 1}})
    assert message.startswith("expected an integer or a list of integers or null, got {a: 1}")


def test_union_reports_problems_inside_the_member_that_fits():
    assert problems(TrainerCfg, {"local_device_ids": [0, "x"]}) == [
        ("local_device_ids[1]", "expected an integer, got 'x' (a string)")
    ]
    path, message = only_problem(TrainerCfg, {"skip_bad_steps": {"rolling_windw": 3}})
    assert path == "skip_bad_steps.rolling_windw"
    assert "did you mean `rolling_window`?" in message
    path, message = only_problem(TrainerCfg, {"tracker": [{"type": "noop"}, {"type": "wandbb"}]})
    assert path == "tracker[1].type"
    assert "unknown TrackerCfg type 'wandbb'" in message
    assert "known types: noop, tensorboard, wandb" in message
    assert "did you mean 'wandb'?" in message


# --- Scalars -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected", [(3, 3), (-2, -2), (4.0, 4), ("12", 12), ("1e3", 1000), (" 7 ", 7)]
)
def test_int_accepts_integral_values(raw, expected):
    value = decode(int, raw)
    assert value == expected and type(value) is int


@pytest.mark.parametrize("raw", [2.5, "2.5", "ten", True, None, [1], {"a": 1}, float("inf")])
def test_int_rejects_non_integers(raw):
    with pytest.raises(ConfigError, match="expected an integer"):
        decode(int, raw)


@pytest.mark.parametrize(
    "raw, expected", [(6e-4, 6e-4), ("6E-4", 6e-4), (1, 1.0), ("1e-3", 1e-3), ("-2", -2.0)]
)
def test_float_accepts_numbers_and_numeric_strings(raw, expected):
    value = decode(float, raw)
    assert value == expected and type(value) is float


@pytest.mark.parametrize("raw", ["fast", True, None, [1.0]])
def test_float_rejects_others(raw):
    with pytest.raises(ConfigError, match="expected a number"):
        decode(float, raw)


@pytest.mark.parametrize(
    "raw, expected", [(True, True), (False, False), ("true", True), ("False", False)]
)
def test_bool_accepts_yaml_booleans_and_their_strings(raw, expected):
    assert decode(bool, raw) is expected


@pytest.mark.parametrize("raw", [1, 0, "yes please", None, 1.0])
def test_bool_rejects_others(raw):
    with pytest.raises(ConfigError, match=r"expected a boolean \(true or false\)"):
        decode(bool, raw)


def test_str_takes_integers_verbatim_and_rejects_floats_and_bools():
    assert decode(str, 2024) == "2024"
    assert decode(str, "x") == "x"
    with pytest.raises(ConfigError, match="quote it to make it a string"):
        decode(str, 1.5)
    with pytest.raises(ConfigError, match="quote it to make it a string"):
        decode(str, True)


def test_literal_and_enum():
    assert decode(WandbCfg, {"mode": "offline"}).mode == "offline"
    path, message = only_problem(WandbCfg, {"mode": "ofline"})
    assert path == "mode"
    assert "one of 'online', 'offline', 'disabled'" in message
    assert "did you mean 'offline'?" in message
    assert decode(TrainerCfg, {"color": "green"}).color is Color.GREEN
    assert decode(TrainerCfg, {"color": "GREEN"}).color is Color.GREEN
    path, message = only_problem(TrainerCfg, {"color": "blue"})
    assert "expected one of RED, GREEN" in message
    assert decode(Literal[1, 2], "2") == 2


def test_optional_enum_and_literal_suggest_the_close_spelling():
    from lm.models.layers.attention import AttentionBackend

    _, message = only_problem(AttentionBackend | None, "nvtee")
    assert "or null, got 'nvtee' (a string); did you mean 'nvte'?" in message
    _, message = only_problem(Literal["online", "offline"] | None, "ofline")
    assert message.endswith("did you mean 'offline'?")


@pytest.mark.parametrize(
    "value, meant",
    [
        ("flash", "jax_flash"),  # plain string similarity ranks 'splash' first
        ("JAX_FLASH", "jax_flash"),  # another case: similarity finds nothing
        ("Vanilla", "vanilla"),
        ("nvtee", "nvte"),
    ],
)
def test_a_misspelt_choice_suggests_the_name_a_user_meant(value, meant):
    from lm.models.layers.attention import AttentionBackend

    _, message = only_problem(AttentionBackend, value)
    assert message.endswith(f"did you mean {meant!r}?")
    assert closest_name("zzz", ["default", "vanilla"]) is None


def test_codec_fields_decode_through_draccus_registry():
    cfg = decode(
        TrainerCfg, {"save_interval": "1h30m", "mp": "p=f32,c=bfloat16", "log_dir": "/tmp/x"}
    )
    assert cfg.save_interval == datetime.timedelta(hours=1, minutes=30)
    assert cfg.mp.param_dtype == jnp.float32 and cfg.mp.compute_dtype == jnp.bfloat16
    assert cfg.log_dir == pathlib.Path("/tmp/x")
    path, message = only_problem(TrainerCfg, {"save_interval": "soon"})
    assert path == "save_interval" and "invalid duration 'soon'" in message


def test_any_and_json_atoms():
    cfg = decode(TrainerCfg, {"extra": {"anything": [1, "b"]}, "jax_config": {"a": 1, "b": None}})
    assert cfg.extra == {"anything": [1, "b"]}
    assert cfg.jax_config == {"a": 1, "b": None}


def test_fixed_tuple_checks_length():
    assert decode(tuple[int, str], [1, "a"]) == (1, "a")
    with pytest.raises(ConfigError, match=r"expected a list of 2 items \(an integer, a string\)"):
        decode(tuple[int, str], [1, "a", 3])


def test_null_for_a_required_value_is_an_error():
    path, message = only_problem(TrainerCfg, {"num_train_steps": None})
    assert (path, message) == ("num_train_steps", "expected an integer, got null")


# --- Choice registries -------------------------------------------------------------------------


def test_choice_uses_type_key_or_default():
    assert decode(OptimizerCfg, {"type": "lion", "beta2": 0.95}) == LionCfg(beta2=0.95)
    assert decode(OptimizerCfg, {"learning_rate": 0.1}) == AdamCfg(learning_rate=0.1)
    assert decode(TrackerCfg, {"entity": "foo"}) == WandbCfg(entity="foo")


def test_concrete_registered_subclass_decodes_directly():
    assert decode(LionCfg, {"beta1": 0.5}) == LionCfg(beta1=0.5)
    assert decode(LionCfg, {"type": "lion"}) == LionCfg()
    path, message = only_problem(LionCfg, {"type": "adam"})
    assert path == "type"
    assert "`type: adam` (AdamCfg) is not allowed here; expected LionCfg (`type: lion`)" in message


def test_choice_without_default_needs_type():
    path, message = only_problem(ModelCfg, {"hidden_dim": 3})
    assert path == ""
    assert message == "missing `type:` to select a ModelCfg; one of: gpt2, llama"


def test_choice_given_a_bare_name_hints_at_type_key():
    path, message = only_problem(TrainCfg, {"model": "llama"})
    assert path == "model"
    assert "write `type: llama` under the key" in message


def test_unknown_type_lists_choices_and_suggests():
    path, message = only_problem(TrainCfg, {"optimizer": {"type": "adamw"}})
    assert path == "optimizer.type"
    assert message == (
        "unknown OptimizerCfg type 'adamw'; known types: adam, lion; did you mean 'adam'?"
    )


def test_choice_fields_are_checked_against_the_chosen_class():
    path, message = only_problem(TrainCfg, {"optimizer": {"type": "lion", "warmup": 3}})
    assert path == "optimizer.warmup"
    assert message.startswith(
        "unknown field `warmup` for LionCfg (it is a field of `type: adam`); valid fields: "
    )
    assert "beta1, beta2, learning_rate, type" in message


# --- Dataclasses, unknown keys, __post_init__ --------------------------------------------------


def test_unknown_key_with_and_without_close_match():
    path, message = only_problem(TrainerCfg, {"num_train_step": 3})
    assert path == "num_train_step"
    assert (
        message == "unknown field `num_train_step` for TrainerCfg; did you mean `num_train_steps`?"
    )
    path, message = only_problem(SkipStepCfg, {"zzz": 3})
    assert message == "unknown field `zzz` for SkipStepCfg; valid fields: rolling_window, threshold"


def test_missing_required_field():
    @dataclasses.dataclass(frozen=True)
    class Needs:
        name: str
        n: int = 1

    path, message = only_problem(Needs, {"n": 2})
    assert path == "name"
    assert message == "missing required field `name` of Needs (expected a string)"


def test_post_init_value_error_is_reported_at_the_dataclass_path():
    path, message = only_problem(TrainCfg, {"optimizer": {"cycles": 2, "cycle_length": 10}})
    assert path == "optimizer"
    assert message == "invalid AdamCfg: Can't use both cycle_length and cycles."


def test_field_error_is_reported_at_the_field_path():
    path, message = only_problem(TrainCfg, {"optimizer": {"warmup": -3}})
    assert (path, message) == ("optimizer.warmup", "got -3, expected a step count or fraction >= 0")
    path, message = only_problem(
        TrainCfg, {"model": {"type": "llama", "num_heads": 12, "num_kv_heads": 5}}
    )
    assert (path, message) == (
        "model.num_kv_heads",
        "got 5, expected a divisor of num_heads (12)",
    )


def test_post_init_may_raise_several_problems_at_once():
    @dataclasses.dataclass(frozen=True)
    class Pair:
        a: int = 0
        b: int = 0

        def __post_init__(self):
            found = []
            if self.a < 0:
                found.append(lm.config.ConfigProblem("a", "must be >= 0"))
            if self.b < 0:
                found.append(lm.config.ConfigProblem("b", "must be >= 0"))
            if found:
                raise ConfigError(found)

    assert problems(dict[str, Pair], {"p": {"a": -1, "b": -1}}) == [
        ("p.a", "must be >= 0"),
        ("p.b", "must be >= 0"),
    ]


@dataclasses.dataclass(frozen=True)
class _Inner:
    n: int = 1

    def __post_init__(self):
        if self.n < 1:
            raise lm.config.invalid("n", self.n, "an int >= 1")


@dataclasses.dataclass(frozen=True)
class _Outer:
    inner: _Inner = _Inner()
    size: int = 4
    limit: int = 8

    def __post_init__(self):
        found = []
        if self.size < 1:
            found.append(lm.config.invalid("size", self.size, "an int >= 1"))
        if self.limit < self.inner.n:
            found.append(lm.config.invalid("limit", self.limit, "an int >= inner.n"))
        lm.config.raise_problems(found)


def test_a_bad_sub_section_does_not_hide_its_parents_other_problems():
    """The parent's checks run with the failed sub-section at its default: problems about
    other fields are kept, one whose message names the failed field is not (it would judge
    a default the user never wrote), and unknown keys do not stop the checks either."""
    assert problems(_Outer, {"inner": {"n": 0}, "size": 0, "limit": 0}) == [
        ("inner.n", "got 0, expected an int >= 1"),
        ("size", "got 0, expected an int >= 1"),
    ]
    found = problems(_Outer, {"sise": 2, "size": -1})
    assert [path for path, _ in found] == ["sise", "size"]
    assert problems(_Outer, {"inner": {"n": 0}}) == [("inner.n", "got 0, expected an int >= 1")]


def test_independent_sections_are_all_reported():
    found = problems(
        TrainCfg,
        {
            "optimizer": {"warmup": "soon", "beta": 0.9},
            "trainer": {"foo": 1, "num_train_steps": "many", "tracker": [{"type": "nop"}]},
            "model": {"type": "gpt2", "hidden_dim": 1.5},
            "data": {"train_urls": "gs://one/file"},
        },
    )
    paths = [p for p, _ in found]
    # Reported in the order the YAML wrote them.
    assert paths == [
        "optimizer.warmup",
        "optimizer.beta",
        "trainer.foo",
        "trainer.num_train_steps",
        "trainer.tracker[0].type",
        "model.hidden_dim",
        "data.train_urls",
    ]
    messages = dict(found)
    assert messages["optimizer.beta"].endswith("did you mean `beta1`?")
    assert (
        messages["model.hidden_dim"]
        == "expected an integer, got 1.5 (a number) with a fractional part"
    )


def test_error_message_is_readable_and_carries_locations():
    with pytest.raises(ConfigError) as info:
        decode(
            TrainerCfg,
            {"seed": "x", "nope": 1},
            locations={"seed": "run.yaml:3", "nope": "run.yaml:4"},
        )
    text = str(info.value)
    assert text.splitlines() == [
        "Invalid configuration (2 problems):",
        "  - seed [run.yaml:3]: expected an integer, got 'x' (a string)",
        f"  - nope [run.yaml:4]: {info.value.problems[1].message}",
    ]


def test_decode_path_prefix():
    with pytest.raises(ConfigError) as info:
        decode(SkipStepCfg, {"threshold": "x"}, path="trainer.skip_bad_steps")
    assert info.value.problems[0].path == "trainer.skip_bad_steps.threshold"


def test_unsupported_annotation_is_a_programmer_error():
    class Opaque:
        pass

    with pytest.raises(TypeError, match="register a codec with draccus.decode.register"):
        decode(Opaque, 1)


def test_full_config_defaults_and_nested_values():
    cfg = decode(TrainCfg, {"model": {"type": "llama", "num_heads": 8, "num_kv_heads": 2}})
    assert cfg.model == LlamaCfg(num_heads=8, num_kv_heads=2)
    assert cfg.trainer == TrainerCfg()
    assert decode(TrainCfg, {}) == TrainCfg()


# --- Plugin registries, unions of mapping members ----------------------------------------------


def test_plugin_registry_decodes_like_a_choice():
    assert decode(UnionHolder, {"plugin": {"type": "beta", "b": "y"}}).plugin == BetaPlugin(b="y")
    assert decode(UnionHolder, {"plugin": {"a": 5}}).plugin == AlphaPlugin(a=5)
    path, message = only_problem(UnionHolder, {"plugin": {"type": "gamma"}})
    assert path == "plugin.type"
    assert "known types: alpha, beta" in message


def test_union_of_dataclasses_picks_the_one_accepting_every_key():
    assert decode(UnionHolder, {"pick": {"beta": 2, "shared": 1}}).pick == ByKeysB(beta=2, shared=1)
    assert decode(UnionHolder, {"pick": {"alpha": 2}}).pick == ByKeysA(alpha=2)
    # Ambiguous keys: the first member wins.
    assert decode(UnionHolder, {"pick": {"shared": 3}}).pick == ByKeysA(shared=3)
    # No member takes every key: the first member's problems, with did-you-mean.
    path, message = only_problem(UnionHolder, {"pick": {"alpah": 1}})
    assert path == "pick.alpah" and "did you mean `alpha`?" in message


def test_union_of_registries_is_decided_by_the_type_key():
    holder = decode(UnionHolder, {"either": {"type": "noop"}})
    assert holder.either == NoopCfg()
    assert decode(UnionHolder, {"either": {"type": "lion"}}).either == LionCfg()
    assert decode(UnionHolder, {"either": None}).either is None
    # Without `type:` each registry's default is tried by keys: `project` is a wandb field.
    assert decode(UnionHolder, {"either": {"project": "p"}}).either == WandbCfg(project="p")


def test_mapping_and_optional():
    holder = decode(UnionHolder, {"json_atoms": {"a": 1, "b": "x", "c": None}, "maybe_steps": 3})
    assert holder.json_atoms == {"a": 1, "b": "x", "c": None}
    assert holder.maybe_steps == 3
    path, message = only_problem(UnionHolder, {"json_atoms": {"a": [1]}})
    assert path == "json_atoms.a"
    assert message == (
        "expected a string or an integer or a number or a boolean (true or false) or null, "
        "got [1] (a list)"
    )


def test_unregistered_default_choice_is_reported():
    @dataclasses.dataclass(frozen=True)
    class Orphan(draccus.ChoiceRegistry):
        @classmethod
        def default_choice_name(cls):
            return "missing"

    @Orphan.register_subclass("present")
    @dataclasses.dataclass(frozen=True)
    class Present(Orphan):
        pass

    path, message = only_problem(Orphan, {})
    assert message == (
        "no `type:` given and the default Orphan type 'missing' is not registered; "
        "write `type:` with one of: present"
    )
    assert decode(Orphan, {"type": "present"}) == Present()


_SCRIPT_UNDER_ANOTHER_MAIN = """
from __future__ import annotations
import dataclasses

@dataclasses.dataclass
class Inner:
    size: int = 1

@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)

    def __post_init__(self):
        pass
"""


def test_string_annotations_resolve_when_the_script_runs_under_another_main():
    # `python -m cProfile -m lm.main.train_lm`: the config classes say `__main__`, but
    # sys.modules["__main__"] is the profiler, where `Inner` is not defined
    namespace = {"__name__": "__main__"}
    exec(compile(_SCRIPT_UNDER_ANOTHER_MAIN, "<script>", "exec"), namespace)
    outer = decode(namespace["Outer"], {"inner": {"size": 3}})
    assert outer.inner.size == 3


@pytest.mark.parametrize(
    "dotted, raw, expected",
    [
        ("trainer.tracker", {"type": "noop"}, NoopConfig()),
        (
            "trainer.tracker",
            [{"type": "noop"}, {"type": "json"}],
            (NoopConfig(), JsonLoggerConfig()),
        ),
        ("trainer.fsdp_axis", "embed", "embed"),
        ("trainer.fsdp_axis", ["embed", "mlp"], ["embed", "mlp"]),
        ("trainer.fsdp_axis", None, None),
        ("trainer.train_batch_size", 256, 256),
        (
            "trainer.train_batch_size",
            [{"start": 0, "value": 32}, {"start": 100, "value": 64}],
            [ScheduleStep(0, 32), ScheduleStep(100, 64)],
        ),
        ("optimizer.skip_bad_steps", True, True),
        ("optimizer.skip_bad_steps", 50, 50),
        (
            "optimizer.skip_bad_steps",
            {"rolling_interval_length": 7},
            SkipStepConfig(rolling_interval_length=7),
        ),
        ("optimizer.cycles", 3, 3),
        ("optimizer.cycles", [100, 200], [100, 200]),
        ("optimizer.cycle_length", 100, 100),
        ("optimizer.cycle_length", 0.25, 0.25),
        ("optimizer.cycle_length", [10, 20], [10, 20]),
        ("optimizer.warmup", 1, 1),
        ("optimizer.warmup", 0.5, 0.5),
        ("optimizer.warmup", 1000, 1000),
        ("optimizer.warmup", "6E-4", 6e-4),
        ("optimizer.decay", 0.2, 0.2),
        ("optimizer.rewarmup", 10, 10),
        ("optimizer.weight_decay_modules", "attn", "attn"),
        ("optimizer.weight_decay_modules", ["attn", "mlp"], ["attn", "mlp"]),
        ("trainer.distributed.local_device_ids", 3, 3),
        ("trainer.distributed.local_device_ids", [0, 1], [0, 1]),
        ("trainer.shutdown_at_exit", True, True),
        ("trainer.shutdown_at_exit", 5.5, 5.5),
        ("trainer.shutdown_at_exit", 5, 5.0),
        ("trainer.axis_resources", {"mlp": "model"}, {"mlp": "model"}),
        ("trainer.axis_resources", {"batch": ["replica", "data"]}, {"batch": ("replica", "data")}),
        ("trainer.checkpointer.save_interval", "15m", datetime.timedelta(minutes=15)),
        ("model.gradient_checkpointing", True, True),
        ("model.gradient_checkpointing", "nested", "nested"),
        (
            "model.gradient_checkpointing",
            {"save_carries": False},
            ScanCheckpointPolicy(save_carries=False),
        ),
    ],
)
def test_real_run_config_union_fields_decode_by_shape(dotted, raw, expected):
    """CFG-06 through `lm.main.train_lm.TrainLmConfig` (the schema tests above use look-alikes)."""
    data: dict = {"model": {"type": "llama"}}
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = raw
    value = decode(TrainLmConfig, data)
    for key in dotted.split("."):
        value = getattr(value, key)
    assert value == expected
    assert type(value) is type(expected)


def test_real_run_config_mp_string():
    mp = decode(TrainLmConfig, {"trainer": {"mp": "p=f32,c=bfloat16"}}).trainer.mp
    assert lm.config.format_policy(mp) == "p=f32,c=bf16,o=bf16"


# --- environment variables are not expanded: a value naming one is an error -------------------


@pytest.mark.parametrize("value", ["${OUT}/logs", "$OUT/logs", "$HOME", "runs/${RUN}/x"])
def test_a_value_naming_an_environment_variable_is_an_error(value):
    path, message = only_problem(TrainLmConfig, {"trainer": {"log_dir": value}})
    assert path == "trainer.log_dir"
    assert message.startswith(f"got {value!r}, which names the environment variable $"), message
    assert message.endswith(f'shell expands it: --trainer.log_dir "{value}"')


@pytest.mark.parametrize("value", ["costs $5", "a$b/c", "logs/run-$", "{{ template }}"])
def test_dollar_signs_that_name_no_variable_are_kept(value):
    config = decode(TrainLmConfig, {"trainer": {"id": "x", "log_dir": value}})
    assert str(config.trainer.log_dir) == value


@dataclasses.dataclass(frozen=True)
class Heads:
    num_heads: int = 4
    num_kv_heads: int = 32

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise FieldError(
                "num_kv_heads",
                f"got {self.num_kv_heads}, expected a divisor of num_heads ({self.num_heads})",
            )


def test_a_problem_with_a_default_value_says_the_config_did_not_set_it():
    """`--model.type llama` on a GPT-2 config used to blame `num_kv_heads: 32`, which the
    user never wrote: it is Llama's default."""
    path, message = only_problem(Heads, {"num_heads": 12})
    assert (path, message) == (
        "num_kv_heads",
        "got 32, expected a divisor of num_heads (12) "
        "(Heads's default: this config does not set `num_kv_heads`)",
    )
    path, message = only_problem(Heads, {"num_heads": 12, "num_kv_heads": 5})
    assert message == "got 5, expected a divisor of num_heads (12)"


@pytest.mark.parametrize(
    "args, hint",
    [
        (
            ["--optimizer.lr", "1e-3"],
            "unknown field `lr` for AdamConfig; did you mean `learning_rate`?",
        ),
        (["--model.n_layer", "2"], "did you mean `num_layers`?"),
        (["--trainer.max_steps", "3"], "did you mean `num_train_steps`?"),
        (["--model.hidden_size", "64"], "did you mean `hidden_dim`?"),
    ],
)
def test_names_from_other_frameworks_get_lms_spelling(args, hint):
    """`optimizer.lr` listed every AdamConfig field: difflib finds no `learning_rate` in it."""
    import lm.config
    from lm.main.train_lm import TrainLmConfig

    with pytest.raises(lm.config.ConfigError) as info:
        lm.config.parse(TrainLmConfig, args=["--model.type", "gpt2", *args])
    assert hint in str(info.value)
