"""The real service over HTTP: ``bentoml serve`` in a subprocess (see conftest ``server``)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from imageiq.inference import Classifier
from imageiq_cli.parity import check_parity
from tests.conftest import Server
from tests.imageiq.images_helpers import (
    encode,
    photo,
    png_header_only,
    predict_offline,
    variants,
)

pytestmark = pytest.mark.slow


def classify(server: Server, files: dict | None = None, **kwargs: object) -> httpx.Response:
    return server.post("/v1/classify", files=files, timeout=60, **kwargs)


def assert_error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert error["code"] == code
    assert resp.headers["x-error-code"] == code
    assert error["request_id"] == resp.headers["x-request-id"]
    assert error["message"]
    return error


def test_health_endpoints(server: Server) -> None:
    assert server.get("/livez").status_code == 200
    assert server.get("/readyz").status_code == 200


def test_classify_a_digit(server: Server, digits_dir: Path) -> None:
    path = digits_dir / "7" / "digit_0007.png"
    resp = classify(server, {"image": ("seven.png", path.read_bytes(), "image/png")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == {"name": server.model.name, "version": server.model.version}
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) <= 1.0 + 1e-6
    assert len({p["label"] for p in body["predictions"]}) == 5
    offline = predict_offline(Classifier.load(server.model.tag), [photo_of(path)], top_k=5)[0]
    assert body["predictions"][0]["label"] == offline.labels[0].label


def photo_of(path: Path):
    from imageiq.images import decode_image

    return decode_image(path.read_bytes(), max_pixels=10**8)


def test_serves_the_version_settings_name_not_the_latest(server: Server, newer_model) -> None:
    assert newer_model.version != server.model.version  # a newer version exists in the store
    resp = classify(server, {"image": ("a.png", encode(photo(), "PNG"))})
    assert resp.json()["model"]["version"] == server.model.version


@pytest.mark.parametrize(("top_k", "expected"), [("1", 1), ("3", 3), ("100", 10)])
def test_top_k(server: Server, top_k: str, expected: int) -> None:
    resp = classify(server, {"image": ("a.png", encode(photo(), "PNG"))}, data={"top_k": top_k})
    assert resp.status_code == 200
    assert len(resp.json()["predictions"]) == expected


@pytest.mark.parametrize("top_k", ["0", "101", "-1", "abc", "2.5"])
def test_invalid_top_k(server: Server, top_k: str) -> None:
    resp = classify(server, {"image": ("a.png", encode(photo(), "PNG"))}, data={"top_k": top_k})
    error = assert_error(resp, 422, "invalid_parameter")
    assert "top_k" in error["message"]


@pytest.mark.parametrize("name", sorted(variants()))
def test_every_supported_format(server: Server, name: str) -> None:
    # No content type, or a wrong one: the bytes decide, not the client's label.
    resp = classify(server, {"image": (name, variants()[name], "application/octet-stream")})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 5


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        (
            {"image": ("notes.txt", b"just some text\n", "text/plain")},
            415,
            "unsupported_image_format",
        ),
        (
            {"image": ("doc.pdf", b"%PDF-1.4\n%%EOF\n", "application/pdf")},
            415,
            "unsupported_image_format",
        ),
        ({"image": ("empty.png", b"", "image/png")}, 400, "empty_image"),
        ({"picture": ("a.png", encode(photo(), "PNG"), "image/png")}, 422, "missing_image"),
        ({"image": ("a.jpg", encode(photo(), "JPEG")[:300], "image/jpeg")}, 422, "corrupt_image"),
        (
            {"image": ("bomb.png", png_header_only(100_000, 100_000), "image/png")},
            413,
            "image_too_large",
        ),
        ({"image": ("big.png", png_header_only(1200, 1000), "image/png")}, 413, "image_too_large"),
        (
            {"image": ("huge.bmp", encode(photo(400, 300), "BMP"), "image/bmp")},
            413,
            "payload_too_large",
        ),
    ],
)
def test_bad_uploads_get_4xx_with_a_stable_code(
    server: Server, files: dict, status: int, code: str
) -> None:
    assert_error(classify(server, files), status, code)


def test_image_as_a_text_field_is_not_fetched_or_decoded(server: Server) -> None:
    # A multipart part without a filename is a text field: never a URL to download.
    resp = classify(server, {"image": (None, b"http://127.0.0.1:1/x.png")})
    assert_error(resp, 422, "missing_image")


def test_request_shapes_that_are_neither_multipart_nor_json(server: Server) -> None:
    assert_error(server.post("/v1/classify"), 415, "unsupported_media_type")
    resp = server.post("/v1/classify", content=b"hello", headers={"content-type": "text/plain"})
    assert_error(resp, 415, "unsupported_media_type")
    resp = server.post("/v1/classify", json={"image": "aGVsbG8="})
    assert_error(resp, 422, "missing_image")  # the JSON key is image_b64
    resp = server.post(
        "/v1/classify",
        content=b"garbage",
        headers={"content-type": "multipart/form-data"},
    )
    assert_error(resp, 400, "malformed_request")


def test_oversized_bodies_are_refused_with_or_without_content_length(server: Server) -> None:
    big = b"\0" * (2 * 1024 * 1024)
    assert_error(classify(server, {"image": ("big.bin", big)}), 413, "payload_too_large")

    def chunks():  # no Content-Length: the limit is enforced on the stream
        boundary = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n\r\n'
        yield boundary
        for _ in range(32):
            yield b"\0" * 65536

    resp = server.post(
        "/v1/classify",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert_error(resp, 413, "payload_too_large")


def test_unknown_routes_and_methods(server: Server) -> None:
    assert_error(server.get("/v1/nothing"), 404, "not_found")
    assert_error(server.get("/v1/classify"), 405, "method_not_allowed")
    assert_error(server.delete("/v1/classify"), 405, "method_not_allowed")


def test_there_is_no_internal_endpoint_around_the_limits(server: Server) -> None:
    body = {"tensors": [{"shape": [3, 16, 16], "data": ""}]}
    assert_error(server.post("/internal/infer", json=body), 404, "not_found")


def test_client_request_id_is_echoed(server: Server) -> None:
    """The request id is the server's own; the client's is kept apart and echoed back."""
    resp = server.post("/v1/classify", headers={"X-Request-ID": "client-abc.123"})
    server_id = resp.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", server_id)
    assert resp.json()["error"]["request_id"] == server_id
    assert resp.headers["x-client-request-id"] == "client-abc.123"
    hostile = server.post("/v1/classify", headers={"X-Request-ID": "a b<script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])
    assert "x-client-request-id" not in hostile.headers  # not a valid id: not echoed


def test_served_agrees_with_offline_under_concurrency(server: Server, digits_dir: Path) -> None:
    """Train/serve parity through the real batching path, 8 clients at once."""
    report = check_parity(
        url=server.url,
        data=digits_dir,
        model=None,
        limit=400,
        concurrency=8,
        max_pixels=10**8,
        api_key=server.key,
    )
    assert report.model == server.model.tag
    assert report.images == 400
    assert report.agreement >= 0.995, report.disagreements
    assert report.max_score_diff < 1e-4


def test_concurrent_requests_are_batched(server: Server) -> None:
    labels = f'model_name="{server.model.name}",model_version="{server.model.version}"'

    def batches() -> tuple[float, float]:
        text = server.get("/metrics").text
        found = [
            re.search(rf"^imageiq_batch_size_{kind}\{{{labels}\}} (\S+)$", text, re.M)
            for kind in ("count", "sum")
        ]
        return float(found[0].group(1)), float(found[1].group(1))  # type: ignore[union-attr]

    before = batches()
    data = encode(photo(), "PNG")
    with ThreadPoolExecutor(16) as pool:
        codes = list(
            pool.map(lambda _: classify(server, {"image": ("a.png", data)}).status_code, range(96))
        )
    assert codes == [200] * 96
    count, total = (a - b for a, b in zip(batches(), before, strict=True))
    assert total == 96
    assert count < 96  # some requests shared a batch


def test_metrics_expose_every_stage(server: Server) -> None:
    classify(server, {"image": ("a.png", encode(photo(), "PNG"))})
    classify(server, {"image": ("notes.txt", b"text")})
    text = server.get("/metrics").text
    for name in (
        "imageiq_requests_total",
        "imageiq_request_seconds",
        "imageiq_decode_seconds",
        "imageiq_preprocess_seconds",
        "imageiq_inference_seconds",
        "imageiq_postprocess_seconds",
        "imageiq_batch_size",
        "imageiq_model_ready",
        "imageiq_prediction_confidence",
        "imageiq_images_rejected_total",
    ):
        assert name in text, name
    tag = server.model.tag
    ok = f'imageiq_requests_total{{code="",endpoint="/v1/classify",model="{tag}",status="200"}}'
    assert ok in text
    refused = (
        'imageiq_requests_total{code="unsupported_image_format",'
        f'endpoint="/v1/classify",model="{tag}",status="415"}}'
    )
    assert refused in text
    rejected = 'endpoint="/v1/classify",reason="unsupported_image_format"'
    assert f"imageiq_images_rejected_total{{{rejected}}}" in text
    assert "imageiq_prediction_confidence_bucket" in text
    # The autoscaler's metric: both requests have finished, so none is in flight.
    assert re.search(r"^imageiq_requests_in_flight 0\.0$", text, re.M), text[:2000]


def test_openapi_documents_classify(server: Server) -> None:
    spec = server.get("/docs.json").json()
    op = spec["paths"]["/v1/classify"]["post"]
    assert "multipart/form-data" in op["requestBody"]["content"]
    assert {"200", "413", "415", "422", "503"} <= set(op["responses"])


def test_served_formats_agree_with_offline(server: Server) -> None:
    """Parity on non-square RGB, alpha, palette, 16-bit, CMYK and EXIF-rotated images: the
    resize, crop and colour paths that square grayscale digits never exercise."""
    from imageiq.images import decode_image

    classifier = Classifier.load(server.model.tag)
    for name, data in sorted(variants(seed=3).items()):
        resp = classify(server, {"image": (name, data)}, data={"top_k": "10"})
        assert resp.status_code == 200, (name, resp.text)
        served = [(p["label"], p["score"]) for p in resp.json()["predictions"]]
        image = decode_image(data, max_pixels=10**8)
        offline = [
            (s.label, s.score) for s in predict_offline(classifier, [image], top_k=10)[0].labels
        ]
        assert [label for label, _ in served] == [label for label, _ in offline], name
        assert max(abs(a[1] - b[1]) for a, b in zip(served, offline, strict=True)) < 1e-5


def test_hostile_inputs_never_reach_a_5xx(server: Server) -> None:
    """A burst of broken requests, then: no 5xx in the request metrics, nothing in the log."""
    bad_bodies = [
        b"--b\r\nContent-Disposition: form-data; name=image; filename=x\r\n\r\n\x00\xff",
        b"--b\r\n\r\n\r\n--b--",
        b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n' + b"9" * 5000,
        b"\xff" * 4096,
    ]
    for body in bad_bodies:
        resp = server.post(
            "/v1/classify",
            content=body,
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert 400 <= resp.status_code < 500, (body[:40], resp.text)
    for data in (png_header_only(0, 0), png_header_only(1, 2**31 - 1), b"GIF89a" + b"\0" * 20):
        resp = classify(server, {"image": ("x", data)})
        assert 400 <= resp.status_code < 500, resp.text
    text = server.get("/metrics").text
    assert not re.search(r'^imageiq_requests_total\{[^}]*status="5', text, re.M)
    log = server.log.read_text()
    assert "unhandled error" not in log
    assert not re.search(r"\(status=5\d\d", log)


def test_case_insensitive_content_type(server: Server) -> None:
    boundary = "XyZ"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n0\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + encode(photo(), "PNG")
        + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = server.post(
        "/v1/classify",
        content=body,
        headers={"content-type": f"Multipart/Form-Data; boundary={boundary}"},
    )
    assert_error(resp, 422, "invalid_parameter")
