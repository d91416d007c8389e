"""The catalog (stored images, predictions, labels, models, stats) against both databases:
a migrated SQLite file and a private PostgreSQL cluster whose sessions run in a time zone far
from UTC (UTC+14), so that nothing passes by the accident of a UTC server."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from imageiq import catalog, errors
from imageiq.catalog import ImageFilter
from imageiq.db.schema import AuditEntry, Image, Label, Model, Prediction, Tombstone
from tests.imageiq.conftest import TABLES

T0 = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc)
HOSTILE = [
    "' OR 1=1 --",
    "'; DROP TABLE images; --",
    '" OR ""="',
    "cat' OR 'a'='a",
    "%",
    "_",
    "*",
    "../../etc/passwd",
    "..\\..\\windows\\system32",
    "/etc/passwd",
    "file:///etc/passwd",
    "é" * 5000,
    "🐈‍⬛" * 2000,
    "\u202e\u200b\ufeff",
    "cat\n",
    " cat",
    "CAT",
    "$1",
    "?",
    ":label",
    "%(label)s",
]


def sha(n: int) -> str:
    return hashlib.sha256(f"image {n}".encode()).hexdigest()


def add_image(engine: Engine, n: int, *, at: datetime, uploaded_by: str | None = None) -> str:
    digest = sha(n)
    row = {
        "sha256": digest,
        "storage_key": f"{digest[:2]}/{digest}",
        "content_type": "image/png",
        "bytes": 100 + n,
        "width": 10 + n,
        "height": 20 + n,
        "uploaded_by": uploaded_by,
        "created_at": at,
    }
    catalog.insert_ignore(engine, Image, [row])
    return digest


def add_prediction(
    engine: Engine,
    image: str,
    *,
    label: str,
    score: float,
    at: datetime,
    model: tuple[str, str] = ("digits", "v1"),
    cached: bool = False,
) -> uuid.UUID:
    pid = uuid.uuid4()
    row = {
        "id": pid,
        "image_sha256": image,
        "model_name": model[0],
        "model_version": model[1],
        "label": label,
        "score": score,
        "top_k": [{"label": label, "score": score}],
        "attributes": {},
        "latency_ms": 3.5,
        "cached": cached,
        "api_key_id": None,
        "request_id": None,
        "created_at": at,
    }
    catalog.insert_ignore(engine, Prediction, [row])
    return pid


def add_label_row(
    engine: Engine, image: str, *, label: str | None, at: datetime, source: str = "user"
) -> None:
    row = {
        "image_sha256": image,
        "label": label,
        "attributes": {},
        "source": source,
        "created_by": None,
        "created_at": at,
    }
    catalog.insert_ignore(engine, Label, [row])


@pytest.fixture
def gallery(engine: Engine) -> dict[str, str]:
    """Three stored images a day apart, with predictions and labels; one prediction of an
    image that was never stored."""
    cat = add_image(engine, 1, at=T0 - timedelta(days=2), uploaded_by="k1")
    dog = add_image(engine, 2, at=T0 - timedelta(days=1), uploaded_by="k2")
    bird = add_image(engine, 3, at=T0)
    add_prediction(engine, cat, label="cat", score=0.95, at=T0 - timedelta(days=2))
    add_prediction(
        engine,
        cat,
        label="dog",
        score=0.40,
        at=T0 - timedelta(days=2, minutes=-5),
        model=("digits", "v2"),
    )
    add_prediction(engine, dog, label="dog", score=0.70, at=T0 - timedelta(days=1))
    add_prediction(
        engine, bird, label="bird", score=0.20, at=T0, model=("species", "1"), cached=True
    )
    add_prediction(engine, sha(99), label="cat", score=0.99, at=T0)  # not stored
    add_label_row(engine, cat, label="cat", at=T0 - timedelta(days=2))
    add_label_row(engine, dog, label="wolf", at=T0 - timedelta(hours=20), source="admin")
    add_label_row(engine, dog, label="dog", at=T0 - timedelta(hours=10), source="admin")
    return {"cat": cat, "dog": dog, "bird": bird}


def ids(engine: Engine, where: ImageFilter, *, limit: int = 50, offset: int = 0) -> list[str]:
    found, total = catalog.list_images(engine, where, limit=limit, offset=offset)
    assert total >= len(found)
    return [image["id"] for image in found]


# --- list_images -------------------------------------------------------------------------------
def test_list_images_newest_first_with_latest_prediction_and_label(
    engine: Engine, gallery: dict[str, str]
) -> None:
    found, total = catalog.list_images(engine, ImageFilter(), limit=10, offset=0)
    assert total == 3
    assert [i["id"] for i in found] == [gallery["bird"], gallery["dog"], gallery["cat"]]
    cat = found[2]
    assert (cat["content_type"], cat["bytes"], cat["width"], cat["height"]) == (
        "image/png",
        101,
        11,
        21,
    )
    assert cat["uploaded_by"] == "k1"
    assert cat["created_at"] == T0 - timedelta(days=2)
    assert cat["created_at"].tzinfo is not None
    # cat's latest prediction is the v2 one, five minutes after the first
    assert cat["prediction"]["model"] == {"name": "digits", "version": "v2"}
    assert (cat["prediction"]["label"], cat["prediction"]["score"]) == ("dog", 0.40)
    assert cat["label"]["label"] == "cat"
    assert found[1]["label"]["label"] == "dog"  # the later of wolf and dog
    assert found[1]["label"]["source"] == "admin"
    assert found[0]["label"] is None
    assert found[0]["prediction"]["cached"] is True


def test_list_images_pages(engine: Engine) -> None:
    made = [add_image(engine, n, at=T0 + timedelta(minutes=n)) for n in range(7)]
    newest_first = list(reversed(made))
    pages = []
    for offset in range(0, 9, 3):
        found, total = catalog.list_images(engine, ImageFilter(), limit=3, offset=offset)
        assert total == 7
        pages.append([i["id"] for i in found])
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
    found, total = catalog.list_images(engine, ImageFilter(), limit=3, offset=100)
    assert (found, total) == ([], 7)
    assert ids(engine, ImageFilter(), limit=0) == []


def test_list_images_pages_filtered_results_with_their_own_total(
    engine: Engine, gallery: dict[str, str]
) -> None:
    where = ImageFilter(predicted_label="dog")
    found, total = catalog.list_images(engine, where, limit=1, offset=0)
    assert total == 2 and [i["id"] for i in found] == [gallery["dog"]]
    found, total = catalog.list_images(engine, where, limit=1, offset=1)
    assert total == 2 and [i["id"] for i in found] == [gallery["cat"]]


def test_filter_by_given_label(engine: Engine, gallery: dict[str, str]) -> None:
    assert ids(engine, ImageFilter(label="cat")) == [gallery["cat"]]
    # Any label the image was given, not only the latest.
    assert ids(engine, ImageFilter(label="wolf")) == [gallery["dog"]]
    assert ids(engine, ImageFilter(label="dog")) == [gallery["dog"]]
    assert ids(engine, ImageFilter(label="bird")) == []


def test_filter_by_predicted_label(engine: Engine, gallery: dict[str, str]) -> None:
    assert ids(engine, ImageFilter(predicted_label="dog")) == [gallery["dog"], gallery["cat"]]
    assert ids(engine, ImageFilter(predicted_label="bird")) == [gallery["bird"]]
    assert ids(engine, ImageFilter(predicted_label="cat")) == [gallery["cat"]]  # not sha(99)
    assert ids(engine, ImageFilter(predicted_label="horse")) == []


def test_filter_by_confidence(engine: Engine, gallery: dict[str, str]) -> None:
    assert ids(engine, ImageFilter(min_confidence=0.9)) == [gallery["cat"]]
    assert ids(engine, ImageFilter(max_confidence=0.3)) == [gallery["bird"]]
    assert ids(engine, ImageFilter(min_confidence=0.5, max_confidence=0.8)) == [gallery["dog"]]
    # Both ends are inclusive.
    assert ids(engine, ImageFilter(min_confidence=0.7, max_confidence=0.7)) == [gallery["dog"]]
    assert ids(engine, ImageFilter(min_confidence=0.96)) == []
    assert ids(engine, ImageFilter(min_confidence=0.8, max_confidence=0.5)) == []


def test_prediction_conditions_hold_for_one_and_the_same_prediction(
    engine: Engine, gallery: dict[str, str]
) -> None:
    # cat was predicted "cat" at 0.95 (v1) and "dog" at 0.40 (v2): never "dog" at 0.9+.
    assert ids(engine, ImageFilter(predicted_label="dog", min_confidence=0.9)) == []
    assert ids(engine, ImageFilter(predicted_label="dog", max_confidence=0.5)) == [gallery["cat"]]
    assert ids(engine, ImageFilter(predicted_label="cat", model_version="v2")) == []
    assert ids(engine, ImageFilter(predicted_label="dog", model_version="v2")) == [gallery["cat"]]


def test_filter_by_model(engine: Engine, gallery: dict[str, str]) -> None:
    assert ids(engine, ImageFilter(model_name="digits")) == [gallery["dog"], gallery["cat"]]
    assert ids(engine, ImageFilter(model_name="species")) == [gallery["bird"]]
    assert ids(engine, ImageFilter(model_version="v2")) == [gallery["cat"]]
    assert ids(engine, ImageFilter(model_name="digits", model_version="v1")) == [
        gallery["dog"],
        gallery["cat"],
    ]
    assert ids(engine, ImageFilter(model_name="species", model_version="v1")) == []


def test_filter_by_creation_time(engine: Engine, gallery: dict[str, str]) -> None:
    assert ids(engine, ImageFilter(created_after=T0 - timedelta(days=1))) == [
        gallery["bird"],
        gallery["dog"],
    ]  # inclusive
    assert ids(engine, ImageFilter(created_before=T0 - timedelta(days=1))) == [
        gallery["cat"]
    ]  # exclusive
    window = ImageFilter(created_after=T0 - timedelta(days=1, hours=1), created_before=T0)
    assert ids(engine, window) == [gallery["dog"]]
    # The same instants written in another zone, and naive (taken as UTC).
    tokyo = timezone(timedelta(hours=9))
    assert ids(engine, ImageFilter(created_after=T0.astimezone(tokyo))) == [gallery["bird"]]
    assert ids(engine, ImageFilter(created_after=T0.replace(tzinfo=None))) == [gallery["bird"]]
    assert ids(engine, ImageFilter(created_after=T0 + timedelta(seconds=1))) == []


def test_filters_combine(engine: Engine, gallery: dict[str, str]) -> None:
    where = ImageFilter(
        label="dog",
        predicted_label="dog",
        min_confidence=0.5,
        model_name="digits",
        model_version="v1",
        created_after=T0 - timedelta(days=3),
        created_before=T0,
    )
    assert ids(engine, where) == [gallery["dog"]]
    assert ids(engine, ImageFilter(label="cat", predicted_label="bird")) == []


@pytest.mark.parametrize("field", ["label", "predicted_label", "model_name", "model_version"])
def test_hostile_strings_in_filters_find_nothing(
    engine: Engine, gallery: dict[str, str], field: str
) -> None:
    for hostile in HOSTILE:
        found, total = catalog.list_images(
            engine, ImageFilter(**{field: hostile}), limit=10, offset=0
        )
        assert (found, total) == ([], 0), hostile
    assert ids(engine, ImageFilter()) == [gallery["bird"], gallery["dog"], gallery["cat"]]


def test_hostile_ids_are_not_found(engine: Engine, gallery: dict[str, str]) -> None:
    for hostile in HOSTILE:
        with pytest.raises(errors.ImageNotFound):
            catalog.get_image(engine, hostile)
        with pytest.raises(errors.ImageNotFound):
            catalog.add_label(
                engine, hostile, label="cat", attributes={}, source="user", created_by=None
            )
        assert catalog.find_image(engine, hostile) is None
        assert catalog.delete_image_rows(engine, hostile) == {
            "labels": 0,
            "predictions": 0,
            "images": 0,
        }
    assert len(ids(engine, ImageFilter())) == 3
    with engine.connect() as connection:  # an id that is no hash is no image to forget
        assert connection.scalar(select(Tombstone.sha256)) is None


def test_filter_by_label_source(engine: Engine, gallery: dict[str, str]) -> None:
    assert ids(engine, ImageFilter(label_source="user")) == [gallery["cat"]]
    assert ids(engine, ImageFilter(label_source="admin")) == [gallery["dog"]]
    assert ids(engine, ImageFilter(label_source="model")) == []
    # With a label: that label from that source (one and the same label row).
    assert ids(engine, ImageFilter(label="dog", label_source="admin")) == [gallery["dog"]]
    assert ids(engine, ImageFilter(label="dog", label_source="user")) == []
    assert ids(engine, ImageFilter(label="cat", label_source="admin")) == []
    for hostile in HOSTILE:
        assert ids(engine, ImageFilter(label_source=hostile)) == [], hostile


def _label(
    engine: Engine, image: str, attributes: dict[str, str], *, source: str, at: datetime
) -> None:
    row = {
        "image_sha256": image,
        "label": None,
        "attributes": attributes,
        "source": source,
        "created_by": None,
        "created_at": at,
    }
    catalog.insert_ignore(engine, Label, [row])


def test_filter_by_effective_attribute_value(engine: Engine) -> None:
    """Per head, training's rule: admin beats user beats model whatever the times; within a
    source the latest wins; a row without the head (or with it empty) does not count."""
    a, b, c, d = (add_image(engine, n, at=T0 - timedelta(minutes=n)) for n in range(1, 5))
    # a: a user said shiny=yes, later another user no, then a model yes: the later user wins.
    _label(engine, a, {"shiny": "yes"}, source="user", at=T0)
    _label(engine, a, {"shiny": "no"}, source="user", at=T0 + timedelta(hours=1))
    _label(engine, a, {"shiny": "yes"}, source="model", at=T0 + timedelta(hours=2))
    # b: an admin's yes beats a later user's no; a later admin row of another head, and an
    # empty value, leave shiny alone.
    _label(engine, b, {"shiny": "yes", "shadow": "no"}, source="admin", at=T0)
    _label(engine, b, {"shiny": "no"}, source="user", at=T0 + timedelta(hours=1))
    _label(engine, b, {"shadow": "yes", "shiny": ""}, source="admin", at=T0 + timedelta(hours=2))
    # c: only a model's pseudo-label. d: a class label without attributes.
    _label(engine, c, {"shiny": "yes"}, source="model", at=T0)
    add_label_row(engine, d, label="cat", at=T0)
    assert ids(engine, ImageFilter(attribute=("shiny", "yes"))) == [b, c]
    assert ids(engine, ImageFilter(attribute=("shiny", "no"))) == [a]
    assert ids(engine, ImageFilter(attribute=("shadow", "yes"))) == [b]
    assert ids(engine, ImageFilter(attribute=("shadow", "no"))) == []
    assert ids(engine, ImageFilter(attribute=("colour", "red"))) == []
    assert ids(engine, ImageFilter(attribute=("shiny", "YES"))) == []  # values are exact
    # It combines with the other filters.
    assert ids(engine, ImageFilter(attribute=("shiny", "yes"), label_source="admin")) == [b]
    assert ids(engine, ImageFilter(attribute=("shiny", "yes"), label_source="user")) == [b]
    assert ids(engine, ImageFilter(attribute=("shiny", "yes"), label="cat")) == []


def test_hostile_attribute_filters_find_nothing_or_are_refused(engine: Engine) -> None:
    image = add_image(engine, 1, at=T0)
    _label(engine, image, {"shiny": "yes"}, source="user", at=T0)
    for hostile in HOSTILE:
        assert ids(engine, ImageFilter(attribute=("shiny", hostile))) == [], hostile
        try:
            found = ids(engine, ImageFilter(attribute=(hostile, "yes")))
        except errors.InvalidParameter as e:  # a quote, a backslash, a control character
            assert e.details == {"field": "attribute"}
            assert any(c in hostile for c in '"\\\n') or len(hostile) > 64, hostile
        else:
            assert found == [], hostile
    assert ids(engine, ImageFilter(attribute=("shiny", "yes"))) == [image]


def test_extreme_numbers_and_times_in_filters(engine: Engine, gallery: dict[str, str]) -> None:
    everything = [gallery["bird"], gallery["dog"], gallery["cat"]]
    assert ids(engine, ImageFilter(min_confidence=float("-inf"))) == everything
    assert ids(engine, ImageFilter(min_confidence=float("inf"))) == []
    assert ids(engine, ImageFilter(max_confidence=-1e308)) == []
    far_past = datetime(1, 1, 2, tzinfo=timezone.utc)
    far_future = datetime(9999, 12, 30, tzinfo=timezone.utc)
    assert ids(engine, ImageFilter(created_after=far_past, created_before=far_future)) == everything
    assert ids(engine, ImageFilter(created_after=far_future)) == []


# --- one image ---------------------------------------------------------------------------------
def test_get_image(engine: Engine, gallery: dict[str, str]) -> None:
    cat = catalog.get_image(engine, gallery["cat"])
    assert cat["id"] == gallery["cat"]
    assert [p["model"]["version"] for p in cat["predictions"]] == ["v2", "v1"]  # newest first
    assert cat["prediction"] == cat["predictions"][0]
    assert [label["label"] for label in cat["labels"]] == ["cat"]
    assert cat["label"] == cat["labels"][0]  # the latest label, as in the list
    dog = catalog.get_image(engine, gallery["dog"])
    assert [label["label"] for label in dog["labels"]] == ["dog", "wolf"]
    assert dog["label"]["label"] == "dog"
    assert catalog.get_image(engine, gallery["bird"])["label"] is None
    with pytest.raises(errors.ImageNotFound) as missing:
        catalog.get_image(engine, sha(99))  # predicted, never stored
    assert missing.value.status == 404


def test_add_label(engine: Engine, gallery: dict[str, str]) -> None:
    out = catalog.add_label(
        engine,
        gallery["bird"],
        label="sparrow",
        attributes={"shiny": "yes"},
        source="user",
        created_by="k1",
    )
    assert out["id"] is not None
    assert (out["label"], out["attributes"], out["source"], out["created_by"]) == (
        "sparrow",
        {"shiny": "yes"},
        "user",
        "k1",
    )
    assert out["created_at"] is not None
    catalog.add_label(
        engine, gallery["bird"], label=None, attributes={}, source="model", created_by=None
    )
    labels = catalog.get_image(engine, gallery["bird"])["labels"]
    assert {label["label"] for label in labels} == {"sparrow", None}
    assert ids(engine, ImageFilter(label="sparrow")) == [gallery["bird"]]
    assert _audit(engine) == [  # the admin-scope label (source model) is audited, not the user's
        (
            None,
            "label.add",
            gallery["bird"],
            {"label_id": labels[0]["id"], "label": None, "attributes": {}, "source": "model"},
            None,
        )
    ]


def test_an_admin_label_and_its_audit_entry_carry_both_request_ids(
    engine: Engine, gallery: dict[str, str]
) -> None:
    out = catalog.add_label(
        engine,
        gallery["cat"],
        label="lynx",
        attributes={"shiny": "no"},
        source="admin",
        created_by="k9",
        request_id="srv-1",
        client_request_id="cli-1",
    )
    with engine.connect() as connection:
        row = connection.execute(select(Label).where(Label.id == out["id"])).one()
        entry = connection.execute(select(AuditEntry)).one()
    assert (row.request_id, row.client_request_id) == ("srv-1", "cli-1")
    assert (entry.actor, entry.action, entry.target) == ("k9", "label.add", gallery["cat"])
    assert entry.detail == {
        "label_id": out["id"],
        "label": "lynx",
        "attributes": {"shiny": "no"},
        "source": "admin",
    }
    assert (entry.request_id, entry.client_request_id) == ("srv-1", "cli-1")
    # The newest label is the image's label, in the list and in the detail alike.
    assert catalog.get_image(engine, gallery["cat"])["label"]["label"] == "lynx"
    found, _ = catalog.list_images(engine, ImageFilter(label="lynx"), limit=5, offset=0)
    assert found[0]["label"]["label"] == "lynx"


def test_add_label_to_an_image_not_stored(engine: Engine, gallery: dict[str, str]) -> None:
    with pytest.raises(errors.ImageNotFound, match="store=true"):
        catalog.add_label(
            engine, sha(99), label="cat", attributes={}, source="user", created_by=None
        )
    with engine.connect() as connection:
        assert connection.scalar(select(Label.id).where(Label.image_sha256 == sha(99))) is None


def test_delete_image_rows(engine: Engine, gallery: dict[str, str]) -> None:
    assert catalog.delete_image_rows(engine, gallery["dog"]) == {
        "labels": 2,
        "predictions": 1,
        "images": 1,
    }
    with pytest.raises(errors.ImageNotFound):
        catalog.get_image(engine, gallery["dog"])
    assert catalog.find_image(engine, gallery["dog"]) is None
    with engine.connect() as connection:
        assert (
            connection.scalar(select(Label.id).where(Label.image_sha256 == gallery["dog"])) is None
        )
        assert (
            connection.scalar(
                select(Prediction.id).where(Prediction.image_sha256 == gallery["dog"])
            )
            is None
        )
    assert ids(engine, ImageFilter()) == [gallery["bird"], gallery["cat"]]
    assert catalog.get_image(engine, gallery["cat"])["labels"]  # others untouched
    # The predictions of an image never stored go too (they are rows of that image).
    assert catalog.delete_image_rows(engine, sha(99)) == {
        "labels": 0,
        "predictions": 1,
        "images": 0,
    }
    assert catalog.delete_image_rows(engine, gallery["dog"]) == {
        "labels": 0,
        "predictions": 0,
        "images": 0,
    }
    # Each deletion that removed something is in the audit log; the last one removed nothing.
    assert [(a, t, d["images"]) for _, a, t, d, _ in _audit(engine)] == [
        ("image.delete", gallery["dog"], 1),
        ("image.delete", sha(99), 0),
    ]


def test_a_deletion_and_its_audit_entry_commit_together(
    engine: Engine, gallery: dict[str, str]
) -> None:
    deleted = catalog.delete_image_rows(
        engine,
        gallery["cat"],
        removed={"object": 1, "cache_entries": 3},
        actor="k1",
        request_id="srv-7",
        client_request_id="cli-7",
    )
    assert deleted == {"object": 1, "cache_entries": 3, "labels": 1, "predictions": 2, "images": 1}
    with engine.connect() as connection:
        entry = connection.execute(select(AuditEntry)).one()
    assert (entry.actor, entry.action, entry.target, entry.detail) == (
        "k1",
        "image.delete",
        gallery["cat"],
        deleted,
    )
    assert (entry.request_id, entry.client_request_id) == ("srv-7", "cli-7")
    # Only the object was left (a retry after the rows went): still an entry of its own.
    again = catalog.delete_image_rows(engine, gallery["cat"], removed={"object": 1}, actor="k1")
    assert again == {"object": 1, "labels": 0, "predictions": 0, "images": 0}
    assert len(_audit(engine)) == 2


def test_a_deletion_whose_audit_entry_fails_deletes_nothing(
    engine: Engine, gallery: dict[str, str]
) -> None:
    with _audit_refused(engine), pytest.raises(Exception, match="audit refused"):
        catalog.delete_image_rows(engine, gallery["cat"], actor="k1")
    assert catalog.find_image(engine, gallery["cat"]) is not None  # rolled back, all of it
    assert len(catalog.get_image(engine, gallery["cat"])["labels"]) == 1
    assert len(catalog.get_image(engine, gallery["cat"])["predictions"]) == 2
    assert _audit(engine) == []
    with engine.connect() as connection:  # nor is it forgotten elsewhere
        assert connection.scalar(select(Tombstone.sha256)) is None


@contextmanager
def _audit_refused(engine: Engine) -> Iterator[None]:
    """A trigger that refuses every new audit entry, while the block runs."""
    if engine.dialect.name == "postgresql":
        create = [
            "CREATE FUNCTION refuse_audit() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'audit refused'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
        ]
        drop = ["DROP TRIGGER no_audit ON audit_log", "DROP FUNCTION refuse_audit()"]
    else:
        create = [
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
        ]
        drop = ["DROP TRIGGER no_audit"]
    with engine.begin() as connection:
        for statement in create:
            connection.execute(text(statement))
    try:
        yield
    finally:
        with engine.begin() as connection:
            for statement in drop:
                connection.execute(text(statement))


# --- stats -------------------------------------------------------------------------------------
def test_stats(engine: Engine, gallery: dict[str, str]) -> None:
    out = catalog.stats(engine)
    assert out["images"] == {"stored": 3}
    predictions = out["predictions"]
    assert (predictions["total"], predictions["cached"]) == (5, 1)
    assert predictions["cache_hit_ratio"] == 0.2
    assert predictions["per_label"] == {"cat": 2, "dog": 2, "bird": 1}
    assert list(predictions["per_label"]) == ["cat", "dog", "bird"]  # most first, then by name
    assert predictions["per_model"] == {"digits:v1": 3, "digits:v2": 1, "species:1": 1}
    assert predictions["per_day"] == {"2024-03-08": 2, "2024-03-09": 1, "2024-03-10": 2}
    labels = out["labels"]
    assert labels["total"] == 3
    assert labels["per_label"] == {"cat": 1, "dog": 1, "wolf": 1}
    assert labels["per_source"] == {"admin": 2, "user": 1}
    histogram = predictions["confidence_histogram"]
    assert [(b["lower"], b["upper"]) for b in histogram] == [
        (i / 10, (i + 1) / 10) for i in range(10)
    ]
    # 0.20 (bird), 0.40 (cat by v2), 0.70 (dog), 0.95 (cat) and 0.99 (the unstored image)
    assert [b["count"] for b in histogram] == [0, 0, 1, 0, 1, 0, 0, 1, 0, 2]
    # v1's cat and dog were labelled after (or as) they were predicted, and it was right;
    # v2 predicted cat after its label; species' only prediction was a cache hit.
    assert out["feedback"] == {
        "per_model": {
            "digits:v1": {"labelled": 2, "agreed": 2, "agreement": 1.0},
            "digits:v2": {"labelled": 0, "agreed": 0, "agreement": None},
            "species:1": {"labelled": 0, "agreed": 0, "agreement": None},
        }
    }


def test_stats_counts_days_in_utc(engine: Engine) -> None:
    image = add_image(engine, 1, at=T0)
    late = datetime(2024, 1, 1, 23, 30, tzinfo=timezone.utc)
    # The same instant written in UTC+2: still the 1st in UTC.
    add_prediction(
        engine, image, label="a", score=0.5, at=late.astimezone(timezone(timedelta(hours=2)))
    )
    add_prediction(engine, image, label="a", score=0.5, at=late + timedelta(hours=1))
    add_prediction(engine, image, label="a", score=0.5, at=datetime(2024, 1, 1, 0, 0, 1))  # naive
    out = catalog.stats(engine)
    assert out["predictions"]["per_day"] == {"2024-01-01": 2, "2024-01-02": 1}


def test_stats_window(engine: Engine, gallery: dict[str, str]) -> None:
    out = catalog.stats(engine, since=T0 - timedelta(days=1), until=T0)
    assert out["images"] == {"stored": 1}
    assert out["predictions"]["total"] == 1
    assert out["predictions"]["per_label"] == {"dog": 1}
    assert out["labels"]["per_label"] == {"dog": 1, "wolf": 1}
    assert out["labels"]["per_source"] == {"admin": 2}


def test_stats_of_an_empty_database(engine: Engine) -> None:
    out = catalog.stats(engine)
    assert out["images"] == {"stored": 0}
    assert out["predictions"] == {
        "total": 0,
        "cached": 0,
        "cache_hit_ratio": None,
        "per_label": {},
        "per_model": {},
        "per_day": {},
        "confidence_histogram": [
            {"lower": i / 10, "upper": (i + 1) / 10, "count": 0} for i in range(10)
        ],
    }
    assert out["labels"] == {"total": 0, "per_label": {}, "per_source": {}}
    assert out["feedback"] == {"per_model": {}}


def test_stats_confidence_histogram_bins(engine: Engine) -> None:
    """Equal-width bins, each closed below; 1.0 falls in the last; the window applies."""
    image = add_image(engine, 1, at=T0)
    scores = [0.0, 0.05, 0.1, 0.35, 0.5, 0.95, 0.999, 1.0]
    for score in scores:
        add_prediction(engine, image, label="a", score=score, at=T0)
    add_prediction(engine, image, label="a", score=0.55, at=T0 - timedelta(days=1))
    counts = [b["count"] for b in catalog.stats(engine)["predictions"]["confidence_histogram"]]
    assert counts == [2, 1, 0, 1, 0, 2, 0, 0, 0, 3]
    window = catalog.stats(engine, since=T0)["predictions"]["confidence_histogram"]
    assert [b["count"] for b in window] == [2, 1, 0, 1, 0, 1, 0, 0, 0, 3]


def test_stats_feedback_agreement_per_model_version(engine: Engine) -> None:
    """The latest human label given after the prediction decides; model labels, labels
    given before, and cache hits do not count; the window is the predictions'."""
    images = [add_image(engine, n, at=T0) for n in range(6)]
    later = T0 + timedelta(hours=1)
    for image in images[:4]:
        add_prediction(engine, image, label="cat", score=0.9, at=T0, model=("m", "1"))
        add_prediction(engine, image, label="dog", score=0.6, at=T0, model=("m", "2"))
    add_prediction(engine, images[0], label="cat", score=0.9, at=T0, model=("m", "1"), cached=True)
    add_label_row(engine, images[0], label="cat", at=later)
    add_label_row(engine, images[1], label="dog", at=later)  # a user says dog ...
    add_label_row(engine, images[1], label="cat", at=later + timedelta(hours=1), source="admin")
    add_label_row(engine, images[2], label="dog", at=T0 - timedelta(hours=1))  # before: no
    add_label_row(engine, images[3], label="dog", at=later, source="model")  # a model: no
    add_label_row(engine, images[4], label="cat", at=later)  # never predicted
    per_model = catalog.stats(engine)["feedback"]["per_model"]
    assert per_model == {
        "m:1": {"labelled": 2, "agreed": 2, "agreement": 1.0},
        "m:2": {"labelled": 2, "agreed": 0, "agreement": 0.0},
    }
    assert catalog.stats(engine, since=later)["feedback"] == {"per_model": {}}


# --- models ------------------------------------------------------------------------------------
def _models(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(select(Model.name, Model.version, Model.status)).all()
    return {f"{name}:{version}": status for name, version, status in rows}


def _audit(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                AuditEntry.actor,
                AuditEntry.action,
                AuditEntry.target,
                AuditEntry.detail,
                AuditEntry.request_id,
            ).order_by(AuditEntry.id)
        ).all()
    return [tuple(row) for row in rows]


def test_record_models_adds_new_versions_as_staged_once(engine: Engine) -> None:
    catalog.record_models(engine, [("digits", "v1", {"val_top1": 0.9}), ("digits", "v2", {})])
    catalog.record_models(engine, [("digits", "v1", {"val_top1": 0.1})])  # already known
    catalog.record_models(engine, [])
    assert _models(engine) == {"digits:v1": "staged", "digits:v2": "staged"}
    with engine.connect() as connection:
        metrics = connection.scalar(select(Model.metrics).where(Model.version == "v1"))
    assert metrics == {"val_top1": 0.9}
    assert _audit(engine) == []


def test_activate_model_retires_the_previous_one_and_audits(engine: Engine) -> None:
    catalog.record_models(
        engine, [("digits", "v1", {}), ("digits", "v2", {}), ("species", "1", {})]
    )
    catalog.activate_model(
        engine, name="species", version="1", metrics={}, actor="k0", request_id=None, previous=None
    )
    catalog.activate_model(
        engine,
        name="digits",
        version="v1",
        metrics={},
        actor="k1",
        request_id="r1",
        previous=None,
    )
    assert _models(engine) == {
        "digits:v1": "active",
        "digits:v2": "staged",
        "species:1": "active",
    }
    catalog.activate_model(
        engine,
        name="digits",
        version="v3",  # never recorded: activating records it
        metrics={"val_top1": 0.99},
        actor="k2",
        request_id="r2",
        previous="digits:v1",
    )
    assert _models(engine) == {
        "digits:v1": "retired",
        "digits:v2": "staged",
        "digits:v3": "active",
        "species:1": "active",  # another model name is not touched
    }
    assert _audit(engine) == [
        ("k0", "model.activate", "species:1", {"previous": None}, None),
        ("k1", "model.activate", "digits:v1", {"previous": None}, "r1"),
        ("k2", "model.activate", "digits:v3", {"previous": "digits:v1"}, "r2"),
    ]
    # Activating the active one again changes nothing but the log.
    catalog.activate_model(
        engine,
        name="digits",
        version="v3",
        metrics={},
        actor="k2",
        request_id=None,
        previous="digits:v3",
    )
    assert _models(engine)["digits:v3"] == "active"
    assert list(_models(engine).values()).count("active") == 2
    assert len(_audit(engine)) == 4


def test_audit_writes_a_row(engine: Engine) -> None:
    catalog.audit(engine, actor="k", action="image.delete", target=sha(1), detail={"n": 1})
    assert _audit(engine) == [("k", "image.delete", sha(1), {"n": 1}, None)]


def test_insert_ignore_is_idempotent(engine: Engine) -> None:
    add_image(engine, 1, at=T0)
    add_image(engine, 1, at=T0 + timedelta(days=5))  # a retried write: kept as first written
    pid = add_prediction(engine, sha(1), label="cat", score=0.5, at=T0)
    row = {
        "id": pid,
        "image_sha256": sha(1),
        "model_name": "m",
        "model_version": "1",
        "label": "other",
        "score": 0.1,
        "top_k": [],
        "attributes": {},
        "latency_ms": 1.0,
        "cached": False,
        "api_key_id": None,
        "request_id": None,
        "created_at": T0,
    }
    catalog.insert_ignore(engine, Prediction, [row])  # a replayed record
    catalog.insert_ignore(engine, Prediction, [])
    found, total = catalog.list_images(engine, ImageFilter(), limit=10, offset=0)
    assert total == 1 and found[0]["created_at"] == T0
    assert found[0]["prediction"]["label"] == "cat"
    assert catalog.stats(engine)["predictions"]["total"] == 1


# --- time zones --------------------------------------------------------------------------------
def test_timestamps_come_back_in_utc_from_a_non_utc_postgres(
    postgres_engine: Engine,
) -> None:
    engine = postgres_engine
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    image = add_image(engine, 1, at=T0)
    add_prediction(engine, image, label="cat", score=0.5, at=T0)
    out = catalog.get_image(engine, image)
    assert out["created_at"] == T0  # the same instant, whatever the zone
    assert out["created_at"].utcoffset() == timedelta(0)
    assert out["prediction"]["created_at"].utcoffset() == timedelta(0)
