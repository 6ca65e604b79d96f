"""Mistakes a research script makes with the Trainer's Python API are errors that say what
was wrong and what to do, before anything trains wrongly in silence (8 fake CPU devices)."""

import logging

import haliax as hax
import jax
import jax.numpy as jnp
import optax
import pytest
from toy import Example, Feature, Mlp, make_dataset, mse, mse_with_metrics, trainer_config

import lm.tracker
from lm.config import SetupConfigError
from lm.data import AsyncDataset, ListDataset
from lm.tracker import read_json_log
from lm.trainer import Trainer


def _init():
    return Mlp.init(key=jax.random.PRNGKey(0))


def _train(config, loss_fn=mse, *, loader=None, eval_set=None):
    trainer = Trainer(config, optax.adam(1e-2), loss_fn)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(1), model_init=_init)
        if eval_set is not None:
            trainer.add_eval_hook(eval_set, "val")
        data = trainer.data_loader(make_dataset()) if loader is None else loader(trainer)
        return trainer.train(state, data)


def _logged(config) -> dict[str, float]:
    merged: dict[str, float] = {}
    for record in read_json_log(f"{config.run_dir}/metrics.jsonl"):
        if record["event"] == "log":
            merged.update(record["metrics"])
    return merged


# ------------------------------------------------------------------ the loss


def test_tracker_log_inside_the_loss_is_logged_in_training_and_evaluation(tmp_path):
    """`lm.tracker.log` in the loss: `train/<key>` after a step and `eval/<set>/<key>` from
    the eval hook (the first evaluation used to fail: traced values outside capture)."""

    def loss_fn(model, batch):
        loss, metrics = mse_with_metrics(model, batch)
        lm.tracker.log({"twice_loss": 2 * loss})
        return loss, metrics

    config = trainer_config(tmp_path, num_train_steps=2, steps_per_eval=1)
    _train(config, loss_fn, eval_set=make_dataset(32, seed=1))
    logged = _logged(config)
    assert logged["train/twice_loss"] == pytest.approx(2 * logged["train/loss"], rel=1e-5)
    assert logged["eval/val/twice_loss"] == pytest.approx(2 * logged["eval/val/loss"], rel=1e-5)
    assert "eval/val/abs_err" in logged


def test_an_integer_loss_is_an_error(tmp_path):
    def int_loss(model, batch):
        return (100 * mse(model, batch)).astype(jnp.int32)

    with pytest.raises(TypeError, match="floating-point loss, got dtype int32.*zero gradient"):
        _train(trainer_config(tmp_path, num_train_steps=1), int_loss)


def test_a_per_example_named_loss_is_an_error_naming_its_axes(tmp_path):
    def per_example(model, batch):
        return (model(batch.x) - batch.y) ** 2

    with pytest.raises(ValueError, match=r"scalar loss, got a NamedArray with axes \(batch=16\)"):
        _train(trainer_config(tmp_path, num_train_steps=1), per_example)


def test_a_non_scalar_metric_is_an_error_naming_the_metric(tmp_path):
    def loss_fn(model, batch):
        return mse(model, batch), {"errors": model(batch.x) - batch.y}

    with pytest.raises(ValueError, match=r"scalar metric 'errors', got a NamedArray"):
        _train(trainer_config(tmp_path, num_train_steps=1), loss_fn)


def test_a_list_of_loss_and_metrics_works_like_a_tuple(tmp_path):
    def as_list(model, batch):
        return list(mse_with_metrics(model, batch))

    config = trainer_config(tmp_path, num_train_steps=1)
    info = _train(config, as_list)
    assert "train/abs_err" in info.metrics


def test_a_malformed_loss_output_says_what_to_return(tmp_path):
    def three(model, batch):
        loss, metrics = mse_with_metrics(model, batch)
        return loss, metrics, loss

    with pytest.raises(ValueError, match=r"\(loss, metrics\) tuple.*got a tuple of 3"):
        _train(trainer_config(tmp_path, num_train_steps=1), three)


def test_a_loss_returning_none_says_so(tmp_path):
    """It was jax's `None is not a valid value for jnp.array`."""

    def forgot_return(model, batch):
        mse(model, batch)

    with pytest.raises(TypeError, match=r"got None \(a missing `return`\?\)"):
        _train(trainer_config(tmp_path, num_train_steps=1), forgot_return)


def test_add_hook_every_must_be_a_positive_int(tmp_path):
    trainer = Trainer(trainer_config(tmp_path), optax.adam(1e-2), mse)
    for every in (2.5, "10", 0, True):
        with pytest.raises(ValueError, match=r"add_hook\(every=...\) must be a positive integer"):
            trainer.add_hook(lambda info: None, every=every)


# ------------------------------------------------------------------ the data


def test_a_dataset_passed_to_train_is_an_error(tmp_path):
    trainer = Trainer(trainer_config(tmp_path), optax.adam(1e-2), mse)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(1), model_init=_init)
        for method in (trainer.train, trainer.training_steps):
            with pytest.raises(TypeError, match=r"got a dataset.*trainer.data_loader\(dataset\)"):
                method(state, make_dataset())


def test_unbatched_examples_are_an_error(tmp_path):
    examples = make_dataset().items
    with pytest.raises(ValueError, match=r"batch for step 0 has no axis 'batch'.*\(feature=4\)"):
        _train(trainer_config(tmp_path), loader=lambda trainer: iter(examples))


def test_a_loader_with_another_batch_size_than_the_schedule_is_an_error(tmp_path):
    def loader(trainer):
        return trainer.data_loader(make_dataset(), batch=hax.Axis("batch", 8))

    with pytest.raises(ValueError, match="has 8 examples along 'batch'.*train_batch_size is 16"):
        _train(trainer_config(tmp_path), loader=loader)


def test_a_batch_axis_with_another_name_is_an_error(tmp_path):
    def loader(trainer):
        return trainer.data_loader(make_dataset(), batch=hax.Axis("examples", 16))

    config = trainer_config(tmp_path, per_device_parallelism=1)  # 2 microbatches on 8 devices
    with pytest.raises(ValueError, match=r"no axis 'batch' \(trainer.batch_axis\)"):
        _train(config, loader=loader)


def test_train_step_refuses_to_split_a_batch_without_the_batch_axis(tmp_path):
    """Each microbatch used to get the whole batch (n times the compute, silently)."""
    config = trainer_config(tmp_path, per_device_parallelism=1)
    trainer = Trainer(config, optax.adam(1e-2), mse, add_default_hooks=False)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(1), model_init=_init)
        batch = next(iter(trainer.data_loader(make_dataset(), batch=hax.Axis("examples", 16))))
        with pytest.raises(ValueError, match=r"into 2 microbatches.*batch axis 'batch'"):
            trainer.train_step(state, batch)


# ------------------------------------------------------------------ evaluation


class _Endless(AsyncDataset[Example]):
    def __init__(self):
        self.items = make_dataset(16).items

    def is_finite(self):
        return False

    def __len__(self):
        raise TypeError("infinite")

    def get_batch(self, indices):
        return [self.items[i % 16] for i in indices]


def test_an_infinite_eval_set_needs_max_eval_batches(tmp_path):
    trainer = Trainer(trainer_config(tmp_path), optax.adam(1e-2), mse)
    with pytest.raises(ValueError, match="infinite and trainer.max_eval_batches is None"):
        trainer.add_eval_hook(_Endless(), "val")
    capped = Trainer(trainer_config(tmp_path, max_eval_batches=2), optax.adam(1e-2), mse)
    assert capped.add_eval_hook(_Endless(), "val") is not None


def test_an_eval_set_must_be_a_dataset(tmp_path):
    trainer = Trainer(trainer_config(tmp_path), optax.adam(1e-2), mse)
    with pytest.raises(TypeError, match=r"AsyncDataset.*got list.*lm.data.ListDataset"):
        trainer.add_eval_hook(make_dataset(16).items, "val")


def test_the_dropped_tail_of_an_eval_set_is_warned_about_once(tmp_path, caplog):
    config = trainer_config(tmp_path, num_train_steps=2, steps_per_eval=1)
    with caplog.at_level(logging.WARNING, logger="lm.trainer.evaluation"):
        _train(config, eval_set=make_dataset(40, seed=1))  # eval batch 16: 2 batches, 8 left
    warnings = [r.getMessage() for r in caplog.records if "leaves out" in r.getMessage()]
    assert warnings == [
        "Evaluation set 'val' has 40 examples; each evaluation uses 2 full batches of 16 (32 "
        "examples) and leaves out the last 8. To evaluate every example, make the set a "
        "multiple of 16 examples or choose trainer.per_device_eval_parallelism so the eval "
        "batch divides 40"
    ]
    assert _logged(config)["eval/val/batches"] == 2


# ------------------------------------------------------------------ state and context


def test_reusing_a_donated_state_is_an_error_naming_info_state(tmp_path):
    trainer = Trainer(trainer_config(tmp_path, num_train_steps=1), optax.adam(1e-2), mse)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(1), model_init=_init)
        batch = next(iter(trainer.data_loader(make_dataset())))
        info = trainer.train_step(state, batch)
        with pytest.raises(ValueError, match=r"trainer.train_step was already used.*info.state"):
            trainer.train_step(state, batch)
        with pytest.raises(ValueError, match=r"trainer.train was already used.*info.state"):
            trainer.train(state, trainer.data_loader(make_dataset()))
        trainer.train_step(info.state, batch)  # the returned state goes on


def test_train_outside_the_trainer_context_is_an_error_before_any_step(tmp_path):
    seen = []
    trainer = Trainer(trainer_config(tmp_path), optax.adam(1e-2), mse)
    trainer.add_hook(lambda info: seen.append(info.step))
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(1), model_init=_init)
    with pytest.raises(RuntimeError, match="must run inside `with trainer:`"):
        trainer.train(state, trainer.data_loader(make_dataset()))
    assert seen == []


# ------------------------------------------------------------------ construction


def test_an_optimizer_config_is_an_error_saying_build(tmp_path):
    from lm.optim import AdamConfig

    with pytest.raises(TypeError, match=r"AdamConfig\(...\).build\(config.num_train_steps\)"):
        Trainer(trainer_config(tmp_path), AdamConfig(), mse)
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        Trainer(trainer_config(tmp_path), "adam", mse)


def test_a_model_function_passed_as_model_is_an_error_suggesting_model_init(tmp_path):
    trainer = Trainer(trainer_config(tmp_path), optax.adam(1e-2), mse)
    with trainer:
        with pytest.raises(ValueError, match=r"Mlp.init, which has no array leaves.*model_init="):
            trainer.initial_state(jax.random.PRNGKey(1), model=Mlp.init)
        with pytest.raises(ValueError, match=r"model_init\(\) returned NoneType"):
            trainer.initial_state(jax.random.PRNGKey(1), model_init=lambda: None)
        # a built model is callable too: it was "Mlp.__call__() missing 1 required argument"
        with pytest.raises(
            TypeError, match=r"model_init=...\) got a built model \(toy.Mlp\): pass it as model="
        ):
            trainer.initial_state(jax.random.PRNGKey(1), model_init=_init())


def test_an_is_trainable_that_freezes_everything_warns(tmp_path, caplog):
    trainer = Trainer(trainer_config(tmp_path), optax.adam(1e-2), mse)
    with trainer, caplog.at_level(logging.WARNING, logger="lm.trainer.resume"):
        trainer.initial_state(jax.random.PRNGKey(1), model_init=_init, is_trainable=False)
    assert "is_trainable selects no parameter of the model: nothing will be trained" in (
        caplog.text
    )


def test_an_is_trainable_of_another_structure_names_the_argument(tmp_path):
    trainer = Trainer(trainer_config(tmp_path), optax.adam(1e-2), mse)
    with trainer:
        with pytest.raises(ValueError, match=r"^is_trainable must be True/False, a function"):
            trainer.initial_state(
                jax.random.PRNGKey(1), model_init=_init, is_trainable={"hidden": False}
            )


class _Short(ListDataset):
    def get_batch(self, indices):
        return super().get_batch(indices)[:-1]


class _Ragged(ListDataset):
    def get_batch(self, indices):
        out = super().get_batch(indices)
        out[3] = Example(x=hax.zeros((Feature.resize(Feature.size + 1),)), y=out[3].y)
        return out


@pytest.mark.parametrize(
    "dataset, message",
    [
        (
            _Short,
            r"_Short.get_batch\(\d+ indices, from 0\) returned \d+ examples: it must return a "
            "list with one example per index",
        ),
        (_Ragged, r"_Ragged example 3 has .x of shape \(\d+,\), example 0 of shape"),
    ],
)
def test_a_dataset_returning_the_wrong_examples_names_the_example(tmp_path, dataset, message):
    """They were numpy's `all input arrays must have the same shape` and an IndexError."""
    data = dataset(list(make_dataset().get_batch(range(512))))
    with pytest.raises(ValueError, match=message):
        _train(trainer_config(tmp_path, num_train_steps=1), loader=lambda t: t.data_loader(data))


def test_plain_array_batches_are_checked_by_their_leading_dimension(tmp_path):
    """A model and batches of plain jax arrays (no NamedArray) still train."""

    def loss(w, x):
        return jnp.mean((x @ w - 1.0) ** 2)

    data = ListDataset([jnp.ones(Feature.size, jnp.float32) for _ in range(64)])
    trainer = Trainer(trainer_config(tmp_path, num_train_steps=2), optax.sgd(0.1), loss)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(0), model=jnp.zeros(Feature.size))
        info = trainer.train(state, trainer.data_loader(data))
    assert info.step == 1


def test_the_trainer_warns_about_an_fsdp_axis_the_model_lacks(tmp_path, caplog):
    """The default `fsdp_axis: embed` on a model without `embed` shards nothing (8 devices:
    a warning); a `parameter_axis_resources` typo is an error, also for `abstract_state`."""
    trainer = Trainer(trainer_config(tmp_path), optax.sgd(0.1), mse)
    with trainer, caplog.at_level(logging.WARNING, logger="lm.trainer.resume"):
        trainer.initial_state(jax.random.PRNGKey(1), model_init=_init)
    assert (
        "trainer.fsdp_axis: 'embed' names no axis of the model's parameters (they have: "
        "feature, hidden), so it shards no parameter and no optimizer state"
    ) in caplog.text
    typo = Trainer(
        trainer_config(tmp_path / "b", parameter_axis_resources={"hiden": "data"}),
        optax.sgd(0.1),
        mse,
    )
    with typo:
        for method in (typo.initial_state, typo.abstract_state):
            with pytest.raises(SetupConfigError, match="'hiden'.*did you mean 'hidden'"):
                method(jax.random.PRNGKey(1), model_init=_init)


def test_an_fsdp_axis_the_config_wrote_is_a_warning_on_one_device_too(tmp_path):
    """On one device the default `fsdp_axis: embed` on a model without `embed` is INFO (a
    custom model, nothing to shard); a written value (a typo) stays a WARNING."""
    from lm.trainer.resume import mapped_axis_log_level

    message = "trainer.fsdp_axis: 'embd' names no axis of the model's parameters"
    typo = trainer_config(tmp_path, fsdp_axis="embd")
    assert mapped_axis_log_level(message, typo, 1) == logging.WARNING
    default = trainer_config(tmp_path)
    message = "trainer.fsdp_axis: 'embed' names no axis of the model's parameters"
    assert mapped_axis_log_level(message, default, 1) == logging.INFO
    assert mapped_axis_log_level(message, default, 8) == logging.WARNING
    other = "trainer.axis_resources: 'hiden' names no axis of the model's parameters"
    assert mapped_axis_log_level(other, default, 1) == logging.WARNING
