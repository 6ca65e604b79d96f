"""`lm.main.plan` / `lm.plan`: abstract state, shardings, counts, XLA memory, advice."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import equinox as eqx
import haliax as hax
import jax
import optax
import pytest
from jax.sharding import PartitionSpec

import lm.config
from lm.checkpoint import CheckpointerConfig
from lm.main.eval_lm import EvalLmConfig
from lm.main.plan import PlanConfig, main
from lm.main.plot_lr import PlotLrConfig
from lm.plan import (
    MemoryEstimate,
    Plan,
    format_plan,
    format_size,
    memory_advice,
    parse_size,
    plan_lm,
    plan_training,
    with_shardings,
)
from lm.schedule import ScheduleStep
from lm.tracker import NoopConfig
from lm.trainer import Trainer, TrainerConfig

NANO = "config/gpt2_nano.yaml"


@pytest.fixture(scope="session")
def nano_config(repo_root) -> PlanConfig:
    return lm.config.parse(PlanConfig, str(repo_root / NANO))


@pytest.fixture(scope="session")
def nano_plan(nano_config):
    """gpt2_nano planned on the 8 fake CPU devices of conftest, step compiled."""
    return plan_lm(nano_config)


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("16GiB", 16 * 2**30),
        ("80GB", 80 * 10**9),
        ("512MiB", 512 * 2**20),
        ("512MB", 512 * 10**6),
        ("1.5TiB", int(1.5 * 2**40)),
        ("64 KiB", 64 * 1024),
        ("1024", 1024),
        ("100B", 100),
        (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("16gib", "did you mean 16GiB"),
        ("16G", "did you mean 16GB"),
        ("16 gigs", "unknown size unit 'gigs'"),
        ("lots", "cannot read 'lots' as a size"),
        ("-1GiB", "cannot read"),
        ("0MiB", "must be positive"),
        (0, "must be positive"),
    ],
)
def test_parse_size_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_size(text)


def test_format_size():
    assert format_size(512) == "512 B"
    assert format_size(2048) == "2.00 KiB"
    assert format_size(3 * 2**30) == "3.00 GiB"
    assert format_size(150 * 2**20) == "150 MiB"
    assert format_size(15.5 * 2**20) == "15.5 MiB"


# ---------------------------------------------------------------------------- the plan


def test_nano_plan_parameters_and_shardings(nano_plan, nano_config):
    plan = nano_plan
    assert plan.mesh_shape == {"replica": 1, "data": 8, "model": 1}
    assert plan.num_devices == 8
    vocab = plan.facts["vocab_size"]
    # Oracle: the model config's closed-form count (written from the architecture).
    assert plan.num_params == nano_config.model.total_trainable_params(vocab) == 1_874_688
    assert plan.num_trainable_params == plan.num_params

    by_path = {p.path: p for p in plan.params}
    wte = by_path["embeddings/token_embeddings/weight"]
    assert wte.axes == (("vocab", vocab), ("embed", 128))
    # FSDP: embed is sharded over the data axis in the parameter mapping.
    assert wte.pspec == PartitionSpec(None, "data")
    assert wte.shard_shape == (vocab, 128 // 8)
    c_attn = by_path["transformer/blocks/stacked/attn/c_attn/weight"]
    assert [name for name, _ in c_attn.axes] == ["layers", "embed", "qkv", "heads", "head_size"]
    assert c_attn.shard_shape == (4, 16, 3, 4, 32)
    bias = by_path["transformer/blocks/stacked/attn/c_attn/bias"]
    assert bias.shard_shape == bias.shape  # no embed axis: replicated
    assert plan.param_bytes == 4 * plan.num_params
    assert plan.param_bytes_per_device == sum(4 * math.prod(p.shard_shape) for p in plan.params)


def test_nano_plan_counts_flops_and_tokens(nano_plan, nano_config):
    plan = nano_plan
    model_config = nano_config.model
    assert plan.batch_size == 16 and plan.num_microbatches == 1
    assert plan.examples_per_device == 2
    assert plan.tokens_per_step == 16 * 256
    fwd = model_config.flops_per_token(plan.facts["vocab_size"])
    assert plan.flops_per_token == fwd
    assert plan.train_flops_per_step == pytest.approx(3 * fwd * 16 * 256)
    assert plan.planned_tokens == 200 * 16 * 256
    # adam: two moments the size of the parameters (plus scalar counts)
    assert 2 * plan.param_bytes <= plan.opt_state_bytes <= 2 * plan.param_bytes + 64


def test_nano_plan_memory_matches_the_shardings(nano_plan):
    memory = nano_plan.memory
    assert memory is not None and nano_plan.compile_seconds > 0
    # XLA's argument bytes are the state shards plus this device's batch rows
    # (tokens int32, loss mask bool, segment ids int32: 2 examples x 256 positions).
    batch_bytes = 2 * 256 * (4 + 1 + 4)
    expected = nano_plan.state_bytes_per_device + batch_bytes
    assert expected - 64 <= memory.argument_bytes <= expected
    # The state is donated: the new state is written over it.
    assert memory.alias_bytes >= nano_plan.state_bytes_per_device - 64
    # Activations of 2 x 256 tokens with an 8192-entry vocabulary: at least the logits.
    assert memory.temp_bytes > 2 * 256 * 8192 * 4
    assert memory.total_bytes == (
        memory.argument_bytes
        + memory.output_bytes
        - memory.alias_bytes
        + memory.temp_bytes
        + memory.generated_code_bytes
    )


def test_fsdp_off_replicates_the_state(nano_config, nano_plan):
    config = dataclasses.replace(
        nano_config, trainer=dataclasses.replace(nano_config.trainer, fsdp_axis=None)
    )
    plan = plan_lm(config, compile_step=False)
    assert plan.memory is None
    assert all(entry is None for p in plan.params for entry in p.pspec)
    assert plan.param_bytes_per_device == plan.param_bytes
    assert plan.state_bytes_per_device > 7 * nano_plan.state_bytes_per_device


def test_auto_remat_is_planned_as_train_lm_resolves_it(nano_config):
    # CPU: save_projections when it fits the device, true against a budget it does not fit.
    auto = dataclasses.replace(
        nano_config, model=dataclasses.replace(nano_config.model, gradient_checkpointing="auto")
    )
    roomy = plan_lm(auto, compile_step=False)
    assert roomy.facts["gradient_checkpointing"] == "save_projections"
    assert roomy.facts["gradient_checkpointing_requested"] == "auto"
    assert "Gradient checkpointing: auto -> save_projections" in format_plan(roomy)
    tight = plan_lm(dataclasses.replace(auto, device_memory="1MiB"), compile_step=False)
    assert tight.facts["gradient_checkpointing"] is True
    assert "Gradient checkpointing: auto -> true" in format_plan(tight)
    assert "Gradient checkpointing" not in format_plan(plan_lm(nano_config, compile_step=False))


def test_main_prints_the_plan_and_exits_by_budget(nano_plan, repo_root, capsys, monkeypatch):
    # main() plans again; reuse the session's plan to keep the test fast.
    monkeypatch.setattr("lm.main.plan.plan_lm", lambda config, compile_step: nano_plan)
    args = ["--config_path", str(repo_root / NANO), "--num_devices", "8"]
    code = lm.config.main(main)(args=[*args, "--device_memory", "16GiB"])
    out = capsys.readouterr().out
    assert code == 0
    for expected in [
        "Mesh: replica=1 data=8 model=1",
        "embeddings/token_embeddings/weight",
        "(-, data)",
        f"parameters:        {nano_plan.num_params:,}",
        "FLOPs/token:",
        "temporaries",
        "FITS:",
    ]:
        assert expected in out
    code = lm.config.main(main)(args=[*args, "--device_memory", "1MiB"])
    out = capsys.readouterr().out
    assert code == 3
    assert "DOES NOT FIT" in out and "model.gradient_checkpointing: true" in out


def test_bad_plan_options_are_config_errors(repo_root, capsys):
    base = ["--config_path", str(repo_root / NANO)]
    with pytest.raises(SystemExit) as e:
        lm.config.main(main)(args=[*base, "--device_memory", "16gib"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "device_memory" in err and "did you mean 16GiB" in err
    with pytest.raises(SystemExit):  # a bare number is bytes: 16 was planned against 16 B
        lm.config.main(main)(args=[*base, "--device_memory", "16"])
    assert "16 is 16 bytes, less than a MiB: give the unit, e.g. 16GiB" in (capsys.readouterr().err)
    with pytest.raises(SystemExit):
        lm.config.main(main)(args=[*base, "--num_devices", "0"])
    assert "got 0, expected a positive device count" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lm.config.main(main)(args=[*base, "--device_memory", "1GiB", "--compile_step", "false"])
    assert "compile_step" in capsys.readouterr().err
    # Found only once the devices are known, still a bad config: exit 2, no traceback hint.
    with pytest.raises(SystemExit) as e:
        lm.config.main(main)(args=[*base, "--num_devices", "8", "--trainer.train_batch_size", "12"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: trainer.train_batch_size (12) must be divisible by the number of batch-parallel "
        "devices (8)"
    )
    assert "traceback" not in err


@pytest.mark.parametrize("remat", [None, "auto"])
def test_two_axes_of_a_parameter_on_one_mesh_axis_are_named_as_train_lm_names_them(
    nano_config, remat
):
    # fsdp over embed and mlp puts both axes of the MLP weight on 'data': the plan says which
    # fields to change (as train_lm does) instead of jax's DuplicateSpecError, also before
    # the auto remat search builds a state.
    config = dataclasses.replace(
        nano_config, trainer=dataclasses.replace(nano_config.trainer, fsdp_axis=["embed", "mlp"])
    )
    if remat is not None:
        model = dataclasses.replace(config.model, gradient_checkpointing=remat)
        config = dataclasses.replace(config, model=model)
    with pytest.raises(ValueError) as e:
        plan_lm(config, compile_step=False)
    assert str(e.value).startswith(
        "parameter transformer.blocks.stacked.mlp.c_fc.weight has axes 'embed' ('data') and "
        "'mlp' ('data'), which the trainer's parameter axis mapping both shards over mesh axis "
        "'data'"
    )
    assert "change trainer.fsdp_axis" in str(e.value)


def test_num_devices_that_cannot_be_simulated_is_an_error(repo_root):
    config = lm.config.parse(
        PlanConfig, str(repo_root / NANO), args=["--num_devices", "3", "--compile_step", "false"]
    )
    with pytest.raises(ValueError, match="num_devices: 3 .* fresh process"):
        main(config)


# ---------------------------------------------------------------------------- advice


def _plan(temp_mib: float, state_mib: float, **facts) -> Plan:
    mib = 2**20
    base_facts = {
        "gradient_checkpointing": True,
        "compute_dtype": "bfloat16",
        "cross_entropy_block_size": 4096,
        "vocab_size": 50304,
        "seq_len": 1024,
        "fsdp_axis": "embed",
        "model_axis_size": 2,
        "replica_axis_size": 1,
        "data_axis_size": 8,
    }
    base_facts.update(facts)
    return Plan(
        mesh_shape={"replica": 1, "data": 8, "model": 1},
        num_devices=8,
        platform="gpu",
        device_kind="H100",
        compute_axis_mapping={},
        parameter_axis_mapping={},
        params=[],
        state_bytes_per_device=int(state_mib * mib),
        opt_state_bytes=0,
        batch_size=64,
        num_microbatches=1,
        examples_per_device=8,
        tokens_per_example=1024,
        memory=MemoryEstimate(
            argument_bytes=int(state_mib * mib),
            output_bytes=int(state_mib * mib),
            alias_bytes=int(state_mib * mib),
            temp_bytes=int(temp_mib * mib),
            generated_code_bytes=0,
        ),
        facts=base_facts,
    )


def test_advice_is_empty_when_it_fits():
    plan = _plan(temp_mib=100, state_mib=50)
    assert memory_advice(plan, parse_size("151MiB")) == []
    assert memory_advice(plan, parse_size("149MiB")) != []


def test_activation_heavy_plans_get_activation_advice_first():
    plan = _plan(
        temp_mib=4000,
        state_mib=100,
        gradient_checkpointing=False,
        compute_dtype="float32",
        cross_entropy_block_size=None,
    )
    advice = memory_advice(plan, parse_size("1GiB"))
    assert advice[0].startswith("set model.gradient_checkpointing: true")
    assert advice[1].startswith("set trainer.per_device_parallelism: 4 (now 8")
    assert "accumulated over 2 microbatches" in advice[1]
    assert advice[2].startswith('set trainer.mp: "p=f32,c=bfloat16"')
    # logits: 8 examples x 1024 x 50304 x 4 bytes = 1.54 GiB, a block well under the vocab
    assert advice[3].startswith("set model.cross_entropy_block_size: 4096")
    assert "1.54 GiB" in advice[3]
    assert advice[-1].startswith("use more devices")


def test_state_heavy_plans_get_state_advice_first():
    plan = _plan(temp_mib=100, state_mib=4000, fsdp_axis=None, replica_axis_size=2)
    advice = memory_advice(plan, parse_size("1GiB"))
    assert advice[0].startswith("set trainer.fsdp_axis: embed")
    assert advice[1].startswith("lower trainer.replica_ici_axis_size")
    assert advice[2].startswith("use more devices")
    # settings already in place are not suggested again
    joined = "\n".join(advice)
    assert "gradient_checkpointing" not in joined
    assert "p=f32,c=bfloat16" not in joined
    assert "cross_entropy_block_size" not in joined


def test_one_example_per_device_suggests_shorter_sequences():
    plan = dataclasses.replace(_plan(temp_mib=4000, state_mib=10), examples_per_device=1)
    advice = memory_advice(plan, parse_size("1GiB"))
    assert not any("per_device_parallelism" in a for a in advice)
    assert any("lower model.seq_len (now 1024)" in a for a in advice)


# ---------------------------------------------------------------------------- entry point

BIGGER = """\
model:
  type: gpt2
  seq_len: 512
  hidden_dim: 256
  num_layers: 6
  num_heads: 4
  gradient_checkpointing: false
trainer:
  num_train_steps: 1000
  train_batch_size: 32
  require_accelerator: false
  tracker:
    type: noop
"""


@pytest.mark.entry
def test_plan_cli_bigger_config_does_not_fit(tmp_path, subprocess_env, repo_root):
    config = tmp_path / "bigger.yaml"
    config.write_text(BIGGER)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm.main.plan",
            "--config_path",
            str(config),
            "--num_devices",
            "4",
            "--device_memory",
            "256MiB",
        ],
        env=subprocess_env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    out = proc.stdout
    assert "Devices: 4 x cpu" in out and "Mesh: replica=1 data=4 model=1" in out
    # 6 layers stacked: one row per parameter kind, with the layers axis first
    assert "layers:6 x embed:256 x mlp:1024" in out
    assert "batch:             32 examples x 512 tokens = 16,384 tokens/step" in out
    assert "DOES NOT FIT" in out
    advice = [line for line in out.splitlines() if line.startswith("  - ")]
    assert advice[0].startswith("  - set model.gradient_checkpointing: true")
    assert any("per_device_parallelism: 4 (now 8 examples" in a for a in advice)
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert "GiB" in total  # well over the 256 MiB budget


# ---------------------------------------------------------------------------- any trainer


class _Mlp(eqx.Module):
    w1: hax.NamedArray
    w2: hax.NamedArray

    @staticmethod
    def init(*, key):
        k1, k2 = jax.random.split(key)
        return _Mlp(hax.random.normal(k1, (_Feature, _Hidden)), hax.random.normal(k2, (_Hidden,)))


_Feature, _Hidden = hax.Axis("feature", 16), hax.Axis("embed", 64)


def _mse(model, x, y):
    pred = hax.dot(hax.tanh(hax.dot(x, model.w1, axis=_Feature)), model.w2, axis=_Hidden)
    return hax.mean((pred - y) ** 2).scalar()


def _xy(Batch):
    return hax.zeros((Batch, _Feature)), hax.zeros((Batch,))


def test_plan_training_any_model_and_concrete_lowering_agree(tmp_path):
    config = TrainerConfig(
        train_batch_size=32,
        per_device_parallelism=2,
        num_train_steps=10,
        require_accelerator=False,
        log_dir=tmp_path,
        tracker=NoopConfig(),
        checkpointer=CheckpointerConfig(base_path=str(tmp_path / "ckpt")),
    )
    trainer = Trainer(config, optax.adam(1e-3), _mse, add_default_hooks=False)
    init = lambda: _Mlp.init(key=jax.random.PRNGKey(0))  # noqa: E731
    plan = plan_training(trainer, init, lambda B: _xy(B)[0], compile_step=False)
    assert plan.num_params == 16 * 64 + 64
    w1 = next(p for p in plan.params if p.path == "w1")
    assert w1.axes == (("feature", 16), ("embed", 64)) and w1.shard_shape == (16, 8)
    assert plan.num_microbatches == 2 and plan.examples_per_device == 2

    # the step on abstract inputs compiles to the same program as on real ones
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(1), model_init=init)
        x, y = _xy(config.TrainBatch)
        x, y = hax.shard((x, y), trainer.compute_axis_mapping)
        concrete = MemoryEstimate.from_compiled(trainer.lower_train_step(state, x, y).compile())
    mesh = config.device_mesh
    abstract_state = with_shardings(
        jax.eval_shape(lambda: state), trainer.parameter_axis_mapping, mesh
    )
    abstract_batch = with_shardings(
        jax.eval_shape(lambda: (x, y)), trainer.compute_axis_mapping, mesh
    )
    abstract = MemoryEstimate.from_compiled(
        trainer.lower_train_step(abstract_state, *abstract_batch).compile()
    )
    assert abstract == concrete
    assert concrete.temp_bytes > 0 and concrete.alias_bytes > 0


def _mse_xy(model, xy):
    return _mse(model, *xy)


@pytest.mark.parametrize("batch_size", [16, 12])
def test_the_planned_batch_is_laid_out_as_the_data_loader_lays_it_out(tmp_path, batch_size):
    """A batch the 8 batch-parallel devices do not divide (allow_nondivisible_batch_size) is
    replicated by the loader, and so by the plan; planning used to fail in jax (`implies that
    array axis 0 is partitioned 8 times, but the dimension size is 12`) while training ran."""
    from lm.data import ListDataset
    from lm.plan import abstract_batch

    config = TrainerConfig(
        train_batch_size=batch_size,
        allow_nondivisible_batch_size=True,
        num_train_steps=10,
        require_accelerator=False,
        log_dir=tmp_path,
    )
    trainer = Trainer(config, optax.adam(1e-3), _mse_xy, add_default_hooks=False)
    example = (hax.zeros(_Feature), hax.zeros(()))
    loaded = trainer.data_loader(ListDataset([example] * batch_size)).make_batch(0)
    planned = abstract_batch(trainer, _xy, config.TrainBatch)
    for got, want in zip(jax.tree.leaves(planned), jax.tree.leaves(loaded), strict=True):
        assert got.shape == want.shape
        assert got.sharding.spec == want.sharding.spec, (got.sharding, want.sharding)
    init = lambda: _Mlp.init(key=jax.random.PRNGKey(0))  # noqa: E731
    plan = plan_training(trainer, init, _xy)
    assert plan.memory is not None and plan.batch_size == batch_size
    replicated = [w for w in plan.warnings if "replicated on every device" in w]
    if batch_size == 12:
        assert replicated == [
            "batch size 12 (from step 0) is not divisible by the 8 batch-parallel devices (mesh "
            "axes ['replica', 'data']): batches of that size are replicated on every device, not "
            "sharded (trainer.allow_nondivisible_batch_size)"
        ]
        assert "Warnings:\n  - batch size 12 (from step 0)" in format_plan(plan)
    else:
        assert replicated == [] and "Warnings:" not in format_plan(plan)


def test_a_mesh_axis_nothing_uses_is_shown_in_the_plan(nano_config):
    idle = dataclasses.replace(nano_config.trainer, model_axis_size=2)
    plan = plan_lm(dataclasses.replace(nano_config, trainer=idle), compile_step=False)
    (warning,) = plan.warnings
    assert warning.startswith("mesh axis 'model' has 2 devices (trainer.model_axis_size = 2)")
    assert f"Warnings:\n  - {warning}" in format_plan(plan)
    used = dataclasses.replace(idle, tensor_parallel_axes=["heads", "mlp"])
    plan = plan_lm(dataclasses.replace(nano_config, trainer=used), compile_step=False)
    assert plan.warnings == ()


def test_batch_schedule_plans_the_largest_phase(nano_config):
    trainer = dataclasses.replace(
        nano_config.trainer,
        train_batch_size=[ScheduleStep(start=0, value=16), ScheduleStep(start=50, value=32)],
        per_device_parallelism=2,
    )
    plan = plan_lm(dataclasses.replace(nano_config, trainer=trainer), compile_step=False)
    assert plan.batch_size == 32 and plan.num_microbatches == 2
    assert plan.planned_examples == 50 * 16 + 150 * 32
    assert plan.planned_tokens == plan.planned_examples * 256


@pytest.mark.parametrize("cls", [PlanConfig, EvalLmConfig, PlotLrConfig])
def test_entry_configs_round_trip(cls, repo_root, tmp_path):
    extra = ["--checkpoint_path", "ckpt/run"] if cls is EvalLmConfig else []
    config = lm.config.parse(cls, str(repo_root / NANO), args=extra)
    path = tmp_path / "saved.yaml"
    lm.config.save_config(config, str(path))
    again = lm.config.parse(cls, str(path))
    assert lm.config.to_yaml(again) == path.read_text()
    assert again.model == config.model and again.optimizer == config.optimizer
    assert dataclasses.replace(again, data=config.data, trainer=config.trainer) == config


@pytest.mark.torch
def test_plan_resolves_an_hf_initialized_run_as_train_lm_does(tmp_path):
    """`use_hf_model_config: true`: the plan is of the checkpoint's architecture and its 128
    vocabulary rows (the tokenizer has 101), at the YAML's seq_len."""
    from test_export_lm_to_hf import hf_llama_checkpoint

    source = tmp_path / "src"
    hf_llama_checkpoint(source)
    (tmp_path / "run.yaml").write_text(
        "model: {type: llama, seq_len: 32}\n"
        f"initialize_from_hf: {source}\n"
        "use_hf_model_config: true\n"
        f"data: {{tokenizer: {source}}}\n"
        "trainer: {train_batch_size: 8, require_accelerator: false}\n"
    )
    config = lm.config.parse(PlanConfig, str(tmp_path / "run.yaml"))
    plan = plan_lm(config, compile_step=False)
    assert plan.facts["model"] == "LlamaConfig"
    assert plan.facts["seq_len"] == 32
    assert plan.facts["vocab_size"] == 128 and plan.facts["tokenizer_vocab_size"] == 101
    # hidden 32, MLP 48, 2 layers, untied 128-row embeddings and head: the checkpoint's model
    assert plan.num_params == sum(p.numel() for p in hf_model_params(source))


def hf_model_params(path):
    from transformers import AutoModelForCausalLM

    return list(AutoModelForCausalLM.from_pretrained(path).parameters())
