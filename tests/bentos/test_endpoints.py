"""Every /v1 endpoint through real HTTP: JSON and multipart classify, the options, the image
facts, attribute heads, batch with per-item errors, categories, models, model selection."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx
import pytest

from imageiq.registry import RegisteredModel
from tests.bentos.test_service import assert_error, classify
from tests.conftest import Server
from tests.imageiq.images_helpers import encode, photo, variants

pytestmark = pytest.mark.slow


def post_json(server: Server, path: str, body: object) -> httpx.Response:
    return server.post(f"{path}", json=body, timeout=60)


def test_json_body_matches_multipart(server: Server, digits_dir: Path) -> None:
    data = (digits_dir / "3" / "digit_0003.png").read_bytes()
    multipart = classify(server, {"image": ("3.png", data)}).json()
    b64 = base64.b64encode(data).decode()
    for encoded in (
        b64,
        f"data:image/png;base64,{b64}",
        "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)),  # MIME line breaks
        base64.urlsafe_b64encode(data).decode().rstrip("="),
    ):
        resp = post_json(server, "/v1/classify", {"image_b64": encoded})
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"] == multipart["predictions"]
        assert resp.json()["image"] == multipart["image"]


def test_response_describes_image_model_and_timing(server: Server) -> None:
    exif_rotated = variants()["exif-rotated.jpg"]  # stored 80x60, displayed 60x80
    resp = classify(server, {"image": ("r.jpg", exif_rotated)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["image"] == {
        "sha256": hashlib.sha256(exif_rotated).hexdigest(),
        "width": 60,
        "height": 80,
        "format": "JPEG",
        "bytes": len(exif_rotated),
    }
    assert body["model"] == {"name": server.model.name, "version": server.model.version}
    assert body["attributes"] == {}  # the digits model has no extra heads
    timing = body["timing_ms"]
    assert set(timing) == {"decode", "preprocess", "queue", "inference", "total"}
    assert all(v >= 0 for v in timing.values())
    assert timing["total"] >= timing["decode"] + timing["inference"]
    assert body["batch_size"] >= 1


def test_min_confidence_filters_labels(server: Server) -> None:
    files = {"image": ("a.png", encode(photo(), "PNG"))}
    everything = classify(server, files, data={"top_k": "10"}).json()["predictions"]
    assert len(everything) == 10
    cut = (everything[2]["score"] + everything[3]["score"]) / 2
    kept = classify(server, files, data={"top_k": "10", "min_confidence": str(cut)}).json()
    assert kept["predictions"] == everything[:3]
    none = classify(server, files, data={"min_confidence": "1"}).json()["predictions"]
    assert all(p["score"] >= 1.0 for p in none)
    for bad in ("-0.1", "1.5", "high"):
        resp = classify(server, files, data={"min_confidence": bad})
        assert "min_confidence" in assert_error(resp, 422, "invalid_parameter")["message"]


def test_options_in_the_query_string_and_unknown_options(server: Server) -> None:
    files = {"image": ("a.png", encode(photo(), "PNG"))}
    resp = server.post("/v1/classify?top_k=2", files=files)
    assert len(resp.json()["predictions"]) == 2
    resp = classify(server, files, data={"topk": "2"})
    assert "topk" in assert_error(resp, 422, "invalid_parameter")["message"]
    resp = post_json(server, "/v1/classify", {"image_b64": "aGVsbG8=", "threshold": 0.5})
    assert_error(resp, 422, "invalid_parameter")


def test_model_selection(
    server: Server, species_model: RegisteredModel, newer_model: RegisteredModel
) -> None:
    files = {"image": ("a.png", encode(photo(), "PNG"))}
    for ref in (None, server.model.name, server.model.tag):
        data = {"model": ref} if ref else {}
        body = classify(server, files, data=data).json()
        assert body["model"]["version"] == server.model.version, ref
        assert body["attributes"] == {}
    for ref in (species_model.name, species_model.tag, f"{species_model.name}:latest"):
        body = classify(server, files, data={"model": ref}).json()
        assert body["model"] == {"name": "species", "version": species_model.version}, ref
        assert {p["label"] for p in body["predictions"]} <= {"bulbasaur", "charmander", "squirtle"}
        assert set(body["attributes"]) == {"shiny", "shadow"}
        for attr in body["attributes"].values():
            assert attr["label"] in {"no", "yes"} and 0.5 <= attr["score"] <= 1.0
    # registered but not served, unknown, malformed
    error = assert_error(
        classify(server, files, data={"model": newer_model.tag}), 404, "model_not_found"
    )
    assert server.model.tag in error["message"]
    assert_error(classify(server, files, data={"model": "nope"}), 404, "model_not_found")
    assert_error(classify(server, files, data={"model": "Bad Tag!"}), 422, "invalid_parameter")


def test_batch_keeps_order_and_reports_bad_items(server: Server, digits_dir: Path) -> None:
    digits = [(digits_dir / str(d) / f"digit_{d:04d}.png").read_bytes() for d in (1, 2)]
    files = [
        ("images", ("one.png", digits[0])),
        ("images", ("notes.txt", b"not an image")),
        ("images", ("two.png", digits[1])),
        ("images", ("empty.png", b"")),
        ("images", ("cut.jpg", encode(photo(), "JPEG")[:300])),
        ("images", ("big.bmp", encode(photo(400, 300), "BMP"))),
    ]
    resp = server.post("/v1/classify/batch", files=files, data={"top_k": "3"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["succeeded"] == 2 and body["failed"] == 4
    results = body["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["filename"] for r in results] == [f[1][0] for f in files]
    single = [classify(server, {"image": ("d.png", d)}, data={"top_k": "3"}).json() for d in digits]
    for result, alone in zip((results[0], results[2]), single, strict=True):
        assert "error" not in result
        assert [p["label"] for p in result["predictions"]] == [
            p["label"] for p in alone["predictions"]
        ]
        assert result["image"] == alone["image"]
    errors = {
        r["filename"]: (r["error"]["status"], r["error"]["code"]) for r in results if "error" in r
    }
    assert errors == {
        "notes.txt": (415, "unsupported_image_format"),
        "empty.png": (400, "empty_image"),
        "cut.jpg": (422, "corrupt_image"),
        "big.bmp": (413, "payload_too_large"),
    }


def test_batch_as_json_and_its_limits(server: Server, species_model: RegisteredModel) -> None:
    png = base64.b64encode(encode(photo(), "PNG")).decode()
    resp = post_json(
        server,
        "/v1/classify/batch",
        {"images_b64": [png, "!!not base64!!", png], "model": species_model.name},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"]["name"] == "species"
    assert [r.get("error", {}).get("code") for r in body["results"]] == [
        None,
        "invalid_base64",
        None,
    ]
    assert set(body["results"][0]["attributes"]) == {"shiny", "shadow"}
    nine = [("images", (f"{i}.png", encode(photo(seed=i), "PNG"))) for i in range(9)]
    error = assert_error(server.post("/v1/classify/batch", files=nine), 413, "too_many_images")
    assert error["details"] == {"max_images": 8}
    assert_error(post_json(server, "/v1/classify/batch", {"images_b64": []}), 422, "missing_image")
    resp = server.post("/v1/classify/batch", files={"image": ("a.png", b"x")})
    assert_error(resp, 422, "missing_image")  # the field is `images`
    resp = server.post(
        "/v1/classify/batch", files=[("images", ("a.png", b"x"))], data={"top_k": "0"}
    )
    assert_error(resp, 422, "invalid_parameter")


def test_categories(server: Server, species_model: RegisteredModel) -> None:
    body = server.get("/v1/categories").json()
    assert body == {
        "model": {"name": server.model.name, "version": server.model.version},
        "labels": [str(d) for d in range(10)],
        "attributes": {},
    }
    body = server.get("/v1/categories", params={"model": "species"}).json()
    assert body["labels"] == ["bulbasaur", "charmander", "squirtle"]
    assert body["attributes"] == {"shiny": ["no", "yes"], "shadow": ["no", "yes"]}
    resp = server.get("/v1/categories", params={"model": "nope"})
    assert_error(resp, 404, "model_not_found")


def test_models_lists_every_served_version(server: Server, species_model: RegisteredModel) -> None:
    body = server.get("/v1/models").json()
    assert body["active"] == server.model.tag
    assert body["ready"] is True and body["unavailable"] == {}
    by_tag = {f"{m['name']}:{m['version']}": m for m in body["models"]}
    assert list(by_tag) == [server.model.tag, species_model.tag]
    digits, species = by_tag[server.model.tag], by_tag[species_model.tag]
    assert digits["active"] is True and species["active"] is False
    assert digits["architecture"] == "resnet18" and species["architecture"] == "efficientnet_b0"
    assert digits["labels_count"] == 10 and species["labels_count"] == 3
    assert species["attributes"] == {"shiny": ["no", "yes"], "shadow": ["no", "yes"]}
    assert species["requested"] == "species:latest"
    assert digits["state"] == species["state"] == "ready"
    assert "val_top1" in digits["metrics"]
    assert digits["batching"]["max_batch_size"] == 8


def test_each_model_has_its_own_batching_queue(server: Server, species_model) -> None:
    """Concurrent requests for two models: every batch holds one model's images only (the
    per-model batch-size histograms add up to each model's own request count)."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    def counts(tag: str) -> float:
        name, version = tag.split(":")
        text = server.get("/metrics").text
        pattern = (
            rf'^imageiq_batch_size_sum\{{model_name="{name}",model_version="{version}"\}} (\S+)$'
        )
        found = re.search(pattern, text, re.M)
        return float(found.group(1)) if found else 0.0

    before = {t: counts(t) for t in (server.model.tag, species_model.tag)}
    data = encode(photo(), "PNG")
    refs = [server.model.tag, species_model.tag] * 24
    with ThreadPoolExecutor(12) as pool:
        bodies = list(
            pool.map(
                lambda r: classify(server, {"image": ("a.png", data)}, data={"model": r}), refs
            )
        )
    assert [b.status_code for b in bodies] == [200] * len(refs)
    assert [f"{b.json()['model']['name']}:{b.json()['model']['version']}" for b in bodies] == refs
    after = {t: counts(t) for t in before}
    assert after[server.model.tag] - before[server.model.tag] == 24
    assert after[species_model.tag] - before[species_model.tag] == 24


def test_openapi_documents_every_endpoint(server: Server) -> None:
    spec = server.get("/docs.json").json()
    paths = spec["paths"]
    for path, method in [
        ("/v1/classify", "post"),
        ("/v1/classify/batch", "post"),
        ("/v1/categories", "get"),
        ("/v1/models", "get"),
    ]:
        assert method in paths[path], path
    classify_op = paths["/v1/classify"]["post"]
    content = classify_op["requestBody"]["content"]
    assert "image" in content["multipart/form-data"]["schema"]["properties"]
    assert "image_b64" in content["application/json"]["schema"]["properties"]
    assert {"200", "404", "413", "415", "422", "503"} <= set(classify_op["responses"])
    batch = paths["/v1/classify/batch"]["post"]["requestBody"]["content"]
    assert batch["multipart/form-data"]["schema"]["properties"]["images"]["type"] == "array"
    assert "/internal/infer" not in paths


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        # Nested deeper than any request needs: refused by its value count, unparsed.
        (b"[" * 100_000 + b"]" * 100_000, 413, "payload_too_large"),
        (b'{"images_b64": [' + b"1," * 100_000 + b"1]}", 413, "payload_too_large"),
        (b'{"image_b64": "aGVsbG8=",', 400, "malformed_request"),
        (b"\xff\xfe not utf-8", 400, "malformed_request"),
        (b"", 400, "malformed_request"),
        (b'"just a string"', 400, "invalid_request"),
        (b'{"image_b64": 123}', 422, "missing_image"),
        (b'{"image_b64": null}', 422, "missing_image"),
        (rb'{"image_b64": "\u00e9\u00e9\u00e9\u00e9"}', 422, "invalid_base64"),
        (b'{"image_b64": "aGVsbG8=", "top_k": 1e309}', 422, "invalid_parameter"),
        (b'{"image_b64": "aGVsbG8=", "top_k": [1]}', 422, "invalid_parameter"),
        (b'{"image_b64": "aGVsbG8=", "model": {"$ne": 1}}', 422, "invalid_parameter"),
    ],
)
def test_hostile_json_bodies_get_4xx(server: Server, body: bytes, status: int, code: str) -> None:
    resp = server.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert_error(resp, status, code)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"images_b64": "not a list"}', 422, "missing_image"),
        (b'{"images_b64": [1, 2]}', 422, "missing_image"),
        (b'{"images_b64": [' + b'"aGVsbG8=",' * 8 + b'"aGVsbG8="]}', 413, "too_many_images"),
    ],
)
def test_hostile_json_batch_bodies_get_4xx(
    server: Server, body: bytes, status: int, code: str
) -> None:
    resp = server.post(
        "/v1/classify/batch",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert_error(resp, status, code)
