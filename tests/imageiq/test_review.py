"""The review queue (imageiq/review.py) against both databases: which stored images it holds,
in which order for each strategy, the champion's predictions first, and keyset pages that do
not shift when images are labelled meanwhile."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from imageiq import catalog, review
from imageiq.db.schema import Image, Label, Prediction
from imageiq.review import InvalidCursor, ReviewQuery

T0 = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc)
NAME = "digits"


def image(engine: Engine, n: int, *, at: datetime = T0) -> str:
    digest = hashlib.sha256(f"review {n}".encode()).hexdigest()
    row = {
        "sha256": digest,
        "storage_key": f"images/{digest}",
        "content_type": "image/png",
        "bytes": 100,
        "width": 8,
        "height": 8,
        "uploaded_by": None,
        "created_at": at,
    }
    catalog.insert_ignore(engine, Image, [row])
    return digest


def predict(
    engine: Engine,
    sha: str,
    *scored: tuple[str, float],
    version: str = "v1",
    name: str = NAME,
    at: datetime = T0,
) -> uuid.UUID:
    """A prediction of ``sha`` whose top-k is ``scored``, best first."""
    pid = uuid.uuid4()
    row = {
        "id": pid,
        "image_sha256": sha,
        "model_name": name,
        "model_version": version,
        "label": scored[0][0],
        "score": scored[0][1],
        "top_k": [{"label": label, "score": score} for label, score in scored],
        "attributes": {},
        "latency_ms": 1.0,
        "cached": False,
        "api_key_id": None,
        "request_id": None,
        "created_at": at,
    }
    catalog.insert_ignore(engine, Prediction, [row])
    return pid


def label(engine: Engine, sha: str, value: str | None, *, source: str = "user") -> None:
    row: dict[str, Any] = {"image_sha256": sha, "label": value, "attributes": {}, "source": source}
    catalog.insert_ignore(engine, Label, [row])


def activate(engine: Engine, version: str, *, name: str = NAME) -> None:
    catalog.record_models(engine, [(name, version, {})])
    catalog.activate_model(
        engine, name=name, version=version, metrics={}, actor=None, request_id=None, previous=None
    )


def queue(
    engine: Engine,
    strategy: review.Strategy = "least_confident",
    *,
    predicted_label: str | None = None,
    created_after: datetime | None = None,
) -> list[tuple[str, float]]:
    """The whole queue (one page), as (image id, ranking value)."""
    query = ReviewQuery(
        model_name=NAME,
        strategy=strategy,
        predicted_label=predicted_label,
        created_after=created_after,
    )
    page = review.review_queue(engine, query, limit=100)
    assert page.next_cursor is None and page.total == len(page.items)
    return [(item["id"], item["value"]) for item in page.items]


def test_least_confident_ranks_stored_unlabelled_images_by_top1(engine: Engine) -> None:
    sure, unsure, middle, tied = (image(engine, n) for n in range(4))
    predict(engine, sure, ("1", 0.9))
    predict(engine, unsure, ("7", 0.3))
    predict(engine, middle, ("4", 0.6))
    predict(engine, tied, ("4", 0.6))
    predict(engine, image(engine, 9), ("3", 0.1), name="species")  # another model only
    image(engine, 10)  # never classified
    unstored = hashlib.sha256(b"never stored").hexdigest()
    predict(engine, unstored, ("5", 0.01))
    found = queue(engine)
    ties = sorted([middle, tied])
    assert found == [(unsure, 0.3), (ties[0], 0.6), (ties[1], 0.6), (sure, 0.9)]
    # Ranked on the image's latest prediction, not its worst.
    predict(engine, unsure, ("7", 0.95), at=T0 + timedelta(minutes=1))
    assert [sha for sha, _ in queue(engine)][-1] == unsure


def test_champion_prediction_ranks_the_image(engine: Engine) -> None:
    both, only_old = image(engine, 1), image(engine, 2)
    predict(engine, both, ("1", 0.8), version="v2", at=T0)
    predict(engine, both, ("1", 0.2), version="v1", at=T0 + timedelta(hours=1))  # later
    predict(engine, only_old, ("3", 0.5), version="v1")
    assert queue(engine) == [(both, 0.2), (only_old, 0.5)]  # no champion: the latest
    activate(engine, "v2")
    page = review.review_queue(engine, ReviewQuery(model_name=NAME), limit=10)
    assert page.champion == "v2"
    # The champion's prediction, however old; the latest where it never classified one.
    assert [(i["id"], i["value"], i["prediction"]["model"]["version"]) for i in page.items] == [
        (only_old, 0.5, "v1"),
        (both, 0.8, "v2"),
    ]
    item = page.items[1]
    assert item["prediction"]["label"] == "1" and item["challenger"] is None
    assert item["prediction"]["predictions"] == [{"label": "1", "score": 0.8}]
    assert item["created_at"] == T0 and item["prediction"]["created_at"] == T0


def test_margin_ranks_by_top1_minus_top2(engine: Engine) -> None:
    close, apart, lone_sure, lone_unsure = (image(engine, n) for n in range(4))
    predict(engine, close, ("3", 0.5), ("8", 0.45), ("5", 0.05))
    predict(engine, apart, ("3", 0.4), ("8", 0.1))
    # Stored with top_k=1: the runner-up is at most min(top-1, 1 - top-1).
    predict(engine, lone_sure, ("1", 0.9))
    predict(engine, lone_unsure, ("1", 0.3))
    found = queue(engine, "margin")
    assert [sha for sha, _ in found] == [lone_unsure, close, apart, lone_sure]
    assert [v for _, v in found] == pytest.approx([0.0, 0.05, 0.3, 0.8])
    # Least confident orders the same images differently.
    assert [sha for sha, _ in queue(engine)] == [lone_unsure, apart, close, lone_sure]


def test_human_labels_take_an_image_out_and_model_labels_do_not(engine: Engine) -> None:
    shas = [image(engine, n) for n in range(5)]
    for n, sha in enumerate(shas):
        predict(engine, sha, ("2", 0.1 + n / 10))
    label(engine, shas[0], "2", source="user")
    label(engine, shas[1], "3", source="admin")
    label(engine, shas[2], "2", source="model")  # a pseudo-label: still needs a human
    label(engine, shas[3], None, source="user")  # attributes only: the class is still open
    assert [sha for sha, _ in queue(engine)] == shas[2:]
    assert sorted(sha for sha, _ in queue(engine, "margin")) == sorted(shas[2:])


def test_filters_by_predicted_label_and_time(engine: Engine) -> None:
    old, new, other = (
        image(engine, 1),
        image(engine, 2, at=T0 + timedelta(days=1)),
        image(engine, 3),
    )
    predict(engine, old, ("7", 0.5))
    predict(engine, new, ("7", 0.6))
    predict(engine, other, ("1", 0.4))
    assert [sha for sha, _ in queue(engine, predicted_label="7")] == [old, new]
    assert [sha for sha, _ in queue(engine, created_after=T0 + timedelta(hours=1))] == [new]
    assert queue(engine, predicted_label="' OR 1=1 --") == []
    other_model = review.review_queue(engine, ReviewQuery(model_name="species"), limit=5)
    assert other_model.items == [] and other_model.total == 0 and other_model.next_cursor is None


def test_pages_do_not_shift_when_images_are_labelled(engine: Engine) -> None:
    shas = [image(engine, n) for n in range(7)]
    for n, sha in enumerate(shas):
        predict(engine, sha, ("9", 0.5 if n in (2, 3, 4) else n / 10))  # ties across pages
    expected = [
        sha for _, sha in sorted((0.5 if n in (2, 3, 4) else n / 10, s) for n, s in enumerate(shas))
    ]
    query = ReviewQuery(model_name=NAME)
    first = review.review_queue(engine, query, limit=3)
    assert [i["id"] for i in first.items] == expected[:3] and first.total == 7
    assert first.next_cursor is not None
    # Labelled meanwhile: one already seen, one not yet seen. An offset would now skip one.
    label(engine, expected[0], "9")
    label(engine, expected[4], "9")
    second = review.review_queue(engine, query, limit=3, cursor=first.next_cursor)
    assert [i["id"] for i in second.items] == [expected[3], expected[5], expected[6]]
    assert second.total == 5 and second.next_cursor is None  # nothing after it
    # A new, less confident image appears only from the start of the queue.
    late = image(engine, 50)
    predict(engine, late, ("9", 0.0))
    again = review.review_queue(engine, query, limit=2, cursor=first.next_cursor)
    assert [i["id"] for i in again.items] == [expected[3], expected[5]]
    assert review.review_queue(engine, query, limit=1).items[0]["id"] == late
    # Everything after the cursor labelled: an empty page still counts the queue.
    for sha in (expected[3], expected[5], expected[6]):
        label(engine, sha, "9")
    empty = review.review_queue(engine, query, limit=3, cursor=first.next_cursor)
    assert empty.items == [] and empty.next_cursor is None
    assert empty.total == 3  # expected[1], expected[2] and the late one


def test_margin_and_disagreement_pages_chain(engine: Engine) -> None:
    shas = [image(engine, n) for n in range(5)]
    for n, sha in enumerate(shas):
        predict(engine, sha, ("1", 0.5), ("2", 0.5 - n / 10 - 0.01), version="v1")
        predict(engine, sha, ("3", 0.6 + n / 20), version="v2", at=T0 + timedelta(seconds=1))
    strategies: tuple[review.Strategy, ...] = ("margin", "disagreement")
    for strategy in strategies:
        query = ReviewQuery(model_name=NAME, strategy=strategy)
        seen: list[str] = []
        cursor = None
        while True:
            page = review.review_queue(engine, query, limit=2, cursor=cursor)
            seen += [i["id"] for i in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert sorted(seen) == sorted(shas) and len(seen) == 5, strategy


def test_disagreement_between_champion_and_challenger(engine: Engine) -> None:
    split, agree, alone, two_challengers = (image(engine, n) for n in range(4))
    predict(engine, split, ("cat", 0.7), version="v1")
    predict(engine, split, ("dog", 0.6), version="v2", at=T0 + timedelta(minutes=1))
    predict(engine, agree, ("cat", 0.9), version="v1")
    predict(engine, agree, ("cat", 0.4), version="v2", at=T0 + timedelta(minutes=1))
    predict(engine, alone, ("cat", 0.3), version="v2")
    predict(engine, alone, ("dog", 0.2), version="v2", at=T0 + timedelta(minutes=1))  # same one
    predict(engine, two_challengers, ("dog", 0.8), version="v2")
    predict(engine, two_challengers, ("dog", 0.5), version="v1", at=T0 + timedelta(minutes=1))
    predict(engine, two_challengers, ("cat", 0.9), version="v3", at=T0 + timedelta(minutes=2))
    # No champion: the latest prediction against the latest by another version.
    # v3 (cat 0.9) against v1 (dog 0.5); split: v2 (dog 0.6) against v1 (cat 0.7).
    assert queue(engine, "disagreement") == [(two_challengers, 0.5), (split, 0.6)]
    activate(engine, "v2")
    page = review.review_queue(
        engine, ReviewQuery(model_name=NAME, strategy="disagreement"), limit=10
    )
    # v2 (dog 0.8) against the latest other version, v3 (cat 0.9); split: v2 dog, v1 cat.
    assert [(i["id"], i["value"]) for i in page.items] == [(split, 0.6), (two_challengers, 0.8)]
    pair = page.items[1]
    assert pair["prediction"]["model"]["version"] == "v2" and pair["prediction"]["label"] == "dog"
    assert pair["challenger"]["model"]["version"] == "v3" and pair["challenger"]["label"] == "cat"
    label(engine, split, "dog")
    assert [sha for sha, _ in queue(engine, "disagreement")] == [two_challengers]
    assert queue(engine, "disagreement", predicted_label="cat") == []


def test_bad_cursors_are_refused(engine: Engine) -> None:
    for n in range(3):
        predict(engine, image(engine, n), ("1", n / 10))
    query = ReviewQuery(model_name=NAME)
    cursor = review.review_queue(engine, query, limit=1).next_cursor
    assert cursor is not None

    def forged(body: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(body).encode()).decode()

    fingerprint = json.loads(base64.urlsafe_b64decode(cursor + "=="))["q"]
    bad = [
        "not a cursor",
        "e30",  # {}
        forged([1, 2]),
        forged({"q": fingerprint, "v": "0.1", "i": "a" * 64}),
        forged({"q": fingerprint, "v": True, "i": "a" * 64}),
        forged({"q": fingerprint, "v": 0.1, "i": "../etc"}),
        base64.urlsafe_b64encode(
            f'{{"q":"{fingerprint}","v":NaN,"i":"{"a" * 64}"}}'.encode()
        ).decode(),
        "A" * 600,
    ]
    for text in bad:
        with pytest.raises(InvalidCursor) as raised:
            review.review_queue(engine, query, limit=1, cursor=text)
        assert raised.value.status == 400 and raised.value.code == "invalid_cursor"
    for other in (
        ReviewQuery(model_name=NAME, strategy="margin"),
        ReviewQuery(model_name="species"),
        ReviewQuery(model_name=NAME, predicted_label="1"),
        ReviewQuery(model_name=NAME, created_after=T0),
    ):
        with pytest.raises(InvalidCursor, match="another query"):
            review.review_queue(engine, other, limit=1, cursor=cursor)
    assert review.review_queue(engine, query, limit=5, cursor=cursor).total == 3


def test_the_version_marked_active_is_the_champion(engine: Engine) -> None:
    catalog.record_models(engine, [(NAME, "v1", {}), (NAME, "v2", {}), ("species", "s1", {})])
    with Session(engine) as session:
        assert review.champion_version(session, NAME) is None  # staged only
    activate(engine, "v1")
    activate(engine, "v2")  # retires v1
    activate(engine, "s1", name="species")
    with Session(engine) as session:
        assert review.champion_version(session, NAME) == "v2"
        assert review.champion_version(session, "species") == "s1"
        assert review.champion_version(session, "unknown") is None
