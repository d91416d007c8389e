"""Training from what the service collected: effective labels on SQLite and PostgreSQL, the
images read from a real object store (a directory; a moto S3 server), and the dataset
snapshot registered with a model, which rebuilds the same data set."""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from imageiq.architectures import build_model
from imageiq.catalog import delete_image_rows
from imageiq.db.schema import Image, Label
from imageiq.errors import ConfigurationError, DatasetError, ModelNotFound
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import (
    ModelCard,
    RegisteredModel,
    get_model,
    read_model_file,
    register_model,
)
from imageiq.settings import Settings
from imageiq.storage import LocalStore, ObjectStore, build_store
from tests.backends import MotoServer, migrated
from tests.imageiq.conftest import engine, postgres_engine  # noqa: F401 (the fixtures)
from training import db_source
from training.db_source import (
    DbQuery,
    EffectiveLabel,
    add_db_arguments,
    effective_labels,
    load_db_data,
    load_snapshot,
    query_from_args,
)
from training.sources import (
    SNAPSHOT_FILE,
    LabelledData,
    load_data,
    read_snapshot,
    snapshot_entry,
    snapshot_rows,
    write_snapshot,
)

MAX_PIXELS = 1_000_000
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def fake_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@dataclass
class Collected:
    """What the service would have stored: image rows, their objects, and label rows with
    the times a test chooses."""

    engine: Engine
    settings: Settings
    store: ObjectStore

    def image(self, data: bytes | None = None, *, name: str = "") -> str:
        """An image row, and its object when ``data`` is given (a row without an object is
        the "missing object" case)."""
        sha = hashlib.sha256(data).hexdigest() if data is not None else fake_id(name)
        key = self.store.key_for(sha)
        if data is not None:
            self.store.put(sha, data, content_type="image/png")
        with Session(self.engine) as session, session.begin():
            session.add(
                Image(
                    sha256=sha,
                    storage_key=key,
                    content_type="image/png",
                    bytes=len(data or b""),
                    width=8,
                    height=8,
                )
            )
        return sha

    def label(
        self,
        sha: str,
        label: str | None,
        *,
        source: str = "user",
        when: datetime = T0,
        attributes: dict[str, str] | None = None,
    ) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(
                Label(
                    image_sha256=sha,
                    label=label,
                    attributes=attributes or {},
                    source=source,
                    created_at=when,
                )
            )


def database_settings(database: Engine, data_dir: Path, **extra: Any) -> Settings:
    url = database.url.render_as_string(hide_password=False)
    return Settings(data_dir=data_dir, database_url=url, **extra)


@pytest.fixture
def collected(engine: Engine, tmp_path: Path) -> Collected:  # noqa: F811
    settings = database_settings(engine, tmp_path)
    return Collected(engine, settings, build_store(settings))


@pytest.fixture(scope="module")
def digit_pngs(digits_dir: Path) -> dict[str, list[bytes]]:
    """Real PNGs of the digits data set, per digit, each one distinct."""
    out: dict[str, list[bytes]] = {}
    seen: set[bytes] = set()
    for folder in sorted(p for p in digits_dir.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir())[:12]:
            data = path.read_bytes()
            if data not in seen:
                seen.add(data)
                out.setdefault(folder.name, []).append(data)
    return out


# --- the effective label ------------------------------------------------------------------------
def test_precedence_by_source_then_time_per_attribute(collected: Collected) -> None:
    c = collected
    admin_old = c.image(name="admin-old")
    c.label(admin_old, "5", source="admin", when=at(0))
    c.label(admin_old, "3", source="user", when=at(2))  # later, but a user's
    c.label(admin_old, "7", source="model", when=at(3))
    latest = c.image(name="latest")
    c.label(latest, "1", when=at(0))
    c.label(latest, "2", when=at(1))
    c.label(latest, None, when=at(2), attributes={"shiny": "yes"})  # attributes only
    tie = c.image(name="tie")
    c.label(tie, "x", when=at(0))
    c.label(tie, "y", when=at(0))  # the same instant: the later row wins
    pseudo = c.image(name="pseudo")
    c.label(pseudo, "9", source="model", when=at(0))
    attributes_only = c.image(name="attributes-only")
    c.label(attributes_only, None, source="admin", attributes={"shiny": "no"})
    c.image(name="unlabelled")
    heads = c.image(name="heads")
    c.label(heads, "cat", source="admin", when=at(0))
    c.label(heads, None, when=at(1), attributes={"shiny": "yes", "size": "big"})
    c.label(heads, "dog", source="model", when=at(2), attributes={"shiny": "no", "ink": "blue"})
    c.label(heads, None, source="admin", when=at(3), attributes={"size": "small"})
    c.label(heads, None, when=at(4), attributes={"size": "huge"})  # below the admin's

    assert effective_labels(c.engine, DbQuery()) == {
        admin_old: ("5", {}),
        latest: ("2", {"shiny": "yes"}),
        tie: ("y", {}),
        heads: ("cat", {"shiny": "yes", "size": "small"}),
    }
    with_model = effective_labels(c.engine, DbQuery(sources=("user", "admin", "model")))
    assert with_model[pseudo] == EffectiveLabel("9", {})
    assert with_model[heads] == ("cat", {"shiny": "yes", "size": "small", "ink": "blue"})
    assert with_model[admin_old].label == "5"
    assert attributes_only not in with_model
    only_model = effective_labels(c.engine, DbQuery(sources=("model",)))
    assert only_model[heads] == ("dog", {"shiny": "no", "ink": "blue"})


def test_filters(collected: Collected) -> None:
    c = collected
    corrected = c.image(name="corrected")
    c.label(corrected, "5", source="admin", when=at(0))
    c.label(corrected, "3", when=at(2))
    early = c.image(name="early")
    c.label(early, "1", when=at(0))
    c.label(early, "2", when=at(1))

    # The window chooses the rows; precedence applies among them.
    assert effective_labels(c.engine, DbQuery(since=at(1))) == {
        corrected: ("3", {}),
        early: ("2", {}),
    }
    assert effective_labels(c.engine, DbQuery(since=at(1.5))) == {corrected: ("3", {})}
    assert effective_labels(c.engine, DbQuery(until=at(1))) == {
        corrected: ("5", {}),
        early: ("1", {}),
    }
    assert effective_labels(c.engine, DbQuery(sources=("admin",))) == {corrected: ("5", {})}
    assert effective_labels(c.engine, DbQuery(exclude=frozenset({corrected}))) == {early: ("2", {})}
    # A time without a zone is UTC.
    assert DbQuery(since=datetime(2026, 1, 1, 1)).since == at(1)


def test_query_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="user, admin, model"):
        DbQuery(sources=("user", "robot"))
    with pytest.raises(ConfigurationError):
        DbQuery(sources=())
    with pytest.raises(ConfigurationError, match="min_per_class"):
        DbQuery(min_per_class=0)
    with pytest.raises(ConfigurationError, match="before until"):
        DbQuery(since=at(2), until=at(1))
    assert DbQuery(sources=("user", "admin", "user")).sources == ("admin", "user")


def test_matches_a_plain_reference_on_random_labels(
    collected: Collected, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 random rows over 150 images, fetched 7 rows at a time (so groups straddle
    batches), against the rule written out in Python."""
    monkeypatch.setattr(db_source, "_YIELD_PER", 7)
    rng = random.Random(0)
    images = [collected.image(name=f"r{i}") for i in range(150)]
    given: list[dict[str, Any]] = [
        {
            "image_sha256": rng.choice(images),
            "label": rng.choice(["a", "b", "c", None]),
            "attributes": {h: rng.choice("xyz") for h in ("p", "q") if rng.random() < 0.3},
            "source": rng.choice(["user", "admin", "model"]),
            "created_at": at(rng.randrange(20)),  # many ties in time
        }
        for _ in range(2000)
    ]
    with Session(collected.engine) as session, session.begin():
        added = [Label(**row) for row in given]
        session.add_all(added)
        session.flush()
        rows = [{**row, "id": label.id} for row, label in zip(given, added, strict=True)]
    query = DbQuery(sources=("user", "admin", "model"), since=at(2))
    expected: dict[str, tuple[str, dict[str, str]]] = {}
    rank = {"admin": 0, "user": 1, "model": 2}
    for image in images:
        chosen = [r for r in rows if r["image_sha256"] == image and r["created_at"] >= at(2)]
        chosen.sort(key=lambda r: (rank[r["source"]], -r["created_at"].timestamp(), -r["id"]))
        labels = [r["label"] for r in chosen if r["label"]]
        attributes: dict[str, str] = {}
        for r in chosen:
            for head, value in r["attributes"].items():
                attributes.setdefault(head, value)
        if labels:
            expected[image] = (labels[0], attributes)
    assert len(expected) > 100
    assert effective_labels(collected.engine, query) == expected


# --- loading images -----------------------------------------------------------------------------
def fill(c: Collected, pngs: dict[str, list[bytes]]) -> dict[str, Any]:
    """Digits 0 and 1 (4 usable each), digit 2 with 2 images (too few), a new class of 4
    digit-7 images one of which is excluded, a row without its object, a corrupt object, an
    admin correction, a model's pseudo-label, and two attributes (one has a single value)."""
    ids: dict[str, Any] = {"0": [], "1": [], "2": [], "new": []}
    for digit, count in (("0", 4), ("1", 3), ("2", 2)):
        for i, data in enumerate(pngs[digit][:count]):
            sha = c.image(data)
            stroke = "thin" if i % 2 else "thick"
            c.label(sha, digit, attributes={"stroke": stroke, "ink": "black"})
            ids[digit].append(sha)
    moved = c.image(pngs["3"][0])  # a user said 0, an admin says 1
    c.label(moved, "0", when=at(0))
    c.label(moved, "1", source="admin", when=at(-5))
    ids["1"].append(moved)
    for data in pngs["7"][:4]:
        sha = c.image(data)
        c.label(sha, "brand-new-digit")  # a label no model knows yet
        ids["new"].append(sha)
    ids["missing"] = c.image(name="missing")
    c.label(ids["missing"], "0")
    ids["corrupt"] = c.image(b"this is not an image")
    c.label(ids["corrupt"], "1")
    ids["pseudo"] = c.image(pngs["4"][0])
    c.label(ids["pseudo"], "0", source="model")
    return ids


def test_load_db_data(collected: Collected, digit_pngs: dict[str, list[bytes]]) -> None:
    c = collected
    ids = fill(c, digit_pngs)
    query = DbQuery(min_per_class=3, exclude=frozenset({ids["new"][0]}))
    seen: list[tuple[int, int]] = []
    data = load_db_data(
        c.settings, query, max_pixels=MAX_PIXELS, progress=lambda d, t: seen.append((d, t))
    )
    assert data.classes == ["0", "1", "brand-new-digit"]
    by_class = {cls: sorted(s.name for s in data.samples if s.label == cls) for cls in data.classes}
    assert by_class == {
        "0": sorted(ids["0"]),
        "1": sorted(ids["1"]),
        "brand-new-digit": sorted(ids["new"][1:]),
    }
    assert [s.uri for s in data.samples] == sorted(s.uri for s in data.samples)
    assert all(s.uri == f"store:{s.name}" for s in data.samples)
    reasons = dict(data.skipped)
    assert "not found" in reasons[f"store:{ids['missing']}"]
    assert reasons[f"store:{ids['corrupt']}"].startswith("unsupported_image_format")
    for sha in ids["2"]:
        assert (
            reasons[f"store:{sha}"] == "class '2' has 2 usable images, fewer than min_per_class 3"
        )
    assert len(data.skipped) == 4
    assert seen[0] == (0, 15) and seen[-1] == (15, 15)  # excluded ones are never read
    # One value of "ink" among the images teaches nothing: "stroke" is the only head.
    assert data.heads == {"stroke": ["thick", "thin"]}
    assert data.samples[0].attributes.keys() == {"stroke"}
    assert {s.attributes["stroke"] for s in data.samples if s.label == "brand-new-digit"} == {""}
    assert data.source == ("db (labels by admin, user; at least 3 per class; 1 image excluded)")
    # The bytes come back through the reader, also once pickled into a DataLoader worker.
    worker_reader = pickle.loads(pickle.dumps(data.reader))
    for i, sample in enumerate(data.samples):
        assert hashlib.sha256(data.read(i)).hexdigest() == sample.sha256
        assert worker_reader.read(sample.uri) == data.read(i)

    # Same bytes under the same labels: the same fingerprint. A correction changes it.
    again = load_db_data(c.settings, query, max_pixels=MAX_PIXELS)
    assert again.fingerprint == data.fingerprint
    c.label(ids["0"][0], "1", source="admin", when=at(9))
    assert load_db_data(c.settings, query, max_pixels=MAX_PIXELS).fingerprint != data.fingerprint
    # Pseudo-labels only when asked.
    with_model = load_db_data(
        c.settings,
        DbQuery(min_per_class=3, sources=("user", "admin", "model")),
        max_pixels=MAX_PIXELS,
    )
    assert ids["pseudo"] in {s.name for s in with_model.samples}


def test_too_few_classes(collected: Collected, digit_pngs: dict[str, list[bytes]]) -> None:
    ids = fill(collected, digit_pngs)
    with pytest.raises(DatasetError, match="at least 2 classes"):
        load_db_data(collected.settings, DbQuery(min_per_class=5), max_pixels=MAX_PIXELS)
    assert ids


# --- snapshots ----------------------------------------------------------------------------------
def register_with_snapshot(
    data: LabelledData, name: str, *, split: tuple[list[int], list[int]] | None = None
) -> RegisteredModel:
    """A tiny untrained model with its data set's snapshot, as training registers one."""
    rows = snapshot_rows(data, *(split or (None, None)))
    content = write_snapshot(rows)
    card = ModelCard(
        architecture="mobilenet_v3_small",
        labels=data.classes,
        heads=data.heads,
        preprocessing=PreprocessConfig(resize_size=16, crop_size=16),
        dataset_fingerprint=data.fingerprint,
        dataset_snapshot=snapshot_entry(content, images=len(rows)),
    )
    net = build_model(
        arch="mobilenet_v3_small",
        num_classes=len(data.classes),
        heads={h: len(v) for h, v in data.heads.items()},
    )
    return register_model(net, card, name=name, files={SNAPSHOT_FILE: content})


def same_samples(a: LabelledData, b: LabelledData) -> None:
    assert [(s.uri, s.label, s.attributes, s.sha256) for s in a.samples] == [
        (s.uri, s.label, s.attributes, s.sha256) for s in b.samples
    ]
    assert (a.classes, a.heads, a.fingerprint) == (b.classes, b.heads, b.fingerprint)


def test_db_snapshot_rebuilds_the_data_set(
    collected: Collected, digit_pngs: dict[str, list[bytes]]
) -> None:
    c = collected
    ids = fill(c, digit_pngs)
    data = load_db_data(c.settings, DbQuery(min_per_class=3), max_pixels=MAX_PIXELS)
    n = len(data.samples)
    split = ([i for i in range(n) if i % 3], [i for i in range(n) if not i % 3])
    model = register_with_snapshot(data, "db-snapshot", split=split)
    assert model.card.dataset_snapshot == {
        "file": SNAPSHOT_FILE,
        "images": n,
        "sha256": hashlib.sha256(read_model_file(model, SNAPSHOT_FILE)).hexdigest(),
    }
    rows = read_snapshot(read_model_file(model, SNAPSHOT_FILE))
    assert [r["id"] for r in rows] == [s.name for s in data.samples]
    assert rows[0].keys() == {"id", "sha256", "uri", "name", "label", "attributes", "split"}

    # New labels since do not move a snapshot: it is the data set the model saw.
    c.label(ids["0"][0], "1", source="admin", when=at(9))
    rebuilt = load_snapshot(c.settings, model.tag, max_pixels=MAX_PIXELS)
    same_samples(rebuilt, data)
    assert rebuilt.fingerprint == model.card.dataset_fingerprint
    assert rebuilt.source == f"snapshot:{model.tag}" and rebuilt.skipped == []
    assert rebuilt.split is not None
    assert [i for i, s in enumerate(rebuilt.split) if s == "held_out"] == split[1]

    # An object whose bytes changed, and an image forgotten since: skipped and reported.
    changed, forgotten = ids["1"][0], ids["new"][0]
    assert isinstance(c.store, LocalStore)
    (c.store.root / c.store.key_for(changed)).write_bytes(digit_pngs["9"][0])
    delete_image_rows(c.engine, forgotten)
    after = load_snapshot(c.settings, model.tag, max_pixels=MAX_PIXELS)
    reasons = dict(after.skipped)
    assert reasons[f"store:{changed}"].startswith("changed since the snapshot")
    assert reasons[f"store:{forgotten}"] == "forgotten: no longer a stored image"
    assert len(after.samples) == n - 2 and after.fingerprint != data.fingerprint


@pytest.mark.parametrize("kind", ["folder", "manifest"])
def test_file_snapshots_rebuild_with_the_same_fingerprint(
    kind: str,
    shapes_dir: Path,
    species_manifest: Path,
    tmp_path: Path,
) -> None:
    """Folders and manifests (with heads, and a missing file skipped) snapshot too."""
    data = load_data(shapes_dir if kind == "folder" else species_manifest, max_pixels=MAX_PIXELS)
    model = register_with_snapshot(data, f"{kind}-snapshot")
    rows = read_snapshot(read_model_file(model, SNAPSHOT_FILE))
    assert all(r["id"] == r["sha256"] and "split" not in r for r in rows)
    rebuilt = load_snapshot(Settings(data_dir=tmp_path), model.tag, max_pixels=MAX_PIXELS)
    same_samples(rebuilt, data)
    assert rebuilt.fingerprint == model.card.dataset_fingerprint
    assert rebuilt.split is None


def test_snapshot_errors(tmp_path: Path, shapes_dir: Path) -> None:
    data = load_data(shapes_dir, max_pixels=MAX_PIXELS)
    settings = Settings(data_dir=tmp_path)
    net = build_model(arch="mobilenet_v3_small", num_classes=3)
    card = ModelCard(
        architecture="mobilenet_v3_small",
        labels=data.classes,
        preprocessing=PreprocessConfig(resize_size=16, crop_size=16),
    )
    plain = register_model(net, card, name="no-snapshot")
    with pytest.raises(ModelNotFound, match=r"no file .dataset\.jsonl."):
        read_model_file(plain, SNAPSHOT_FILE)
    with pytest.raises(DatasetError, match="without a dataset snapshot"):
        load_snapshot(settings, plain.tag, max_pixels=MAX_PIXELS)
    for bad in ("../x", "weights.pt", "model.yaml", ".hidden", "a/b", ""):
        with pytest.raises(ConfigurationError, match="cannot be a model's file"):
            register_model(net, card, name="no-snapshot", files={bad: b"x"})
    content = write_snapshot(snapshot_rows(data))
    described = card.model_copy(update={"dataset_snapshot": snapshot_entry(content, images=72)})
    with pytest.raises(ConfigurationError, match="not among the files"):
        register_model(net, described, name="no-snapshot")
    with pytest.raises(ConfigurationError, match="does not match"):
        register_model(net, described, name="no-snapshot", files={SNAPSHOT_FILE: b"{}\n"})
    with pytest.raises(ValueError, match="both splits"):
        snapshot_rows(data, [0, 1], [1])
    # A snapshot changed after registration is refused, not half-trusted.
    model = register_model(net, described, name="tampered", files={SNAPSHOT_FILE: content})
    (Path(model.path) / SNAPSHOT_FILE).write_bytes(content.replace(b"disc", b"dots"))
    with pytest.raises(DatasetError, match="does not match the sha256"):
        load_snapshot(settings, model.tag, max_pixels=MAX_PIXELS)
    lines = content.split(b"\n")
    lines[1] = lines[1].replace(b'"label": "bar"', b'"label": ""')
    with pytest.raises(DatasetError, match="line 2: 'label' must be a non-empty string"):
        read_snapshot(b"\n".join(lines))
    assert get_model(model.tag).card.dataset_snapshot is not None


# --- arguments ----------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    return add_db_arguments(argparse.ArgumentParser(prog="imageiq train"))


def test_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    golden = tmp_path / "golden.txt"
    golden.write_text(f"# golden set\n{fake_id('a')}\n\n{fake_id('b')}  # a comment\n")
    args = parser().parse_args(
        [
            *("--since", "2026-01-01T03:00+02:00", "--until", "2026-02-01"),
            *("--label-sources", "model, admin", "--min-per-class", "3"),
            *("--exclude-images", str(golden)),
        ]
    )
    expected = DbQuery(
        since=at(1),
        until=datetime(2026, 2, 1, tzinfo=timezone.utc),
        sources=("admin", "model"),
        min_per_class=3,
        exclude=frozenset({fake_id("a"), fake_id("b")}),
    )
    assert query_from_args(args) == expected
    # What --resume reads back from config.json gives the same query.
    resumed = argparse.Namespace(**json.loads(json.dumps(vars(args))))
    assert query_from_args(resumed) == expected
    assert query_from_args(parser().parse_args([])) == DbQuery()

    for argv, message in (
        (["--since", "last tuesday"], "not an ISO 8601 date"),
        (["--label-sources", "user,robot"], "not robot"),
        (["--label-sources", ","], "comma-separated list of user, admin, model"),
        (["--min-per-class", "0"], "at least 1"),
        (["--min-per-class", "many"], "not a whole number"),
        (["--exclude-images", str(tmp_path / "nope.txt")], "Cannot read image ids"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser().parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, argv
    golden.write_text("not-an-id\n")
    with pytest.raises(SystemExit):
        parser().parse_args(["--exclude-images", str(golden)])
    assert "line 1: 'not-an-id' is not an image id" in capsys.readouterr().err
    late_start = parser().parse_args(["--since", "2026-03-01", "--until", "2026-02-01"])
    with pytest.raises(ConfigurationError, match="before until"):
        query_from_args(late_start)


# --- S3 -----------------------------------------------------------------------------------------
@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[MotoServer]:
    """A moto S3 server, with fake credentials through boto3's usual chain."""
    for name, value in MotoServer.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_images_from_s3(
    moto: MotoServer, tmp_path: Path, digit_pngs: dict[str, list[bytes]]
) -> None:
    with migrated(f"sqlite:///{tmp_path / 'imageiq.db'}") as sqlite:
        settings = database_settings(
            sqlite, tmp_path, s3_bucket=moto.bucket, s3_endpoint_url=moto.url
        )
        c = Collected(sqlite, settings, build_store(settings))
        ids = fill(c, digit_pngs)
        data = load_db_data(settings, DbQuery(min_per_class=3), max_pixels=MAX_PIXELS)
        assert data.classes == ["0", "1", "brand-new-digit"]
        assert "not found" in dict(data.skipped)[f"store:{ids['missing']}"]
        assert all(f"images/{s.name}" in moto.object_keys() for s in data.samples)
        worker_reader = pickle.loads(pickle.dumps(data.reader))
        assert worker_reader.read(data.samples[0].uri) == data.read(0)
        model = register_with_snapshot(data, "s3-snapshot")
        same_samples(load_snapshot(settings, model.tag, max_pixels=MAX_PIXELS), data)
