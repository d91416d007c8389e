"""The model repository: a version published by one model store is imported by another that
lacks it, from the data directory or from an S3 bucket (moto); what neither has is a clear
``model_not_found``; a store that cannot be reached is ``storage_unavailable``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bentoml
import pytest
import torch

from imageiq.architectures import build_model
from imageiq.errors import ModelNotFound, StorageUnavailable
from imageiq.model_repo import ModelRepository
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import ModelCard, get_model, load_model, register_model
from imageiq.settings import Settings
from tests.backends import MotoServer


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer(bucket="imageiq-models")
    server.start()
    yield server
    server.stop()


def _registered() -> str:
    card = ModelCard(
        architecture="mobilenet_v3_small",
        labels=["cat", "dog"],
        preprocessing=PreprocessConfig(resize_size=32, crop_size=32),
    )
    torch.manual_seed(0)
    return register_model(
        build_model(arch="mobilenet_v3_small", num_classes=2), card, name="repo-test"
    ).tag


def _round_trip(repo: ModelRepository, tag: str) -> None:
    _, before = load_model(tag)
    where = repo.publish(tag)
    assert where == repo.where(tag)
    bentoml.models.delete(tag)
    with pytest.raises(ModelNotFound):
        get_model(tag)
    assert repo.ensure_local(tag).tag == tag  # imported
    _, after = load_model(tag)
    for (k, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert repo.ensure_local(tag).tag == tag  # already there: nothing to fetch


def test_publish_and_import_through_the_data_directory(tmp_path: Path) -> None:
    repo = ModelRepository(Settings(data_dir=tmp_path))
    tag = _registered()
    _round_trip(repo, tag)
    assert (tmp_path / "models" / "repo-test" / f"{tag.split(':')[1]}.bentomodel").is_file()
    with pytest.raises(ModelNotFound) as missing:
        repo.ensure_local("repo-test:nosuchversion")
    assert "imageiq models publish" in missing.value.message
    for bad in ("../../etc:passwd", "no-such-model", "no-such-model:latest", "a:b/../c"):
        with pytest.raises(ModelNotFound):
            repo.ensure_local(bad)


def test_publish_and_import_through_s3(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in MotoServer.env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(data_dir=tmp_path, s3_bucket=moto.bucket, s3_endpoint_url=moto.url)
    repo = ModelRepository(settings)
    tag = _registered()
    _round_trip(repo, tag)
    assert f"models/repo-test/{tag.split(':')[1]}.bentomodel" in moto.object_keys()
    with pytest.raises(ModelNotFound):
        repo.ensure_local("repo-test:nosuchversion")
    down = ModelRepository(
        Settings(data_dir=tmp_path, s3_bucket=moto.bucket, s3_endpoint_url="http://127.0.0.1:9")
    )
    with pytest.raises(StorageUnavailable):
        down.publish(tag)
