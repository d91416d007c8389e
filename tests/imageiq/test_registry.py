import bentoml
import pytest
import torch

from imageiq.architectures import build_model
from imageiq.errors import ConfigurationError, ModelNotFound
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import ModelCard, get_model, list_models, load_model, register_model

NAME = "registry-test"


def _card(**extra: object) -> ModelCard:
    return ModelCard(
        architecture="mobilenet_v3_small",
        labels=["cat", "dog", "eel"],
        heads={"shiny": ["no", "yes"]},
        preprocessing=PreprocessConfig(resize_size=40, crop_size=32, interpolation="bicubic"),
        metrics={"val_top1": 0.9},
        dataset_fingerprint="sha256:abc",
        training_config={"epochs": 3, "weights_file": None, "history": [{"epoch": 1}]},
        **extra,
    )


def test_round_trip_preserves_card_and_outputs() -> None:
    torch.manual_seed(0)
    net = build_model(arch="mobilenet_v3_small", num_classes=3, heads={"shiny": 2}).eval()
    registered = register_model(net, _card(), name=NAME)
    assert registered.tag.startswith(f"{NAME}:")

    model, loaded = load_model(registered.tag)
    expected = _card()
    for field in (
        "architecture",
        "labels",
        "heads",
        "preprocessing",
        "metrics",
        "dataset_fingerprint",
        "software",
    ):
        assert getattr(model.card, field) == getattr(expected, field), field
    assert abs((model.card.created_at - expected.created_at).total_seconds()) < 60
    # None is not storable in BentoML metadata: such keys read back as absent.
    assert model.card.training_config == {"epochs": 3, "history": [{"epoch": 1}]}
    assert model.card.preprocessing.interpolation == "bicubic"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = net(x), loaded(x)
    for head in ("label", "shiny"):
        assert torch.equal(expected[head], got[head])


def test_store_metadata_is_readable_by_bentoml_itself() -> None:
    registered = register_model(
        build_model(arch="resnet18", num_classes=3, heads={"shiny": 2}), _card(), name=NAME
    )
    stored = bentoml.models.get(registered.tag)
    assert stored.info.metadata["labels"] == ["cat", "dog", "eel"]
    assert stored.info.labels["architecture"] == "mobilenet_v3_small"


def test_latest_and_listing_are_newest_first() -> None:
    first = register_model(
        build_model(arch="resnet18", num_classes=3, heads={"shiny": 2}),
        _card(),
        name=NAME + "-order",
    )
    second = register_model(
        build_model(arch="resnet18", num_classes=3, heads={"shiny": 2}),
        _card(),
        name=NAME + "-order",
    )
    assert [m.version for m in list_models(NAME + "-order")] == [second.version, first.version]
    assert get_model(f"{NAME}-order:latest").version == second.version


def test_unknown_models() -> None:
    with pytest.raises(ModelNotFound, match="imageiq train"):
        get_model("nothing-here:latest")
    assert list_models("nothing-here") == []


def test_card_must_match_the_network() -> None:
    with pytest.raises(ConfigurationError):
        register_model(build_model(arch="resnet18", num_classes=4), _card(), name=NAME)


def test_foreign_models_in_the_store_are_reported() -> None:
    with bentoml.models.create("not-imageiq", metadata={"hello": "world"}):
        pass
    with pytest.raises(ConfigurationError, match="not an ImageIQ model"):
        get_model("not-imageiq:latest")
