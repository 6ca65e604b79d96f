"""Weight-decay masks on a GPT-2-shaped Haliax tree (REFERENCE_CASES.md §3)."""

import equinox as eqx
import jax
import pytest

import lm.tracker
from lm.optim import AdamConfig, map_params, param_infos
from lm.tracker.base import NoopTracker

DECAYED = {
    "embeddings.token_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "transformer.blocks.stacked.attn.c_attn.weight",
    "transformer.blocks.stacked.attn.c_proj.weight",
    "transformer.blocks.stacked.mlp.c_fc.weight",
    "transformer.blocks.stacked.mlp.c_proj.weight",
}
EMBEDDINGS = {"embeddings.token_embeddings.weight", "embeddings.position_embeddings.weight"}


def mask_as_dict(config, model):
    """{root path: decayed?} for every parameter."""
    mask = config.build_weight_decay_mask()
    assert mask is not None
    # A tree of paths shaped like the model; non-array leaves (e.g. LayerNorm.eps) stay.
    paths = jax.tree_util.tree_leaves(map_params(lambda x, info: info.path, model))
    values = jax.tree_util.tree_leaves(mask(model))
    assert len(values) == len(paths)
    out = {p: v for p, v in zip(paths, values, strict=True) if isinstance(p, str)}
    assert len(out) == len(param_infos(model))
    assert all(isinstance(v, bool) for v in out.values())
    return out


@pytest.mark.parametrize(
    "modules",
    [
        [
            "attn.c_attn.weight",
            "attn.c_proj.weight",
            "mlp.c_fc.weight",
            "mlp.c_proj.weight",
            "token_embeddings",
            "position_embeddings",
        ],
        r".*attn.*weight|.*mlp.*weight|.*token_embeddings|.*position_embeddings",
        ["Linear.weight", "Embedding.weight"],
        # re.match against the class path: no path from the root starts with "Linear"
        r"Linear\.weight|Embedding\.weight",
    ],
    ids=["module_paths", "regex", "class_paths", "class_path_regex"],
)
def test_three_specifications_give_the_same_mask(gpt2_like, modules):
    mask = mask_as_dict(AdamConfig(weight_decay_modules=modules), gpt2_like)
    assert {p for p, decayed in mask.items() if decayed} == DECAYED
    assert not any(mask[p] for p in mask if "ln_" in p or p.endswith("bias"))


def test_default_mask_excludes_norms_biases_and_embeddings(gpt2_like):
    mask = mask_as_dict(AdamConfig(), gpt2_like)
    assert {p for p, decayed in mask.items() if decayed} == DECAYED - EMBEDDINGS


def test_default_false_without_modules_means_no_mask(gpt2_like):
    config = AdamConfig(default_weight_decay_mask=False)
    assert config.build_weight_decay_mask() is None
    assert config.decayed_parameter_paths(gpt2_like) == sorted(
        i.path for i in param_infos(gpt2_like)
    )


def test_default_true_adds_modules_on_top_of_the_default(gpt2_like):
    config = AdamConfig(weight_decay_modules=["token_embeddings"], default_weight_decay_mask=True)
    mask = mask_as_dict(config, gpt2_like)
    assert {p for p, d in mask.items() if d} == (DECAYED - EMBEDDINGS) | {
        "embeddings.token_embeddings.weight"
    }


def test_regex_uses_match_not_search(gpt2_like):
    # re.match anchors at the start: "attn" alone matches no path.
    mask = mask_as_dict(AdamConfig(weight_decay_modules="attn"), gpt2_like)
    assert not any(mask.values())


def test_mask_tree_is_a_prefix_of_the_params(gpt2_like):
    tree = AdamConfig().build_weight_decay_mask()(gpt2_like)
    assert type(tree) is type(gpt2_like)
    assert tree.transformer.blocks.stacked.attn.c_attn.weight is True
    assert tree.transformer.ln_f.bias is False
    # handles None (non-trainable) leaves
    partial = map_params(lambda x, info: None if "ln_f" in info.path else x, gpt2_like)
    mask = AdamConfig().build_weight_decay_mask()(partial)
    assert mask.transformer.ln_f.weight is None
    # eqx.filter leaves NamedArrays with array=None for filtered-out parameters
    only_linear = eqx.filter(
        gpt2_like, map_params(lambda x, info: "c_fc" in info.path, gpt2_like, default=False)
    )
    assert AdamConfig().decayed_parameter_paths(only_linear) == [
        "transformer.blocks.stacked.mlp.c_fc.weight"
    ]


def test_decayed_paths_are_logged_as_hyperparameters(gpt2_like):
    class Recorder(NoopTracker):
        def __init__(self):
            self.hparams = {}
            self.calls = 0

        def log_hyperparameters(self, hparams):
            self.hparams.update(hparams)
            self.calls += 1

    config = AdamConfig()
    assert config.decayed_parameter_paths(gpt2_like) == sorted(DECAYED - EMBEDDINGS)
    recorder = Recorder()
    optimizer = config.build(10)
    with recorder:
        optimizer.init(gpt2_like)
        optimizer.init(gpt2_like)  # the trainer inits for the abstract state, then for real
    assert recorder.hparams["decayed_weights"] == sorted(DECAYED - EMBEDDINGS)
    assert recorder.calls == 1
    assert AdamConfig(weight_decay=0.0).decayed_parameter_paths(gpt2_like) == []
    # without an active tracker, init still works (the list goes to the Python log)
    assert lm.tracker.base._stack() == []
    config.build(10).init(gpt2_like)


def test_weight_decay_modules_that_select_nothing_warn(gpt2_like, caplog):
    """`weight_decay_modules: [atn.weight]` turned weight decay off with an INFO line only."""
    import logging

    with caplog.at_level(logging.WARNING, logger="lm.optim.config"):
        AdamConfig(weight_decay_modules=["atn.weight"]).build(10).init(gpt2_like)
    assert "optimizer.weight_decay_modules (['atn.weight']) selects no parameter" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lm.optim.config"):
        AdamConfig(weight_decay_modules=["atn.weight"], weight_decay=0.0).build(10).init(gpt2_like)
        AdamConfig().build(10).init(gpt2_like)
    assert "selects no parameter" not in caplog.text
