"""Session fixtures for the checkpoint tests."""

import jax
import pytest
from ckpt_helpers import make_state


@pytest.fixture(scope="session")
def trained_state():
    """An MLP TrainerState after 3 Adam steps."""
    return make_state(jax.random.PRNGKey(0), num_steps=3)
