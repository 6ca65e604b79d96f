"""`TrainerConfig` validation: field paths in errors, jax_config, trackers, batch sizes,
microbatching (PAR-06/08/09), and the run-id order (TRN-02). 8 fake CPU devices."""

import logging
import re

import pytest

import lm.config
from lm.config import ConfigError, FieldError
from lm.schedule import ScheduleStep
from lm.tracker import NoopConfig, WandbConfig
from lm.trainer import DEFAULT_JAX_CONFIG, TrainerConfig


def only_problem(*args: str) -> tuple[str, str, str | None]:
    with pytest.raises(ConfigError) as info:
        lm.config.parse(TrainerConfig, args=list(args))
    (problem,) = info.value.problems
    return problem.path, problem.message, problem.location


# ---------------------------------------------------------------- errors name the field


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("per_device_eval_parallelism", "0", "got 0, expected a positive number of examples"),
        ("per_device_parallelism", "-2", "got -2, expected a positive number of examples"),
        (
            "num_train_steps",
            "-1",
            "got -1, expected a number of steps >= 0 (>= 1 for train_lm: a run trains)",
        ),
        ("num_train_steps", "1e12", "got 1000000000000, expected at most 2,147,483,647 steps"),
        ("seed", "4294967296", "got 4294967296, expected an integer from 0 to 4,294,967,295"),
        ("seed", "-1", "got -1, expected an integer from 0 to 4,294,967,295"),
        ("id", "..", "got '..', expected one directory name"),
        ("id", "runs/a", "got 'runs/a', expected one directory name"),
        ("steps_per_eval", "0", "got 0, expected a number of steps > 0"),
        ("max_eval_batches", "-1", "got -1, expected null (the whole validation set)"),
        ("train_batch_size", "0", "got 0, expected a positive number of examples, or -1"),
        ("train_batch_size", "[{start: 5, value: 8}]", "the first phase of a schedule must start"),
        ("shutdown_at_exit", "-3", "got -3.0, expected true (shut down 300 s after exit)"),
    ],
)
def test_post_init_errors_are_reported_at_the_field(field, value, expected):
    path, message, location = only_problem(f"--{field}", value)
    assert path == field
    assert message.startswith(expected), message
    assert location == f"--{field} {value}"


def test_post_init_errors_carry_the_trainer_prefix_in_a_run_config():
    from lm.main.train_lm import TrainLmConfig

    with pytest.raises(ConfigError) as info:
        lm.config.parse(TrainLmConfig, args=["--trainer.per_device_eval_parallelism", "0"])
    assert str(info.value.problems[0]).startswith(
        "trainer.per_device_eval_parallelism [--trainer.per_device_eval_parallelism 0]: got 0, "
        "expected a positive number of examples per device, or -1"
    )


def test_post_init_errors_are_value_errors_in_python():
    with pytest.raises(FieldError, match="per_device_parallelism: got 0") as info:
        TrainerConfig(per_device_parallelism=0)
    assert isinstance(info.value, ValueError)


def test_every_bad_trainer_field_is_reported_in_one_run(config_problems):
    """One run names each bad field at its own path and line, not the first one only."""
    found = config_problems(
        TrainerConfig,
        "seed: -1\nsteps_per_eval: 0\ntrain_batch_size: 0\nper_device_parallelism: -2\n"
        "model_axis_size: 0\njax_config:\n  jax_softmax_custom_jvp: 1\n  jax_bogus_flag: true\n"
        "axis_resources:\n  mlp: modle\nshutdown_at_exit: -3\nprofiler: true\n"
        "profiler_num_steps: 0\n",
        "--load_checkpoint_path",
        "",
    )
    assert set(found) == {
        "seed",
        "steps_per_eval",
        "train_batch_size",
        "per_device_parallelism",
        "model_axis_size",
        "jax_config.jax_softmax_custom_jvp",
        "jax_config.jax_bogus_flag",
        "axis_resources.mlp",
        "shutdown_at_exit",
        "profiler_num_steps",
        "load_checkpoint_path",
    }
    assert found["seed"] == (
        "run.yaml:1",
        "got -1, expected an integer from 0 to 4,294,967,295 "
        "(JAX's keys take 32 bits of the seed: a larger one would repeat a "
        "smaller one's keys)",
    )
    assert found["axis_resources.mlp"][0] == "run.yaml:10"
    assert found["profiler_num_steps"] == ("run.yaml:13", "got 0, expected a number of steps > 0")
    # in Python, they come together as a ValueError
    with pytest.raises(lm.config.ConfigProblems) as info:
        TrainerConfig(seed=-1, steps_per_eval=0, mp="p=f32,c=bf15")
    assert [p.path for p in info.value.problems] == ["mp", "seed", "steps_per_eval"]


def test_entries_the_derivation_replaces_wait_for_valid_entries():
    """An entry the derivation would replace is reported with the other fields once every
    entry is a valid mesh axis (list), and not as well as a typo in an entry."""
    with pytest.raises(lm.config.ConfigProblems) as info:
        TrainerConfig(seed=-1, axis_resources={"batch": "dta"}, parameter_axis_resources={})
    assert [p.path for p in info.value.problems] == ["seed", "axis_resources.batch"]
    assert "did you mean 'data'?" in info.value.problems[1].message
    with pytest.raises(lm.config.ConfigProblems) as info:
        TrainerConfig(seed=-1, axis_resources={"batch": "data"})
    assert [p.path for p in info.value.problems] == ["seed", "axis_resources.batch"]
    assert "is always split over [replica, data]" in info.value.problems[1].message


# ---------------------------------------------------------------- tracker


@pytest.mark.parametrize("value", ["[]", "[ ]"])
def test_an_empty_tracker_list_is_rejected_with_the_noop_hint(value):
    path, message, _ = only_problem("--tracker", value)
    assert path == "tracker"
    assert message.startswith("got [], expected one tracker or a non-empty list")
    assert "{type: noop}" in message


def test_a_tracker_list_is_fine():
    config = lm.config.parse(TrainerConfig, args=["--tracker", "[{type: noop}]"])
    assert config.tracker == (NoopConfig(),)


# ---------------------------------------------------------------- jax_config (CFG-08)


def test_jax_config_entries_merge_over_the_defaults():
    assert DEFAULT_JAX_CONFIG == {
        "jax_threefry_partitionable": True,
        "jax_softmax_custom_jvp": True,
    }
    config = lm.config.parse(
        TrainerConfig, args=["--jax_config", "{jax_persistent_cache_min_compile_time_secs: 0}"]
    )
    assert config.jax_config == {
        "jax_threefry_partitionable": True,
        "jax_softmax_custom_jvp": True,
        "jax_persistent_cache_min_compile_time_secs": 0,
    }
    off = TrainerConfig(jax_config={"jax_softmax_custom_jvp": False})
    assert off.jax_config == {"jax_threefry_partitionable": True, "jax_softmax_custom_jvp": False}
    assert TrainerConfig().jax_config == DEFAULT_JAX_CONFIG
    again = lm.config.decode(TrainerConfig, lm.config.to_data(off))
    assert again.jax_config == off.jax_config


def test_unknown_jax_flag_is_a_config_error_with_a_suggestion():
    path, message, location = only_problem("--jax_config.jax_threefry_partitionabel", "true")
    assert path == "jax_config.jax_threefry_partitionabel"
    assert message == (
        "unknown jax config flag 'jax_threefry_partitionabel'; "
        "did you mean 'jax_threefry_partitionable'?"
    )
    assert location == "--jax_config.jax_threefry_partitionabel true"
    path, message, location = only_problem("--jax_config", "{jax_bogus_flag: true}")
    assert path == "jax_config.jax_bogus_flag"
    assert message.startswith("unknown jax config flag 'jax_bogus_flag'")
    assert location == "--jax_config {jax_bogus_flag: true}"  # the flag that set the mapping


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        (
            "jax_persistent_cache_min_compile_time_secs",
            "abc",
            "got 'abc', expected a number (jax_persistent_cache_min_compile_time_secs is a "
            "float flag)",
        ),
        ("jax_softmax_custom_jvp", "1", "got 1, expected true or false"),
        ("jax_softmax_custom_jvp", "null", "got null, expected true or false"),
        ("jax_persistent_cache_min_entry_size_bytes", "1.5", "got 1.5, expected an integer"),
        ("jax_persistent_cache_min_entry_size_bytes", "true", "got true, expected an integer"),
        ("jax_compilation_cache_dir", "5", "got 5, expected a string"),
        ("jax_default_matmul_precision", "hgh", "got 'hgh', which jax rejects: "),
    ],
)
def test_jax_flag_of_the_wrong_type_is_a_config_error(flag, value, expected):
    path, message, _ = only_problem("--jax_config", f"{{{flag}: {value}}}")
    assert path == f"jax_config.{flag}"
    assert message.startswith(expected), message


def test_jax_flag_values_jax_accepts_pass():
    config = TrainerConfig(
        jax_config={
            "jax_persistent_cache_min_compile_time_secs": 0,  # an int for a float flag
            "jax_default_matmul_precision": "highest",
            "jax_compilation_cache_dir": None,
        }
    )
    assert config.jax_config["jax_default_matmul_precision"] == "highest"


# ---------------------------------------------------------------- batches (PAR-06/08/09)


def test_per_device_parallelism_too_large_for_the_batch_is_an_error():
    # 8 devices: 4 per device is 32 examples per forward/backward, more than the batch of 8
    config = TrainerConfig(train_batch_size=8, per_device_parallelism=4)
    message = (
        "trainer.per_device_parallelism (4) does not fit trainer.train_batch_size (8): 4 "
        "examples per device x 8 batch-parallel devices = 32 examples per forward/backward, "
        "which must divide every batch size; use 1 or -1 (the whole batch at once"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        config.validate_batch_sizes()
    with pytest.raises(ValueError, match=re.escape(message)):
        config.num_microbatches_at_step(0)


def test_per_device_parallelism_must_divide_every_phase():
    schedule = [ScheduleStep(0, 32), ScheduleStep(10, 48)]
    config = TrainerConfig(train_batch_size=schedule, per_device_parallelism=4)
    assert config.num_microbatches_at_step(0) == 1
    with pytest.raises(ValueError) as info:
        config.validate_batch_sizes()
    text = str(info.value)
    assert text.startswith(
        "trainer.per_device_parallelism (4) does not fit trainer.train_batch_size phase "
        "starting at step 10 (48)"
    )
    assert "use one of 1, 2 or -1" in text  # gcd(32, 48) = 16 = 2 x 8 devices
    with pytest.raises(ValueError, match="phase starting at step 10 .48."):
        config.num_microbatches_at_step(12)


@pytest.mark.parametrize(
    "batch, per_device, microbatches",
    [(16, -1, 1), (16, 2, 1), (16, 1, 2), (64, 2, 4), (-1, 3, 1)],
)
def test_microbatches(batch, per_device, microbatches):
    config = TrainerConfig(train_batch_size=batch, per_device_parallelism=per_device)
    config.validate_batch_sizes()
    assert config.num_microbatches_at_step(0) == microbatches


def test_batch_not_divisible_by_devices_names_the_trainer_field():
    config = TrainerConfig(train_batch_size=12)
    with pytest.raises(ValueError) as info:
        config.validate_batch_sizes()
    assert str(info.value) == (
        "trainer.train_batch_size (12) must be divisible by the number of batch-parallel "
        "devices (8); change the batch size or set trainer.allow_nondivisible_batch_size: true"
    )
    TrainerConfig(train_batch_size=12, allow_nondivisible_batch_size=True).validate_batch_sizes()


# ---------------------------------------------------------------- run id (TRN-02)


def test_run_id_order(monkeypatch):
    """`id`, then env RUN_ID, then the W&B run id, then a random 8-character [a-z0-9] id."""
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("WANDB_RESUME", raising=False)
    monkeypatch.setenv("RUN_ID", "from-env")
    wandb = WandbConfig(id="from-wandb", mode="offline")
    assert TrainerConfig(id="explicit", tracker=wandb).run_id == "explicit"
    assert TrainerConfig(tracker=wandb).run_id == "from-env"
    monkeypatch.delenv("RUN_ID")
    assert TrainerConfig(tracker=wandb).run_id == "from-wandb"
    monkeypatch.setenv("RUN_ID", "")  # empty: unset
    first, second = TrainerConfig(tracker=NoopConfig()), TrainerConfig(tracker=NoopConfig())
    assert re.fullmatch(r"[a-z0-9]{8}", first.run_id), first.run_id
    assert first.run_id == first.run_id  # resolved once
    assert second.run_id != first.run_id


def test_a_compute_axis_on_the_batch_mesh_axes_is_a_config_error_at_its_entry():
    path, message, location = only_problem("--axis_resources", "{position: data}")
    assert path == "axis_resources.position"
    assert message.startswith(
        "got 'data', but the batch axis 'batch' is always split over ['replica', 'data']"
    )
    assert location == "--axis_resources {position: data}"
    # parameter-only sharding and the model axis stay allowed
    TrainerConfig(axis_resources={"mlp": "model"}, parameter_axis_resources={"position": "data"})


# ---------------------------------------------------------------- axis mappings (PAR-02/03/04)


@pytest.mark.parametrize(
    "field, value, entry, hint",
    [
        ("axis_resources", "{mlp: modle}", "mlp", "did you mean 'model'?"),
        ("parameter_axis_resources", "{mlp: dta}", "mlp", "did you mean 'data'?"),
        # the default fsdp_axis replaces this entry: it used to hide the typo
        ("parameter_axis_resources", "{embed: dta}", "embed", "did you mean 'data'?"),
        ("axis_resources", "{mlp: [model, dta]}", "mlp", "did you mean 'data'?"),
        ("axis_resources", "{batch: dta}", "batch", "did you mean 'data'?"),
    ],
)
def test_a_misspelled_mesh_axis_is_reported_at_its_entry(field, value, entry, hint):
    path, message, location = only_problem(f"--{field}", value)
    assert path == f"{field}.{entry}"
    assert "expected a mesh axis ('replica', 'data' or 'model') or a list of them" in message
    assert message.endswith(hint), message
    assert location == f"--{field} {value}"


def test_mesh_axis_typos_name_the_trainer_field_and_flag_in_a_run_config(tmp_path):
    from lm.main.train_lm import TrainLmConfig

    with pytest.raises(ConfigError) as info:
        lm.config.parse(
            TrainLmConfig,
            args=[
                "--trainer.axis_resources",
                "{mlp: modle}",
                "--trainer.parameter_axis_resources",
                "{embed: dta}",
            ],
        )
    assert [str(p) for p in info.value.problems] == [
        "trainer.axis_resources.mlp [--trainer.axis_resources {mlp: modle}]: got 'modle', "
        "expected a mesh axis ('replica', 'data' or 'model') or a list of them; did you mean "
        "'model'?",
        "trainer.parameter_axis_resources.embed [--trainer.parameter_axis_resources {embed: dta}]"
        ": got 'dta', expected a mesh axis ('replica', 'data' or 'model') or a list of them; did "
        "you mean 'data'?",
    ]
    run = tmp_path / "run.yaml"
    run.write_text("trainer:\n  axis_resources:\n    heads: model\n    mlp: modle\n")
    with pytest.raises(ConfigError) as info:
        lm.config.parse(TrainLmConfig, str(run))
    (problem,) = info.value.problems
    assert problem.path == "trainer.axis_resources.mlp"
    assert problem.location == f"{run}:4"


def test_a_parameter_entry_fsdp_axis_replaces_is_an_error():
    """`fsdp_axis` (default `embed`) comes last in the parameter mapping: an entry of
    `parameter_axis_resources` for the same axis could never take effect."""
    args = [
        "--replica_ici_axis_size",
        "2",
        "--parameter_axis_resources",
        "{embed: [replica, data]}",
    ]
    path, message, location = only_problem(*args)
    assert path == "parameter_axis_resources.embed"
    assert message.startswith(
        "got [replica, data], but trainer.fsdp_axis ('embed'; 'embed' is the default) also maps "
        "'embed' for parameters, to 'data', and comes last: parameters would map embed -> data"
    )
    assert "set trainer.fsdp_axis: null" in message
    assert location == "--parameter_axis_resources {embed: [replica, data]}"
    config = lm.config.parse(TrainerConfig, args=[*args, "--fsdp_axis", "null"])
    assert config.parameter_axis_mapping["embed"] == ("replica", "data")
    # the same layout as FSDP's is no conflict
    config = lm.config.parse(TrainerConfig, args=["--parameter_axis_resources", "{embed: data}"])
    assert config.parameter_axis_mapping["embed"] == "data"


def test_an_axis_resources_entry_for_the_batch_axis_is_an_error():
    path, message, location = only_problem("--axis_resources", "{batch: data}")
    assert path == "axis_resources.batch"
    assert message.startswith(
        "got 'data', but the batch axis ('batch', trainer.batch_axis) is always split over "
        "[replica, data]"
    )
    assert location == "--axis_resources {batch: data}"
    config = lm.config.parse(TrainerConfig, args=["--axis_resources", "{batch: [replica, data]}"])
    assert config.compute_axis_mapping == {"batch": ("replica", "data")}


def test_fsdp_axis_replacing_a_shared_entry_for_parameters_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="lm.trainer.config"):
        config = TrainerConfig(axis_resources={"mlp": "model", "embed": "model"})
    assert config.parameter_axis_mapping["embed"] == "data"
    assert config.compute_axis_mapping["embed"] == "model"
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "trainer.fsdp_axis overrides trainer.axis_resources for 'embed' in the parameter "
        "mapping: parameters and optimizer state map embed -> data, activations embed -> model"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lm.trainer.config"):
        TrainerConfig(tensor_parallel_axes=["embed"])
    (record,) = caplog.records
    assert "trainer.fsdp_axis overrides trainer.tensor_parallel_axes for 'embed'" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lm.trainer.config"):
        TrainerConfig(axis_resources={"embed": "model"}, parameter_axis_resources={"embed": "data"})
        TrainerConfig(axis_resources={"embed": "model"}, fsdp_axis=None)
    assert caplog.records == []


def test_a_mesh_axis_no_logical_axis_uses_is_warned_about(tmp_path, caplog):
    """`model_axis_size: 2` without `tensor_parallel_axes`: half the devices would repeat the
    other half's work."""
    assert TrainerConfig().mesh_warnings() == []
    assert TrainerConfig(model_axis_size=2, tensor_parallel_axes=["mlp"]).mesh_warnings() == []
    (warning,) = TrainerConfig(model_axis_size=2).mesh_warnings()
    assert warning.startswith("mesh axis 'model' has 2 devices (trainer.model_axis_size = 2)")
    assert "trainer.tensor_parallel_axes" in warning and "trainer.axis_resources" in warning
    config = TrainerConfig(
        model_axis_size=2,
        require_accelerator=False,
        tracker=NoopConfig(),
        log_dir=tmp_path / "logs",
        checkpointer={"base_path": str(tmp_path / "ckpt")},
        id="idle-model",
    )
    with caplog.at_level(logging.WARNING, logger="lm.trainer.config"):
        config.initialize()
    assert [r.getMessage() for r in caplog.records if r.name == "lm.trainer.config"] == [warning]


# ---------------------------------------------------------------- built from Python


def test_the_yaml_forms_work_from_python():
    """`TrainerConfig(...)` in a script takes what a run YAML says: a policy string, dicts
    for nested configs (decoded as the YAML section), duration strings."""
    import datetime

    import jmp

    from lm.checkpoint import CheckpointerConfig
    from lm.tracker import JsonLoggerConfig

    config = TrainerConfig(
        mp="p=f32,c=bfloat16",
        checkpointer={"base_path": "ckpts", "save_interval": "10m", "keep": [{"every": 50}]},
        tracker={"type": "json"},
        watch={"interval": 0},
    )
    assert config.mp == jmp.get_policy("p=f32,c=bfloat16")
    assert config.checkpointer == CheckpointerConfig(
        base_path="ckpts", save_interval=datetime.timedelta(minutes=10), keep=[{"every": 50}]
    )
    assert config.tracker == JsonLoggerConfig()
    assert config.watch.interval == 0
    listed = TrainerConfig(tracker=[{"type": "json"}, NoopConfig()])
    assert listed.tracker == (JsonLoggerConfig(), NoopConfig())


def test_wrong_python_forms_name_the_field_and_the_type():
    with pytest.raises(ValueError, match=r"^mp: got 'p=f32,c=bf15'"):
        TrainerConfig(mp="p=f32,c=bf15")
    with pytest.raises(TypeError, match=r"trainer.mp: got 3, expected a jmp.Policy or a policy"):
        TrainerConfig(mp=3)
    with pytest.raises(
        TypeError, match=r"trainer.checkpointer: got 'ckpts' \(str\), expected a Ch"
    ):
        TrainerConfig(checkpointer="ckpts")
    with pytest.raises(ConfigError, match=r"checkpointer.base_pat: unknown field.*base_path"):
        TrainerConfig(checkpointer={"base_pat": "ckpts"})
    with pytest.raises(TypeError, match=r"trainer.tracker: got 'json'.*TrackerConfig or a list"):
        TrainerConfig(tracker=["json"])


def test_a_run_id_from_the_environment_must_be_one_directory_name(monkeypatch):
    """A configuration problem (exit status 2 from train_lm), as the same value in trainer.id."""
    monkeypatch.setenv("RUN_ID", "../elsewhere")
    with pytest.raises(
        lm.config.SetupConfigError, match=r"the RUN_ID environment variable \('../elsewhere'\)"
    ):
        TrainerConfig().run_id  # noqa: B018


def test_a_compilation_cache_dir_that_cannot_be_written_is_an_error_before_anything(tmp_path):
    """jax turned the cache off with one warning per entry and the run went on."""
    (tmp_path / "afile").write_text("")
    for where, why in [
        (tmp_path / "afile", "is a file, not a directory"),
        (tmp_path / "afile" / "sub", "on its path, is a file"),
    ]:
        config = TrainerConfig(
            jax_compilation_cache_dir=str(where), log_dir=tmp_path / "logs", tracker=NoopConfig()
        )
        with pytest.raises(FieldError, match=rf"^trainer\.jax_compilation_cache_dir: .*{why}"):
            config.initialize()
    assert not (tmp_path / "logs").exists()


def test_a_compilation_cache_dir_under_home_is_expanded_and_an_empty_one_refused(
    tmp_path, monkeypatch
):
    """jax took `~/jc` as a folder named `~` in the working directory, and `''` turned the
    cache off in silence."""
    import jax

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    before = jax.config.jax_compilation_cache_dir
    try:
        TrainerConfig(
            jax_compilation_cache_dir="~/jc",
            log_dir=tmp_path / "logs",
            tracker=NoopConfig(),
            require_accelerator=False,
        ).initialize()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "home" / "jc")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert not (tmp_path / "~").exists()
    with pytest.raises(FieldError) as info:
        TrainerConfig(jax_compilation_cache_dir="")
    assert str(info.value) == (
        "jax_compilation_cache_dir: is empty; give a directory (local or a URL), or leave it "
        "unset (null) for JAX's default"
    )


def test_a_float64_policy_needs_x64_and_an_empty_batch_axis_is_refused():
    """`mp: f64` trained in float32 (jax truncates float64 arrays without x64), recording
    p=f64 in the run's hyperparameters."""
    import jax

    with pytest.raises(ConfigError) as info:
        TrainerConfig(mp="p=f32,c=f64", batch_axis=" ")
    assert [str(p) for p in info.value.problems] == [
        "batch_axis: got ' ', expected an axis name such as 'batch'",
        "mp: asks for float64, which JAX gives only with x64 enabled (it would train in "
        "float32): set trainer.jax_config: {jax_enable_x64: true}, or use f32",
    ]
    assert not jax.config.jax_enable_x64
    TrainerConfig(mp="f64", jax_config={"jax_enable_x64": True})


def test_a_checkpoint_or_log_folder_that_cannot_be_written_is_an_error_before_anything(
    tmp_path, caplog
):
    """A read-only base_path failed the first save, after the training (/proc stands for a
    read-only file system: root passes permission bits)."""
    from lm.checkpoint import CheckpointerConfig

    config = TrainerConfig(
        checkpointer=CheckpointerConfig(base_path="/proc/lm-ckpt"),
        log_dir=tmp_path / "logs",
        tracker=NoopConfig(),
    )
    with pytest.raises(FieldError, match=r"^trainer\.checkpointer\.base_path: cannot write to "):
        config.initialize()
    config = TrainerConfig(log_dir="/proc/lm-logs", tracker=NoopConfig())
    with pytest.raises(FieldError, match=r"^trainer\.log_dir: cannot write to /proc/lm-logs"):
        config.initialize()
    assert not (tmp_path / "logs").exists()
    # checkpoints in memory are said to vanish with the process
    config = TrainerConfig(
        checkpointer=CheckpointerConfig(base_path="memory://ck"),
        log_dir=tmp_path / "logs",
        tracker=NoopConfig(),
        require_accelerator=False,
    )
    with caplog.at_level(logging.WARNING, logger="lm.trainer.config"):
        config.initialize()
    assert "checkpoints in memory:// live as long as this process" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_train_steps="10"), r"^trainer.num_train_steps: got '10' \(str\), expected int$"),
        (dict(num_train_steps=2.5), r"^trainer.num_train_steps: got 2.5 \(float\), expected int"),
        (dict(seed=1.5), r"^trainer.seed: got 1.5"),
        (dict(steps_per_eval=True), r"^trainer.steps_per_eval: got True \(bool\), expected int"),
        (dict(max_eval_batches="all"), r"^trainer.max_eval_batches: .* expected int or None"),
        (dict(train_batch_size=8.0), r"^trainer.train_batch_size: got 8.0 \(float\), expected an"),
    ],
)
def test_scalar_fields_from_python_are_type_checked(kwargs, message):
    """As docs/trainer.md says: `num_train_steps="10"` failed in a comparison and
    `num_train_steps=2.5` trained 3 steps."""
    with pytest.raises(TypeError, match=message):
        TrainerConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(fsdp_axis=["embed", 3]),
            "trainer.fsdp_axis[1]: got 3 (int), expected an axis name (str)",
        ),
        (
            dict(fsdp_axis=3),
            "trainer.fsdp_axis: got 3 (int), expected an axis name (str), a list of axis names, "
            "or None",
        ),
        (
            dict(tensor_parallel_axes=["mlp", None]),
            "trainer.tensor_parallel_axes[1]: got None (NoneType), expected an axis name (str)",
        ),
        (
            dict(tensor_parallel_axes="mlp"),
            "trainer.tensor_parallel_axes: got 'mlp' (str), expected a list of axis names (str), "
            "or None",
        ),
    ],
)
def test_axis_names_from_python_are_type_checked(kwargs, message):
    """`fsdp_axis=["embed", 3]` was accepted: a mapping that never shards along `3`."""
    with pytest.raises(TypeError) as caught:
        TrainerConfig(**kwargs)
    assert str(caught.value) == message
    assert TrainerConfig(fsdp_axis=("embed", "mlp"), tensor_parallel_axes=["mlp"]).fsdp_axis == (
        "embed",
        "mlp",
    )


def test_numpy_integers_are_integers():
    import numpy as np

    assert TrainerConfig(num_train_steps=np.int64(10), shutdown_at_exit=2).num_train_steps == 10


def test_a_batch_the_devices_cannot_split_is_refused_before_the_log_file(tmp_path):
    """The error was right, but came after `initialize` had made <log_dir>/<id>.log."""
    config = TrainerConfig(
        train_batch_size=12,
        log_dir=tmp_path / "logs",
        tracker=NoopConfig(),
        require_accelerator=False,
        id="r",
    )
    with pytest.raises(ValueError, match=r"train_batch_size \(12\) must be divisible"):
        config.initialize()
    assert not (tmp_path / "logs").exists()
