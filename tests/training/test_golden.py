"""Golden sets and the retrain lock, on SQLite and a private PostgreSQL: freezing takes
labelled images with their labels then, per class and seeded, never an unlabelled one;
forgetting an image takes it out of its sets; two retrains of a model never run at once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from imageiq import catalog
from imageiq.db.schema import GoldenImage, Image
from imageiq.errors import DatasetError
from imageiq.settings import Settings
from tests.imageiq.conftest import engine, postgres_engine  # noqa: F401
from training.golden import describe, freeze, golden_ids
from training.retrain import RetrainLocked, retrain_lock


def _settings(engine: Engine, tmp_path: Path) -> Settings:  # noqa: F811
    return Settings(
        data_dir=tmp_path, database_url=engine.url.render_as_string(hide_password=False)
    )


def _image(engine: Engine, n: int) -> str:  # noqa: F811
    digest = hashlib.sha256(f"golden {n}".encode()).hexdigest()
    catalog.insert_ignore(
        engine,
        Image,
        [
            {
                "sha256": digest,
                "storage_key": digest,
                "content_type": "image/png",
                "bytes": 1,
                "width": 1,
                "height": 1,
            }
        ],
    )
    return digest


def _label(engine: Engine, image: str, label: str | None, source: str = "user") -> None:  # noqa: F811
    catalog.add_label(engine, image, label=label, attributes={}, source=source, created_by="t")


def test_freeze_pins_labelled_images_per_class_with_their_labels(
    engine: Engine,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = _settings(engine, tmp_path)
    cats = [_image(engine, n) for n in range(5)]
    dogs = [_image(engine, n) for n in range(5, 8)]
    unlabelled = _image(engine, 99)
    pseudo = _image(engine, 98)
    for image in cats:
        _label(engine, image, "cat")
    for image in dogs:
        _label(engine, image, "cat")
        _label(engine, image, "dog", source="admin")  # the admin's correction counts
    _label(engine, pseudo, "fox", source="model")  # a pseudo-label is no answer
    _label(engine, unlabelled, None)  # attributes only: no class
    counts = freeze(
        settings, name="default", per_class=2, seed=0, ids_file=None, replace=False, actor="t"
    )
    assert counts == {"cat": 2, "dog": 2}
    first = set(golden_ids(engine, "default"))
    assert unlabelled not in first and pseudo not in first
    # the same seed picks the same images
    freeze(settings, name="b", per_class=2, seed=0, ids_file=None, replace=False, actor="t")
    assert set(golden_ids(engine, "b")) == first
    # freezing again fills classes up to per_class, no more; the labels are the ones frozen
    again = freeze(
        settings, name="default", per_class=3, seed=1, ids_file=None, replace=False, actor="t"
    )
    assert again == {"cat": 3, "dog": 3} and first <= set(golden_ids(engine, "default"))
    _label(engine, dogs[0], "wolf", source="admin")  # a later label does not move the set
    assert describe(settings, name="default") == {"cat": 3, "dog": 3}
    # explicit ids: every one must have an answer
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{cats[0]}\n# a comment\n{unlabelled}\n")
    with pytest.raises(DatasetError, match="no human label"):
        freeze(settings, name="c", per_class=1, seed=0, ids_file=str(ids), replace=False, actor="t")
    ids.write_text(f"{cats[0]}\n{dogs[1]}\n")
    assert freeze(
        settings, name="c", per_class=1, seed=0, ids_file=str(ids), replace=True, actor="t"
    ) == {"cat": 1, "dog": 1}
    # forgetting an image takes it out of every set
    catalog.delete_image_rows(engine, cats[0])
    with engine.connect() as connection:
        left = connection.scalars(
            select(GoldenImage.image_sha256).where(GoldenImage.image_sha256 == cats[0])
        ).all()
    assert left == []


def test_two_retrains_of_a_model_never_overlap(engine: Engine, tmp_path: Path) -> None:  # noqa: F811
    settings = _settings(engine, tmp_path)
    with retrain_lock(engine, settings, "m"):
        with pytest.raises(RetrainLocked) as busy, retrain_lock(engine, settings, "m"):
            pass
        assert busy.value.status == 409 and busy.value.code == "retrain_running"
        with retrain_lock(engine, settings, "other"):  # another model name is free
            pass
    with retrain_lock(engine, settings, "m"):  # released
        pass
