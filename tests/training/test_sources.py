import csv
import io
import json
import pickle
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from imageiq.errors import DatasetError
from training.data import fingerprint, scan_image_folder
from training.sources import UNKNOWN, BlobReader, S3Options, load_data

MAX_PIXELS = 1_000_000
SPECIES = {"bulbasaur": (40, 160, 90), "charmander": (230, 110, 30), "squirtle": (60, 120, 220)}


def png_bytes(color: tuple[int, int, int], *, size: int = 12, seed: int = 0) -> bytes:
    """A small PNG; ``seed`` moves one pixel so that every file's bytes differ."""
    image = Image.new("RGB", (size, size), color)
    image.putpixel((seed % size, seed // size % size), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- folder sources -------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["shapes_dir", "digits_dir"])
def test_folder_source_matches_scan_and_fingerprint(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    root: Path = request.getfixturevalue(fixture)
    data = load_data(root, max_pixels=MAX_PIXELS)
    index = scan_image_folder(root)
    assert data.classes == index.classes
    assert data.heads == {} and data.skipped == []
    expected = sorted(
        (str(p.resolve()), t) for p, t in zip(index.paths, index.targets, strict=True)
    )
    assert list(zip((s.uri for s in data.samples), data.targets, strict=True)) == expected
    assert data.fingerprint == fingerprint(index)
    assert data.source == str(root)


def test_folder_skips_bad_files_and_keeps_the_rest(tmp_path: Path, shapes_dir: Path) -> None:
    root = tmp_path / "shapes"
    shutil.copytree(shapes_dir, root)
    good = (shapes_dir / "disc" / "disc_00.png").read_bytes()
    (root / "disc" / "x.png").write_text("not an image")
    (root / "bar" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "square" / "empty.png").write_bytes(b"")
    Image.new("RGB", (2000, 1000)).save(root / "square" / "huge.png")
    seen: list[tuple[int, int]] = []
    data = load_data(root, max_pixels=MAX_PIXELS, progress=lambda d, t: seen.append((d, t)))
    reasons = {Path(uri).name: reason for uri, reason in data.skipped}
    assert set(reasons) == {"x.png", "truncated.png", "empty.png", "huge.png"}
    assert reasons["x.png"].startswith("unsupported_image_format")
    assert reasons["truncated.png"].startswith("corrupt_image")
    assert reasons["empty.png"].startswith("empty_image")
    assert reasons["huge.png"].startswith("image_too_large")
    assert len(data.samples) == 72 and data.classes == ["bar", "disc", "square"]
    # The bad files are not in the fingerprint: it is the clean folder's.
    assert data.fingerprint == load_data(shapes_dir, max_pixels=MAX_PIXELS).fingerprint
    assert seen[0] == (0, 76) and seen[-1] == (76, 76)
    # Without check the files are read (for the fingerprint) but not decoded.
    unchecked = load_data(root, max_pixels=MAX_PIXELS, check=False)
    assert unchecked.skipped == [] and len(unchecked.samples) == 76


# --- manifests ------------------------------------------------------------------------------
ROWS = [  # path, label, shiny, shadow; "" = unknown
    ("images/b0.png", "bulbasaur", "yes", "no"),
    ("images/b1.png", "bulbasaur", "no", ""),
    ("images/c0.png", "charmander", "no", "yes"),
    ("ABS:images/c1.png", "charmander", "", "yes"),
    ("./images/s0.png", "squirtle", "no", "no"),
    ("images/s1.png", "squirtle", "yes", "yes"),
    ("images/missing.png", "squirtle", "no", "no"),
]


def write_images(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    for i, (path, label, *_) in enumerate(ROWS):
        if "missing" not in path:
            name = Path(path.removeprefix("ABS:")).name
            (root / "images" / name).write_bytes(png_bytes(SPECIES[label], seed=i))


def write_manifest(root: Path, fmt: str, rows: list[tuple[str, ...]], *, bad_line: bool) -> Path:
    """``rows`` as CSV or JSONL; the bad line (wrong column count / broken JSON) is line 4."""
    rows = [(p.replace("ABS:", f"{root}/"), *rest) for p, *rest in rows]
    manifest = root / f"train.{fmt}"
    if fmt == "csv":
        with manifest.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path_or_s3_uri", "label", "shiny", "shadow"])
            for i, row in enumerate(rows):
                if bad_line and i == 2:
                    writer.writerow(["images/b0.png", "bulbasaur"])
                writer.writerow(row)
        return manifest
    lines = []
    for i, (path, label, shiny, shadow) in enumerate(rows):
        if bad_line and i == 3:
            lines.append('{"path": "images/b0.png", "label": ')
        obj = {"path" if i % 2 else "uri": path, "label": label, "shiny": shiny or None}
        if shadow:
            obj["shadow"] = shadow
        lines.append(json.dumps(obj))
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest_with_attribute_heads(tmp_path: Path, fmt: str) -> None:
    write_images(tmp_path)
    manifest = write_manifest(tmp_path, fmt, ROWS, bad_line=True)
    data = load_data(manifest, max_pixels=MAX_PIXELS)
    assert data.classes == ["bulbasaur", "charmander", "squirtle"]
    assert data.heads == {"shadow": ["no", "yes"], "shiny": ["no", "yes"]}
    names = [Path(s.uri).name for s in data.samples]
    assert names == ["b0.png", "b1.png", "c0.png", "c1.png", "s0.png", "s1.png"]
    assert all(Path(s.uri).is_absolute() for s in data.samples)
    assert data.targets == [0, 0, 1, 1, 2, 2]
    assert data.head_targets("shiny") == [1, 0, 0, UNKNOWN, 0, 1]
    assert data.head_targets("shadow") == [0, UNKNOWN, 1, 1, 0, 1]
    assert data.skipped[0][0] == "manifest line 4"
    assert data.skipped[1:] == [(str(tmp_path / "images" / "missing.png"), "not found")]
    assert data.read(0) == (tmp_path / "images" / "b0.png").read_bytes()
    with pytest.raises(DatasetError, match="shadow, shiny"):
        data.head_targets("colour")


def test_manifest_fingerprint_tracks_labels_and_bytes_not_row_order(tmp_path: Path) -> None:
    write_images(tmp_path)

    def fp(rows: list[tuple[str, ...]], fmt: str = "csv") -> str:
        manifest = write_manifest(tmp_path, fmt, rows, bad_line=False)
        return load_data(manifest, max_pixels=MAX_PIXELS).fingerprint

    base = fp(ROWS)
    assert fp(list(reversed(ROWS))) == base
    assert fp(ROWS, "jsonl") == base  # the same data, whichever way it is written
    relabelled = [*ROWS[:-2], ("images/s1.png", "charmander", "yes", "yes")]
    assert fp(relabelled) != base
    reattributed = [*ROWS[:-2], ("images/s1.png", "squirtle", "no", "yes")]
    assert fp(reattributed) != base
    (tmp_path / "images" / "s1.png").write_bytes(png_bytes((1, 2, 3)))
    assert fp(ROWS) != base


def test_manifest_duplicates_and_empty_labels(tmp_path: Path) -> None:
    write_images(tmp_path)
    rows = [
        *ROWS[:-1],
        ("images/b0.png", "bulbasaur", "yes", "no"),  # line 8: the same row again
        ("images/s1.png", "charmander", "yes", "yes"),  # line 9: conflicts with line 7
        ("images/c0.png", "", "no", "no"),  # line 10: no label
    ]
    data = load_data(write_manifest(tmp_path, "csv", rows, bad_line=False), max_pixels=MAX_PIXELS)
    assert data.skipped == [
        ("manifest line 10", "empty label"),
        ("manifest line 8", "duplicate of manifest line 2"),
        (
            "manifest line 7",
            f"{tmp_path}/images/s1.png is listed with different labels or attributes",
        ),
        (
            "manifest line 9",
            f"{tmp_path}/images/s1.png is listed with different labels or attributes",
        ),
    ]
    assert [Path(s.uri).name for s in data.samples] == [
        "b0.png",
        "b1.png",
        "c0.png",
        "c1.png",
        "s0.png",
    ]


# --- whole-source errors --------------------------------------------------------------------
def test_source_errors(tmp_path: Path) -> None:
    write_images(tmp_path)

    def fails(name: str, content: str | bytes, match: str) -> None:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(DatasetError, match=match):
            load_data(path, max_pixels=MAX_PIXELS)

    with pytest.raises(DatasetError, match="does not exist"):
        load_data(tmp_path / "nope", max_pixels=MAX_PIXELS)
    fails("train.txt", "path,label\n", r"\.csv or \.jsonl, not \.txt")
    fails("nolabel.csv", "path,species\nimages/b0.png,bulbasaur\n", "a 'label' column")
    fails("empty.csv", "", "found: nothing")
    fails("latin1.csv", "path,label\nimages/b0.png,caf\xe9\n".encode("latin-1"), "not UTF-8")
    one_class = "path,label\nimages/b0.png,bulbasaur\nimages/b1.png,bulbasaur\n"
    fails("one.csv", one_class, "at least 2 classes")
    all_missing = "path,label\nx.png,a\ny.png,b\n"
    fails("gone.csv", all_missing, r"found 0 .*x\.png: not found")
    one_value = "path,label,shiny\nimages/b0.png,bulbasaur,yes\nimages/c0.png,charmander,\n"
    fails("flat.csv", one_value, r"Attribute 'shiny' .* found \['yes'\]")
    fails("lines.jsonl", '{"path": "images/b0.png", "label": "a"}\n[1]\n', "at least 2 classes")


# --- S3 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the moto server, with fake credentials in the environment only."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    name = f"imageiq-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=name)
    return name


def upload_species(moto_url: str, bucket: str) -> dict[str, bytes]:
    """Two images per species under ds/img/; returns key -> bytes."""
    client = boto3.client("s3", endpoint_url=moto_url)
    objects = {}
    for i, (label, color) in enumerate(SPECIES.items()):
        for j in range(2):
            key = f"ds/img/{label}_{j}.png"
            objects[key] = png_bytes(color, seed=2 * i + j)
            client.put_object(Bucket=bucket, Key=key, Body=objects[key])
    return objects


def test_s3_manifest_with_relative_keys(moto_url: str, bucket: str) -> None:
    objects = upload_species(moto_url, bucket)
    lines = ["path,label"] + [f"img/{k.rsplit('/', 1)[1]},{k.split('/')[2][:-6]}" for k in objects]
    lines[1] = f"s3://{bucket}/ds/img/bulbasaur_0.png,bulbasaur"  # absolute URIs mix in
    lines.append("img/missing.png,squirtle")
    client = boto3.client("s3", endpoint_url=moto_url)
    client.put_object(Bucket=bucket, Key="ds/train.csv", Body="\n".join(lines).encode())
    s3 = S3Options(endpoint_url=moto_url)
    data = load_data(f"s3://{bucket}/ds/train.csv", max_pixels=MAX_PIXELS, s3=s3)
    assert data.classes == ["bulbasaur", "charmander", "squirtle"]
    assert [s.uri for s in data.samples] == [f"s3://{bucket}/{k}" for k in sorted(objects)]
    assert data.targets == [0, 0, 1, 1, 2, 2]
    assert data.skipped == [(f"s3://{bucket}/ds/img/missing.png", "not found")]
    assert [data.read(i) for i in range(6)] == [objects[k] for k in sorted(objects)]
    # A pickled copy, as a DataLoader worker gets it, makes its own client and reads too.
    again = pickle.loads(pickle.dumps(data))
    assert again.read(5) == objects["ds/img/squirtle_1.png"]
    with pytest.raises(DatasetError, match=r"Could not read the manifest .*: not found"):
        load_data(f"s3://{bucket}/ds/other.csv", max_pixels=MAX_PIXELS, s3=s3)


def test_local_manifest_of_s3_uris(moto_url: str, bucket: str, tmp_path: Path) -> None:
    objects = upload_species(moto_url, bucket)
    manifest = tmp_path / "train.jsonl"
    rows = [{"uri": f"s3://{bucket}/{k}", "label": k.split("/")[2][:-6]} for k in objects]
    rows.append({"uri": f"s3://{bucket}/ds/img/nope.png", "label": "bulbasaur"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    data = load_data(manifest, max_pixels=MAX_PIXELS, s3=S3Options(endpoint_url=moto_url))
    assert len(data.samples) == 6 and data.classes == sorted(SPECIES)
    assert data.skipped == [(f"s3://{bucket}/ds/img/nope.png", "not found")]


def test_blob_reader_survives_pickle(moto_url: str, bucket: str, tmp_path: Path) -> None:
    objects = upload_species(moto_url, bucket)
    uri = f"s3://{bucket}/ds/img/charmander_1.png"
    reader = BlobReader(s3=S3Options(endpoint_url=moto_url))
    assert reader.read(uri) == objects["ds/img/charmander_1.png"]  # makes the client
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.read(uri) == objects["ds/img/charmander_1.png"]
    (tmp_path / "a.png").write_bytes(b"local")
    assert copy.read(str(tmp_path / "a.png")) == b"local"
    with pytest.raises(DatasetError, match="not found") as e:
        copy.read(f"s3://{bucket}/absent.png")
    assert e.value.details == {"uri": f"s3://{bucket}/absent.png", "reason": "not found"}


def test_unreachable_s3_is_fatal(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    manifest = tmp_path / "train.csv"
    manifest.write_text(f"uri,label\ns3://{bucket}/a.png,a\ns3://{bucket}/b.png,b\n")
    s3 = S3Options(endpoint_url="http://127.0.0.1:9")
    with pytest.raises(DatasetError, match="Could not use S3"):
        load_data(manifest, max_pixels=MAX_PIXELS, s3=s3)


def test_forked_dataloader_workers_read_s3(moto_url: str, bucket: str) -> None:
    """Forked workers inherit the parent's reader, client included: each must make its own."""
    from torch.utils.data import DataLoader

    objects = upload_species(moto_url, bucket)
    rows = "".join(f"s3://{bucket}/{k},{k.split('/')[2][:-6]}\n" for k in objects)
    client = boto3.client("s3", endpoint_url=moto_url)
    client.put_object(Bucket=bucket, Key="m.csv", Body=f"uri,label\n{rows}".encode())
    s3 = S3Options(endpoint_url=moto_url)
    data = load_data(f"s3://{bucket}/m.csv", max_pixels=MAX_PIXELS, s3=s3)
    loader = DataLoader(
        range(6),
        batch_size=None,
        num_workers=2,
        collate_fn=data.read,
        multiprocessing_context="fork",
    )
    assert list(loader) == [objects[k] for k in sorted(objects)]
