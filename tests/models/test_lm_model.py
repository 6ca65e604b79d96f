from lm.models import LmConfig


def test_registered_model_types():
    assert set(LmConfig.get_known_choices()) == {"gpt2"}
