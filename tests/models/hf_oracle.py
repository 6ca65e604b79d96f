"""HF `transformers` oracles for model tests (torch CPU, random init, never the hub)."""

import jax
import numpy as np


def hf_model_from_config(hf_config, seed: int = 0):
    """A randomly initialised HF causal LM for `hf_config` (eager attention, float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    # HF initialises norms to 1 and biases to 0; perturb every parameter so that a wrong
    # mapping of any of them shows up in the logits.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval().float()


def hf_state_dict_numpy(hf_model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in hf_model.state_dict().items()}


def hf_logits(hf_model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf_model(torch.from_numpy(np.array(tokens)).long()).logits.numpy()


def assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
