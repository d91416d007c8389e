"""POST /v1/explain through the real service (the session's ``server``: the digits ResNet as
the active model and the EfficientNet species model with two attribute heads): the answer
and its heat map, the PNG answer, the same 4xx as /v1/classify for bad input, unknown model,
head and label, keys, scopes and the shared rate limit."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
from PIL import Image

from imageiq.registry import RegisteredModel
from tests.bentos.test_service import assert_error, classify
from tests.conftest import Server
from tests.imageiq.images_helpers import encode, photo, png_header_only

pytestmark = pytest.mark.slow


def explain(server: Server, files: dict | None = None, **kwargs: object) -> httpx.Response:
    return server.post("/v1/explain", files=files, timeout=60, **kwargs)


def digit(digits_dir: Path, value: int, index: int = 0) -> bytes:
    return sorted((digits_dir / str(value)).iterdir())[index].read_bytes()


def png_of(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def new_key(server: Server, scopes: list[str], rate_limit: int | None = None) -> dict[str, str]:
    from imageiq.backends import open_database
    from imageiq.keys import create_key
    from imageiq.settings import Settings

    engine = open_database(Settings(data_dir=Path(server.env["IMAGEIQ_DATA_DIR"])))
    try:
        key, _ = create_key(
            engine, name="explain", scopes=scopes, pepper=b"", rate_limit_per_minute=rate_limit
        )
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {key}"}


def test_explains_the_top_label_of_a_digit(server: Server, digits_dir: Path) -> None:
    data = digit(digits_dir, 7)
    resp = explain(server, {"image": ("7.png", data, "image/png")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == {"name": server.model.name, "version": server.model.version}
    assert body["head"] == "label" and body["method"] == "grad-cam"
    assert body["layer"] == "backbone.layer1"  # 16 px: layer4 would be a single cell
    # The target is what /v1/classify answers first, with its score (both fp32 here).
    top = classify(server, {"image": ("7.png", data)}).json()["predictions"][0]
    assert body["target"]["label"] == top["label"]
    assert body["target"]["score"] == pytest.approx(top["score"], abs=1e-4)
    heatmap = body["heatmap"]
    assert (heatmap["width"], heatmap["height"]) == (8, 8)  # the 8x8 scan: never upscaled
    png = png_of(heatmap["png"])
    assert png.format == "PNG" and png.mode == "RGBA" and png.size == (8, 8)
    grid = np.array(heatmap["grid"])
    assert grid.shape == (8, 8) and grid.min() >= 0.0 and 0.0 < grid.max() <= 1.0
    assert heatmap["region"] == {"left": 0, "top": 0, "width": 8, "height": 8}
    assert body["timing_ms"] > 0
    assert resp.headers["content-type"] == "application/json"
    assert "/explain" in server.get("/v1/openapi.json").json()["paths"]


def test_two_digits_get_different_maps(server: Server, digits_dir: Path) -> None:
    grids = []
    for value in (0, 1):
        resp = explain(server, {"image": ("d.png", digit(digits_dir, value))})
        assert resp.status_code == 200, resp.text
        grids.append(np.array(resp.json()["heatmap"]["grid"]))
    assert not np.allclose(grids[0], grids[1], atol=1e-3)
    # The same image twice: the same map (nothing random, whatever ran in between).
    again = explain(server, {"image": ("d.png", digit(digits_dir, 0))}).json()
    assert np.array_equal(np.array(again["heatmap"]["grid"]), grids[0])


def test_accept_image_png_answers_the_overlay_itself(server: Server, digits_dir: Path) -> None:
    files = {"image": ("3.png", digit(digits_dir, 3))}
    as_json = explain(server, files).json()
    resp = explain(server, files, headers={"Accept": "image/png"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    assert resp.content == base64.b64decode(as_json["heatmap"]["png"])
    assert unquote(resp.headers["x-explain-label"]) == as_json["target"]["label"]
    assert float(resp.headers["x-explain-score"]) == pytest.approx(
        as_json["target"]["score"], abs=1e-6
    )
    # JSON unless the client prefers the PNG.
    for accept in ("*/*", "application/json", "image/png;q=0.5, application/json"):
        resp = explain(server, files, headers={"Accept": accept})
        assert resp.headers["content-type"] == "application/json", accept


def test_a_chosen_label_as_field_query_or_json(server: Server, digits_dir: Path) -> None:
    data = digit(digits_dir, 5)
    field = explain(server, {"image": ("5.png", data)}, data={"label": "6"}).json()
    assert field["target"]["label"] == "6"
    query = server.post("/v1/explain?label=6", files={"image": ("5.png", data)}).json()
    as_json = server.post(
        "/v1/explain", json={"image_b64": base64.b64encode(data).decode(), "label": "6"}
    ).json()
    assert field["target"] == query["target"] == as_json["target"]
    assert field["heatmap"] == query["heatmap"] == as_json["heatmap"]


def test_an_attribute_head_of_the_species_model(
    server: Server, species_model: RegisteredModel
) -> None:
    data = encode(photo(60, 40, seed=3), "PNG")
    resp = explain(server, {"image": ("s.png", data)}, data={"model": "species", "head": "shiny"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"]["name"] == "species" and body["head"] == "shiny"
    classified = classify(server, {"image": ("s.png", data)}, data={"model": "species"}).json()
    assert body["target"]["label"] == classified["attributes"]["shiny"]["label"]
    assert body["target"]["score"] == pytest.approx(
        classified["attributes"]["shiny"]["score"], abs=1e-4
    )
    assert (body["heatmap"]["width"], body["heatmap"]["height"]) == (60, 40)
    assert np.array(body["heatmap"]["grid"]).shape == (21, 32)
    assert body["layer"].startswith("backbone.features.")
    chosen = explain(
        server,
        {"image": ("s.png", data)},
        data={"model": "species", "head": "shadow", "label": "yes"},
    ).json()
    assert chosen["head"] == "shadow" and chosen["target"]["label"] == "yes"


BAD_UPLOADS = [
    {"image": ("notes.txt", b"just some text\n", "text/plain")},
    {"image": ("doc.pdf", b"%PDF-1.4\n%%EOF\n", "application/pdf")},
    {"image": ("empty.png", b"", "image/png")},
    {"picture": ("a.png", encode(photo(), "PNG"), "image/png")},
    {"image": (None, b"http://127.0.0.1:1/x.png")},  # a text field, not a file
    {"image": ("a.jpg", encode(photo(), "JPEG")[:300], "image/jpeg")},
    {"image": ("bomb.png", png_header_only(100_000, 100_000), "image/png")},
    {"image": ("big.png", png_header_only(1200, 1000), "image/png")},
    {"image": ("huge.bmp", encode(photo(400, 300), "BMP"), "image/bmp")},
]


@pytest.mark.parametrize("files", BAD_UPLOADS, ids=lambda f: next(iter(f.values()))[0] or "text")
def test_bad_uploads_get_the_4xx_classify_gives(server: Server, files: dict) -> None:
    expected = classify(server, files)
    assert 400 <= expected.status_code < 500
    assert_error(explain(server, files), expected.status_code, expected.json()["error"]["code"])


def test_bad_request_shapes_get_the_4xx_classify_gives(server: Server) -> None:
    shapes: list[dict] = [
        {},  # no body, no content type
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        {"json": {"image": "aGVsbG8="}},  # the key is image_b64
        {"json": {"image_b64": "not base64!"}},
        {"json": ["a list"]},
        {"content": b"{", "headers": {"content-type": "application/json"}},
        {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}},
    ]
    for shape in shapes:
        expected = server.post("/v1/classify", **shape)
        assert 400 <= expected.status_code < 500, shape
        resp = server.post("/v1/explain", **shape)
        assert_error(resp, expected.status_code, expected.json()["error"]["code"])


def test_unknown_model_head_label_and_options(server: Server, digits_dir: Path) -> None:
    files = {"image": ("7.png", digit(digits_dir, 7))}
    error = assert_error(explain(server, files, data={"model": "nope"}), 404, "model_not_found")
    assert error == classify(server, files, data={"model": "nope"}).json()["error"] | {
        "request_id": error["request_id"]
    }
    error = assert_error(explain(server, files, data={"head": "colour"}), 422, "unknown_head")
    assert error["details"]["heads"] == ["label"]
    error = assert_error(
        explain(server, files, data={"model": "species", "head": "colour"}), 422, "unknown_head"
    )
    assert error["details"]["heads"] == ["label", "shiny", "shadow"]
    error = assert_error(explain(server, files, data={"label": "eleven"}), 422, "unknown_label")
    assert error["details"]["labels"] == [str(d) for d in range(10)]
    assert_error(
        explain(server, files, data={"model": "species", "head": "shiny", "label": "7"}),
        422,
        "unknown_label",
    )
    # Classify's options are not explain's; a typo is refused, not ignored.
    for data in ({"top_k": "3"}, {"heads": "shiny"}, {"model": "Not A Tag"}, {"head": ""}):
        assert_error(explain(server, files, data=data), 422, "invalid_parameter")


def test_keys_and_scopes(server: Server, digits_dir: Path) -> None:
    files = {"image": ("7.png", digit(digits_dir, 7))}
    assert_error(explain(server, files, auth=False), 401, "unauthorized")
    error = assert_error(
        explain(server, files, headers=new_key(server, ["label"])), 403, "insufficient_scope"
    )
    assert error["details"] == {"required_scope": "classify"}
    assert explain(server, files, headers=new_key(server, ["classify"])).status_code == 200


def test_explanations_spend_the_classify_rate_limit(server: Server, digits_dir: Path) -> None:
    headers = new_key(server, ["classify"], rate_limit=1)  # its burst, then 1 a minute
    files = {"image": ("7.png", digit(digits_dir, 7))}
    assert explain(server, files, headers=headers).status_code == 200
    sent = 1
    while sent < 200:
        resp = server.post("/v1/explain", headers=headers)  # refused after being charged
        sent += 1
        if resp.status_code == 429:
            break
        assert_error(resp, 415, "unsupported_media_type")
    error = assert_error(resp, 429, "rate_limited")
    assert sent == error["details"]["burst"] + 1 and int(resp.headers["retry-after"]) >= 1
    assert_error(classify(server, files, headers=headers), 429, "rate_limited")


def test_concurrent_explanations(server: Server, digits_dir: Path) -> None:
    files = [{"image": ("d.png", digit(digits_dir, d))} for d in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda f: explain(server, f), files))
    assert [a.status_code for a in answers] == [200] * 6
    alone = explain(server, files[4]).json()
    assert answers[4].json()["heatmap"] == alone["heatmap"]


def test_images_up_to_the_classify_limit(server: Server) -> None:
    data = encode(photo(200, 200, seed=5), "PNG")
    assert 64 * 1024 < len(data) < 256 * 1024  # under IMAGEIQ_MAX_IMAGE_BYTES of `server`
    assert classify(server, {"image": ("p.png", data)}).status_code == 200
    resp = explain(server, {"image": ("p.png", data)})
    assert resp.status_code == 200, resp.text
