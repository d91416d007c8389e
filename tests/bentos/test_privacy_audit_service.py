"""Through the running service, on PostgreSQL and S3 (moto): a stored photo loses its GPS
position, the deletion route is an admin one with its audit entry, admin labels are
audited, the image detail shows its latest label, and times are ISO 8601 only."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from imageiq.db.schema import AuditEntry, Label
from tests.backends import Stack
from tests.conftest import Server

pytestmark = pytest.mark.slow
GPS = {1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 1.0)}


def photo(digits_dir: Path, label: int, *, fmt: str) -> bytes:
    """A digit as a camera would send it: with a GPS position, a maker and XMP."""
    path = sorted((digits_dir / str(label)).iterdir())[1]
    exif = Image.Exif()
    exif[0x010F] = "Alice's camera"
    exif[0x8825] = GPS
    out = io.BytesIO()
    with Image.open(path) as image:
        options = {"quality": 95} if fmt == "JPEG" else {}
        xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">GPSLatitude 52.5</x:xmpmeta>'
        image.convert("RGB").save(out, format=fmt, exif=exif.tobytes(), xmp=xmp, **options)
    return out.getvalue()


def store(served: Server, data: bytes, name: str) -> dict:
    resp = served.post("/v1/classify", files={"image": (name, data)}, data={"store": "true"})
    assert resp.status_code == 200, resp.text
    return resp.json()["image"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_stored_photo_keeps_no_gps(
    served: Server, stack: Stack, digits_dir: Path, fmt: str
) -> None:
    data = photo(digits_dir, 3, fmt=fmt)
    image = store(served, data, f"p.{fmt.lower()}")
    assert image["id"] == image["sha256"] == hashlib.sha256(data).hexdigest()
    assert image["stored"] is True
    obj = stack.s3.client().get_object(Bucket=stack.s3.bucket, Key=f"images/{image['id']}")
    stored = obj["Body"].read()
    assert obj["Metadata"]["sha256"] == image["id"]
    assert obj["Metadata"]["content-sha256"] == hashlib.sha256(stored).hexdigest()
    assert b"Alice's camera" not in stored and b"GPSLatitude" not in stored
    with Image.open(io.BytesIO(stored)) as clean, Image.open(io.BytesIO(data)) as sent:
        assert clean.format == sent.format
        assert clean.getexif().get_ifd(0x8825) == {} and sent.getexif().get_ifd(0x8825)
        assert np.array_equal(np.asarray(clean.convert("RGB")), np.asarray(sent.convert("RGB")))
    content = served.get(f"/v1/images/{image['id']}/content")
    assert content.status_code == 200 and content.content == stored


def test_deletion_is_an_admin_route_and_audited_with_both_request_ids(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    image = store(served, photo(digits_dir, 8, fmt="PNG"), "d.png")
    sha = image["id"]
    old = served.delete(f"/v1/images/{sha}")
    assert old.status_code in (404, 405), old.text  # the public path no longer deletes
    resp = served.delete(f"/v1/admin/images/{sha}", headers={"X-Request-ID": "client-del-1"})
    assert resp.status_code == 200, resp.text
    with stack.session() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "image.delete", AuditEntry.target == sha)
        ).one()
    assert entry.detail == resp.json()["deleted"] and entry.detail["images"] == 1
    assert entry.actor == served.key.split("_")[1]
    assert entry.client_request_id == "client-del-1"
    assert entry.request_id and entry.request_id != "client-del-1"  # the server's own
    assert resp.headers.get("x-request-id") in (entry.request_id, "client-del-1")


def test_admin_labels_are_audited_and_the_detail_shows_the_latest(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    sha = store(served, photo(digits_dir, 9, fmt="PNG"), "d.png")["id"]
    assert served.post(f"/v1/images/{sha}/labels", json={"label": "9"}).status_code == 201
    resp = served.post(
        f"/v1/images/{sha}/labels",
        json={"label": "4", "source": "admin"},
        headers={"X-Request-ID": "client-label-1"},
    )
    assert resp.status_code == 201, resp.text
    detail = served.get(f"/v1/images/{sha}").json()
    assert detail["label"] == detail["labels"][0] and detail["label"]["label"] == "4"
    with stack.session() as session:
        entries = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "label.add", AuditEntry.target == sha)
        ).all()
        label = session.get(Label, resp.json()["id"])
        assert label is not None and label.client_request_id == "client-label-1"
    assert [(e.detail["label"], e.detail["source"]) for e in entries] == [("4", "admin")]
    assert entries[0].client_request_id == "client-label-1"


@pytest.mark.parametrize(
    "value", ["2024", "2024-03", "1710000000", "20240310", "2024-W10-1", "yesterday", "2024-02-30"]
)
def test_times_other_than_iso_dates_are_refused(served: Server, value: str) -> None:
    for path, name in (
        ("/v1/stats", "since"),
        ("/v1/stats", "until"),
        ("/v1/images", "created_after"),
        ("/v1/images", "created_before"),
    ):
        resp = served.get(path, params={name: value})
        assert resp.status_code == 422, (name, value, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "invalid_parameter" and name in error["message"]


def test_iso_dates_and_times_are_accepted(served: Server) -> None:
    for value, expected in (
        ("2024-03-10", "2024-03-10T00:00:00Z"),
        ("2024-03-10T14:00:00+02:00", "2024-03-10T12:00:00Z"),
        ("2024-03-10T12:00", "2024-03-10T12:00:00Z"),
    ):
        resp = served.get("/v1/stats", params={"since": value})
        assert resp.status_code == 200, resp.text
        assert resp.json()["since"].replace("+00:00", "Z") == expected
    assert served.get("/v1/images", params={"created_after": "2024-03-10"}).status_code == 200


def test_every_denied_attempt_is_audited_with_the_key_id_presented(
    served: Server, stack: Stack
) -> None:
    """401s (an unknown key, a wrong secret) and 403s (a key without the scope) reach the
    audit log from the gate, with the key id presented (never the secret) and both request
    ids; a header that is not shaped like a key is recorded without an actor."""
    from tests.bentos.test_security import new_key

    classify_only, classify_id = new_key(stack, ["classify"])
    unknown_id = "0123456789abcdef"
    secret = "f" * 48
    attempts = [
        (f"iiq_{unknown_id}_{secret}", "GET", "/v1/models", 401, unknown_id),
        (classify_only, "GET", "/v1/images", 403, classify_id),
        (classify_only, "DELETE", "/v1/admin/images/" + "a" * 64, 403, classify_id),
        ("not-a-key", "GET", "/v1/models", 401, None),
    ]
    for i, (key, method, path, status, _) in enumerate(attempts):
        headers = {"Authorization": f"Bearer {key}", "X-Request-ID": f"denied-{i}"}
        resp = served.request(method, path, headers=headers)
        assert resp.status_code == status, resp.text

    def entries() -> list[AuditEntry]:
        with stack.session() as session:
            return list(
                session.scalars(
                    select(AuditEntry).where(
                        AuditEntry.action == "auth.denied",
                        AuditEntry.client_request_id.like("denied-%"),
                    )
                )
            )

    from tests.backends import wait_for

    wait_for(lambda: len(entries()) == len(attempts), 30, "every denial audited")
    found = {e.client_request_id: e for e in entries()}
    for i, (_, method, path, status, key_id) in enumerate(attempts):
        entry = found[f"denied-{i}"]
        assert entry.actor == key_id
        assert entry.target == path
        assert entry.detail["status"] == status and entry.detail["method"] == method
        assert entry.request_id and entry.request_id != f"denied-{i}"
        assert secret not in str(entry.detail) and secret not in (entry.target or "")
