"""The Grad-CAM core (imageiq/explain.py) without a server: every architecture the registry
builds (random weights, tiny inputs), the block each explains, the map's geometry and range,
the target (top-1 by default, a chosen label, an attribute head), refused heads and labels,
and the explainer's model cache and one-at-a-time turn."""

from __future__ import annotations

import io
import threading
import time

import anyio
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from imageiq import errors
from imageiq.architectures import (
    ARCHITECTURES,
    CONV_BLOCKS,
    MIN_EXPLAIN_CELLS,
    build_model,
    explain_layer,
)
from imageiq.explain import (
    MAX_GRID_SIDE,
    Explainable,
    Explainer,
    _crop_box,
    _project,
    explain,
)
from imageiq.inference import Classifier, ModelIO
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import ModelCard, RegisteredModel
from imageiq.settings import Settings
from tests.imageiq.images_helpers import encode

HEADS = {"shiny": ["no", "yes"], "shadow": ["no", "maybe", "yes"]}


def shape(kind: str, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small PNG: a yellow disc top left, or a blue bar on the right, on grey."""
    image = Image.new("RGB", size, (90, 90, 90))
    draw = ImageDraw.Draw(image)
    if kind == "disc":
        draw.ellipse((3, 3, 18, 18), fill=(250, 230, 40))
    else:
        draw.rectangle((size[0] - 12, 2, size[0] - 6, size[1] - 3), fill=(40, 60, 250))
    return encode(image, "PNG")


def card(arch: str, *, crop: int = 32) -> ModelCard:
    return ModelCard(
        architecture=arch,
        labels=["bar", "disc", "square"],
        heads=HEADS,
        preprocessing=PreprocessConfig(resize_size=crop + 4, crop_size=crop),
    )


def explainable(arch: str, *, crop: int = 32) -> Explainable:
    torch.manual_seed(0)
    net = build_model(arch=arch, num_classes=3, heads={k: len(v) for k, v in HEADS.items()})
    return Explainable.of(RegisteredModel("t", "v1", card(arch, crop=crop), ""), net)


@pytest.fixture(scope="module")
def nets() -> dict[str, Explainable]:
    return {arch: explainable(arch) for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_is_explained(nets: dict[str, Explainable], arch: str) -> None:
    e = nets[arch]
    disc, bar = (explain(e, shape(k), max_pixels=10**6) for k in ("disc", "bar"))
    for out in (disc, bar):
        assert out.head == "label" and out.label in ("bar", "disc", "square")
        assert 0.0 < out.score < 1.0
        assert (out.width, out.height) == (40, 30)  # the image's size: never upscaled
        assert (out.image_width, out.image_height) == (40, 30)
        png = Image.open(io.BytesIO(out.png))
        assert png.format == "PNG" and png.mode == "RGBA" and png.size == (40, 30)
        grid = np.array(out.grid)
        assert grid.shape == (24, 32)  # the aspect ratio, at most 32 a side
        assert np.isfinite(grid).all() and grid.min() >= 0.0 and grid.max() <= 1.0
        assert out.layer.startswith("backbone.")
        # Opacity rises with the value, to 0.8; transparent outside the crop the model saw.
        alpha = np.asarray(png)[..., 3]
        assert alpha.max() <= 204  # (0 when the map has no positive cell, as can happen)
        left, top, width, height = out.region
        outside = np.ones_like(alpha, dtype=bool)
        outside[top : top + height, left : left + width] = False
        assert outside.any() and alpha[outside].max() == 0
    # A disc top left and a bar on the right: not the same map.
    assert not np.allclose(disc.grid, bar.grid, atol=1e-3)
    assert max(np.max(disc.grid), np.max(bar.grid)) > 0.9  # normalised: peaks near 1


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_has_an_explain_layer(arch: str) -> None:
    family = ARCHITECTURES[arch].family
    assert family in CONV_BLOCKS
    net = build_model(arch=arch, num_classes=3)
    # At the usual sizes: the last block, the one that feeds the global pool.
    blocks = CONV_BLOCKS[family](net.backbone)
    name, layer = explain_layer(net, arch=arch, input_size=128)
    assert name == f"backbone.{blocks[-1]}" and layer is net.get_submodule(name)
    # At a tiny size the last block is 1x1 (the same map for every image): a finer one.
    name16, _ = explain_layer(net, arch=arch, input_size=16)
    assert name16 in {f"backbone.{b}" for b in blocks[:-1]}
    sizes: dict[str, int] = {}
    handle = net.get_submodule(name16).register_forward_hook(
        lambda _m, _i, out: sizes.__setitem__("side", min(out.shape[-2:]))
    )
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, 16, 16))
    handle.remove()
    assert sizes["side"] >= MIN_EXPLAIN_CELLS
    net.train()
    explain_layer(net, arch=arch, input_size=16)
    assert net.training  # the mode is left as it was


def test_default_target_is_the_top_1_and_scores_match_the_classifier(
    nets: dict[str, Explainable],
) -> None:
    e = nets["resnet18"]
    data = shape("disc")
    classifier = Classifier(e.model, e.net, torch.device("cpu"))
    tensor = classifier.prepare(classifier.decode(data, max_pixels=10**6).image)
    probs = classifier.predict_proba(tensor.unsqueeze(0))
    top = classifier.postprocess(probs, top_k=1)[0]
    out = explain(e, data, max_pixels=10**6)
    assert out.label == top.labels[0].label
    assert out.score == pytest.approx(top.labels[0].score, abs=1e-5)
    for label in ("bar", "disc", "square"):
        chosen = explain(e, data, label=label, max_pixels=10**6)
        index = ["bar", "disc", "square"].index(label)
        assert chosen.label == label
        assert chosen.score == pytest.approx(float(probs["label"][0, index]), abs=1e-5)


def test_an_attribute_head(nets: dict[str, Explainable]) -> None:
    e = nets["efficientnet_b0"]
    data = shape("bar")
    classifier = Classifier(e.model, e.net, torch.device("cpu"))
    tensor = classifier.prepare(classifier.decode(data, max_pixels=10**6).image)
    best = classifier.postprocess(classifier.predict_proba(tensor.unsqueeze(0)), top_k=1)[0]
    out = explain(e, data, head="shadow", max_pixels=10**6)
    assert out.head == "shadow" and out.label == best.attributes["shadow"].label
    assert out.score == pytest.approx(best.attributes["shadow"].score, abs=1e-5)
    maybe = explain(e, data, head="shadow", label="maybe", max_pixels=10**6)
    assert maybe.label == "maybe"
    assert not np.allclose(
        explain(e, data, head="shiny", label="yes", max_pixels=10**6).grid,
        explain(e, data, head="label", label="disc", max_pixels=10**6).grid,
        atol=1e-3,
    )


def test_unknown_head_and_label_are_refused_with_the_valid_ones(
    nets: dict[str, Explainable],
) -> None:
    e = nets["baseline_cnn"]
    with pytest.raises(errors.UnknownHead) as head:
        explain(e, shape("disc"), head="shiney", max_pixels=10**6)
    assert head.value.status == 422 and head.value.code == "unknown_head"
    assert head.value.details["heads"] == ["label", "shiny", "shadow"]
    with pytest.raises(errors.UnknownLabel) as label:
        explain(e, shape("disc"), head="shiny", label="bar", max_pixels=10**6)
    assert label.value.status == 422 and label.value.code == "unknown_label"
    assert label.value.details["labels"] == ["no", "yes"]
    with pytest.raises(errors.UnknownLabel):
        explain(e, shape("disc"), label="yes", max_pixels=10**6)  # a shiny value, not a class


def test_bad_images_get_the_classify_errors(nets: dict[str, Explainable]) -> None:
    e = nets["baseline_cnn"]
    with pytest.raises(errors.UnsupportedImageFormat):
        explain(e, b"just some text\n", max_pixels=10**6)
    with pytest.raises(errors.CorruptImage):
        explain(e, shape("disc")[:60], max_pixels=10**6)
    with pytest.raises(errors.ImageTooLarge):
        explain(e, shape("disc"), max_pixels=1000)
    with pytest.raises(errors.EmptyImage):
        explain(e, b"", max_pixels=10**6)


def test_map_follows_the_image_aspect_ratio_and_the_crop() -> None:
    model_io = ModelIO(RegisteredModel("t", "v1", card("baseline_cnn", crop=16), ""))
    # 80x20: resized to 20 px high (80 wide), the centre 16x16 kept: x 32..48, y 2..18.
    box = _crop_box(model_io, width=80, height=20)
    assert box == pytest.approx((32 / 80, 2 / 20, 16 / 80, 16 / 20))
    ones = torch.ones(16, 16)
    drawn = _project(ones, box=box, size=(80, 20)).numpy()
    assert drawn[:, 32:48][2:18].min() > 0.999
    assert drawn[:, :32].max() == 0.0 and drawn[:, 48:].max() == 0.0
    assert drawn[:2].max() == 0.0 and drawn[18:].max() == 0.0
    # Past max_aspect_ratio the resized image is narrower than the crop, which pads it.
    tall = _crop_box(model_io, width=20, height=2000)
    assert tall[1] > 0 and tall[3] < 1
    assert _project(ones, box=tall, size=(1, 100)).numpy().max() > 0.999
    # And the other way round: a crop taller than the (1 px high) resized image.
    flat = _crop_box(model_io, width=4000, height=10)
    assert flat[0] < 0.5 < flat[0] + flat[2] and flat[3] > 1.0
    # Sizes: the longest side at most 512 (the overlay) and 32 (the grid), never upscaled.
    e = explainable("baseline_cnn", crop=16)
    wide = explain(e, encode(Image.new("RGB", (1200, 300), (10, 200, 10)), "PNG"), max_pixels=10**7)
    assert (wide.width, wide.height) == (512, 128)
    assert np.array(wide.grid).shape == (8, MAX_GRID_SIDE)
    assert wide.region == (480, 30, 240, 240)  # 16 of the 80x20 resized pixels, centred
    small = explain(e, encode(Image.new("RGB", (9, 6)), "PNG"), max_pixels=10**7)
    assert (small.width, small.height) == (9, 6) and np.array(small.grid).shape == (6, 9)


def test_an_all_zero_map_stays_zero() -> None:
    e = explainable("baseline_cnn", crop=16)
    with torch.no_grad():
        for head in e.net.heads.values():
            head.weight.zero_()  # no gradient anywhere: no positive evidence
    out = explain(e, shape("disc"), max_pixels=10**6)
    assert np.array(out.grid).max() == 0.0
    assert np.asarray(Image.open(io.BytesIO(out.png)))[..., 3].max() == 0


def test_gradients_work_where_serving_turned_them_off(nets: dict[str, Explainable]) -> None:
    e = nets["mobilenet_v3_small"]
    expected = explain(e, shape("disc"), max_pixels=10**6).grid
    with torch.inference_mode():
        assert explain(e, shape("disc"), max_pixels=10**6).grid == expected
    with torch.no_grad():
        assert explain(e, shape("disc"), max_pixels=10**6).grid == expected


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> list[RegisteredModel]:
    """Two tiny models in the test model store (what the service explains from)."""
    from imageiq.registry import register_model

    out = []
    for arch in ("baseline_cnn", "mobilenet_v3_small"):
        torch.manual_seed(1)
        net = build_model(arch=arch, num_classes=3, heads={k: len(v) for k, v in HEADS.items()})
        name = "explain-" + arch.replace("_", "-")
        out.append(register_model(net, card(arch, crop=16), name=name))
    return out


def test_explainer_loads_from_the_store_and_keeps_the_last_few(
    registered: list[RegisteredModel],
) -> None:
    explainer = Explainer(settings=Settings(explain_cache_models=1))
    first, second = registered
    out = anyio.run(lambda: explainer.explain(first, shape("disc"), head="shiny", label=None))
    assert out.head == "shiny" and out.label in ("no", "yes")
    assert list(explainer._models) == [first.tag]
    cached = explainer._models[first.tag]
    explainer.explain_now(first, shape("bar"), label=None)
    assert explainer._models[first.tag] is cached  # loaded once
    explainer.explain_now(second, shape("bar"), label=None)
    assert list(explainer._models) == [second.tag]  # one kept: the least recent went
    # The copy is the registered weights, eager fp32, frozen.
    assert all(not p.requires_grad for p in explainer._models[second.tag].net.parameters())
    assert next(explainer._models[second.tag].net.parameters()).dtype == torch.float32


def test_explainer_runs_one_at_a_time_and_refuses_after_waiting(
    registered: list[RegisteredModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    explainer = Explainer(settings=Settings(max_latency_ms=300))
    model = registered[0]
    explainer.explain_now(model, shape("disc"), label=None)  # loaded
    running, most = 0, 0
    guard = threading.Lock()
    real = explainer.explain_now

    def slow(*args: object, **kwargs: object) -> object:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.2)
        try:
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with guard:
                running -= 1

    monkeypatch.setattr(explainer, "explain_now", slow)
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await explainer.explain(model, shape("disc"), label=None)
            outcomes.append("ok")
        except errors.Overloaded as e:
            assert e.status == 503 and e.retry_after
            outcomes.append("overloaded")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(one)

    anyio.run(main)
    assert most == 1  # never two at once
    assert "ok" in outcomes and "overloaded" in outcomes  # 4 x 0.2 s > 0.3 s of waiting
    # A bad head is refused before waiting for a turn.
    with pytest.raises(errors.UnknownHead):
        anyio.run(lambda: explainer.explain(model, shape("disc"), head="nope", label=None))
