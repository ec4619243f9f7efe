import pytest

from models import create_model, list_models, register_model
from models.registry import UnknownModelError
from tests.conftest import TINY_CONFIGS


def test_list_models_has_both_families() -> None:
    names = list_models()
    assert "msdnet" in names and "msdnet_imagenet" in names
    assert "resnet18_exits" in names
    assert names == sorted(names)


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(UnknownModelError) as err:
        create_model("msdnet_typo")
    message = str(err.value)
    assert "msdnet_typo" in message
    for name in list_models():
        assert name in message


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("msdnet")(lambda **kw: None)


def test_create_model_records_how_to_rebuild() -> None:
    model = create_model("msdnet", n_blocks=2, base=1, step=1, n_channels=8, growth_rate=4)
    assert model.arch_name == "msdnet"
    assert model.arch_kwargs == {
        "n_blocks": 2,
        "base": 1,
        "step": 1,
        "n_channels": 8,
        "growth_rate": 4,
    }


def test_every_registered_model_is_covered() -> None:
    assert set(list_models()) == set(TINY_CONFIGS)
