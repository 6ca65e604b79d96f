"""The eval hook (TRN-11): capped at `max_eval_batches`, off at 0."""

import jax
import optax
import pytest
from toy import Mlp, make_dataset, mse, trainer_config

from lm.data import ListDataset
from lm.tracker import read_json_log
from lm.trainer import Trainer


def _evaluate(config, dataset, model):
    trainer = Trainer(config, optax.sgd(0.1), mse)
    with trainer:
        trainer.add_eval_hook(dataset, "val")
        return trainer.EvalBatch.size, trainer._eval_hooks[0].evaluate(model)


def test_evaluation_stops_at_max_eval_batches(tmp_path):
    model = Mlp.init(key=jax.random.PRNGKey(0))
    data = make_dataset(64, seed=1)
    batch_size, capped = _evaluate(trainer_config(tmp_path / "a", max_eval_batches=2), data, model)
    assert batch_size == 16 and capped["eval/val/batches"] == 2
    # the same mean as the uncapped evaluation of the first two batches' examples
    _, first_two = _evaluate(trainer_config(tmp_path / "b"), ListDataset(data.items[:32]), model)
    assert first_two["eval/val/batches"] == 2
    assert capped["eval/val/loss"] == pytest.approx(first_two["eval/val/loss"], rel=1e-6)
    _, everything = _evaluate(trainer_config(tmp_path / "c"), data, model)
    assert everything["eval/val/batches"] == 4
    assert everything["eval/val/loss"] != pytest.approx(capped["eval/val/loss"], rel=1e-6)


def test_max_eval_batches_zero_turns_evaluation_off(tmp_path):
    config = trainer_config(tmp_path, num_train_steps=4, steps_per_eval=2, max_eval_batches=0)
    trainer = Trainer(config, optax.sgd(0.1), mse)
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(0), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
        )
        trainer.add_eval_hook(make_dataset(64, seed=1), "val")
        info = trainer.train(state, trainer.data_loader(make_dataset()))
    assert info.step == 3 and trainer._eval_hooks == []
    logs = [r for r in read_json_log(f"{config.run_dir}/metrics.jsonl") if r["event"] == "log"]
    assert logs and not any(k.startswith("eval/") for r in logs for k in r["metrics"])


def test_tagged_sets_are_also_logged_per_tag_weighted_by_tokens(tmp_path):
    """DAT-04: `eval/<tag>/loss` is the token-weighted mean over the sets carrying the tag
    (sets of 3 and 1 batches, so an unweighted mean would differ), at the same steps."""
    config = trainer_config(tmp_path, num_train_steps=4, steps_per_eval=2)
    trainer = Trainer(config, optax.sgd(0.1), mse)
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(0), model_init=lambda: Mlp.init(key=jax.random.PRNGKey(0))
        )
        sets = {
            "a": make_dataset(48, seed=1),
            "b": make_dataset(16, seed=2),
            "c": make_dataset(16, seed=3),
        }
        trainer.add_eval_hooks(sets, {"a": ["web", "all"], "b": ["all"], "c": []})
        trainer.train(state, trainer.data_loader(make_dataset()))
    logs = [r for r in read_json_log(f"{config.run_dir}/metrics.jsonl") if r["event"] == "log"]
    by_step: dict[int, dict] = {}
    for record in logs:
        by_step.setdefault(record["step"], {}).update(record["metrics"])
    steps = sorted(s for s, m in by_step.items() if "eval/all/loss" in m)
    assert steps == sorted(s for s, m in by_step.items() if "eval/a/loss" in m) and steps
    for step in steps:
        m = by_step[step]
        assert (m["eval/a/batches"], m["eval/b/batches"]) == (3, 1)
        expected = (3 * m["eval/a/loss"] + m["eval/b/loss"]) / 4
        assert m["eval/all/loss"] == pytest.approx(expected, rel=1e-6)
        assert m["eval/web/loss"] == pytest.approx(m["eval/a/loss"], rel=1e-6)
        assert m["eval/all/loss"] != pytest.approx((m["eval/a/loss"] + m["eval/b/loss"]) / 2)
    prefixes = {k.split("/")[1] for k in by_step[steps[0]] if k.startswith("eval/")}
    assert prefixes == {"a", "b", "c", "web", "all"}


def test_a_set_smaller_than_one_eval_batch_is_refused_when_added(tmp_path):
    """It used to fail at the first evaluation, after the run had trained (and without
    saying how many examples the set has)."""
    trainer = Trainer(trainer_config(tmp_path), optax.sgd(0.1), mse)
    with trainer, pytest.raises(ValueError) as info:
        trainer.add_eval_hook(make_dataset(5, seed=1), "val")
    assert str(info.value) == (
        "Evaluation set 'val' (5 examples) is smaller than one eval batch of 16 examples: it "
        "gives no batch to evaluate. Lower trainer.per_device_eval_parallelism or use a larger "
        "validation set."
    )
