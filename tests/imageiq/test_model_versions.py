"""The versions of a model name (imageiq/model_versions.py): the local store and the model
repository (a directory here), which version is active (the activation record, else the one
served) and served, and a version's card and registered evaluation; a version only in the
repository is imported when asked for by itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import bentoml
import pytest
import torch
from sqlalchemy import Engine

from imageiq import catalog, errors, model_versions
from imageiq.architectures import build_model
from imageiq.model_repo import ModelRepository
from imageiq.model_versions import Serving
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import EVALUATION_FILE, ModelCard, RegisteredModel, register_model
from imageiq.settings import Settings
from tests.backends import migrated

NAME = "versions-test"
EVALUATION = {
    "labels": ["a", "b"],
    "confusion_matrix": [[3, 1], [0, 4]],
    "per_class": [
        {"label": "a", "precision": 1.0, "recall": 0.75, "f1": 0.857, "support": 4},
        {"label": "b", "precision": 0.8, "recall": 1.0, "f1": 0.889, "support": 4},
    ],
    "reliability": {"ece": 0.1, "bins": []},
}


def tiny_model(name: str, *, files: dict[str, bytes] | None = None) -> RegisteredModel:
    """An untrained two-class baseline CNN: the tests need a card, not skill."""
    torch.manual_seed(0)
    card = ModelCard(
        architecture="baseline_cnn",
        labels=["a", "b"],
        preprocessing=PreprocessConfig(resize_size=16, crop_size=16),
        metrics={"val_top1": 0.5},
        training_config={"epochs": 1},
    )
    return register_model(
        build_model(arch="baseline_cnn", num_classes=2), card, name=name, files=files
    )


@pytest.fixture(scope="module")
def versions() -> list[RegisteredModel]:
    """Three versions, oldest first; the second with an evaluation file."""
    return [
        tiny_model(NAME),
        tiny_model(NAME, files={EVALUATION_FILE: json.dumps(EVALUATION).encode()}),
        tiny_model(NAME),
    ]


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(Settings(data_dir=tmp_path / "data"))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with migrated(f"sqlite:///{tmp_path / 'imageiq.db'}") as engine:
        yield engine


def nothing_served() -> Serving:
    return Serving(frozenset(), {})


def test_lists_the_store_newest_first_with_active_and_served(
    engine: Engine, repo: ModelRepository, versions: list[RegisteredModel]
) -> None:
    old, middle, new = versions
    serving = Serving(frozenset({old.tag, new.tag}), {NAME: old.version})
    found = model_versions.list_versions(engine, NAME, repo=repo, serving=serving)
    assert found["name"] == NAME
    assert found["active"] == old.version  # none marked active: the one served for the name
    listed = {v["version"]: v for v in found["versions"]}
    assert [v["version"] for v in found["versions"]][:3] == [
        new.version,
        middle.version,
        old.version,
    ]
    assert listed[old.version]["active"] and not listed[new.version]["active"]
    assert listed[new.version]["served"] and not listed[middle.version]["served"]
    first = listed[middle.version]
    assert first["architecture"] == "baseline_cnn" and first["labels_count"] == 2
    assert first["metrics"] == {"val_top1": 0.5}
    assert first["in_store"] is True and first["published"] is False
    # An activation (or a promotion) wins over what a replica serves.
    catalog.activate_model(
        engine,
        name=NAME,
        version=middle.version,
        metrics={},
        actor="t",
        request_id=None,
        previous=None,
    )
    found = model_versions.list_versions(engine, NAME, repo=repo, serving=serving)
    assert found["active"] == middle.version
    assert [v["version"] for v in found["versions"] if v["active"]] == [middle.version]


def test_a_version_only_in_the_repository_is_listed_then_imported(
    engine: Engine, repo: ModelRepository, versions: list[RegisteredModel], tmp_path: Path
) -> None:
    published = tiny_model(NAME)
    repo.publish(published.tag)
    repo.publish(versions[0].tag)
    bentoml.models.delete(published.tag)  # trained elsewhere: only in the repository now
    (repo.root / NAME / "partial.partial").write_bytes(b"")  # a copy under way: not a version
    found = model_versions.list_versions(engine, NAME, repo=repo, serving=nothing_served())
    listed = {v["version"]: v for v in found["versions"]}
    assert listed[published.version] | {"created_at": None} == {
        "version": published.version,
        "created_at": None,
        "architecture": None,
        "labels_count": None,
        "metrics": {},
        "active": False,
        "served": False,
        "in_store": False,
        "published": True,
    }
    assert listed[versions[0].version]["published"] is True
    assert found["active"] is None
    detail = model_versions.version_detail(
        engine, NAME, published.version, repo=repo, serving=nothing_served()
    )
    assert detail["in_store"] is True and detail["labels"] == ["a", "b"]
    assert detail["training_config"] == {"epochs": 1}


def test_detail_with_and_without_an_evaluation(
    engine: Engine, repo: ModelRepository, versions: list[RegisteredModel]
) -> None:
    old, middle, _ = versions
    detail = model_versions.version_detail(
        engine, NAME, middle.version, repo=repo, serving=nothing_served()
    )
    assert detail["evaluation"] == EVALUATION
    assert detail["labels"] == ["a", "b"] and detail["heads"] == {}
    assert detail["preprocessing"]["crop_size"] == 16
    assert detail["version"] == middle.version and detail["published"] is False
    assert (
        model_versions.version_detail(
            engine, NAME, old.version, repo=repo, serving=nothing_served()
        )["evaluation"]
        is None
    )


def test_unknown_names_and_versions_are_not_found(
    engine: Engine, repo: ModelRepository, versions: list[RegisteredModel]
) -> None:
    with pytest.raises(errors.ModelNotFound):
        model_versions.list_versions(engine, "no-such-model", repo=repo, serving=nothing_served())
    with pytest.raises(errors.ModelNotFound):
        model_versions.version_detail(
            engine, NAME, "nosuchversion", repo=repo, serving=nothing_served()
        )
