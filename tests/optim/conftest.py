"""Fixtures for optimizer tests."""

import pytest
from optim_helpers import build_gpt2_like


@pytest.fixture(scope="session")
def gpt2_like():
    """A tiny GPT-2-shaped Haliax module tree (see `optim_helpers.build_gpt2_like`)."""
    return build_gpt2_like()
