"""Why a model said what it said: a Grad-CAM heat map of one image, for one head's class.

Grad-CAM (Selvaraju et al., 2017; Captum's ``LayerGradCam``) weighs a convolutional block's
channels by the gradient of the target logit and keeps the positive part: where the image
pushed the model towards that class. Gradients rule out the serving runner (compiled, bf16,
ONNX int8, or in the model process), so :class:`Explainer` loads an eager fp32 copy of the
model from the model store on the CPU, keeps the last few (``explain_cache_models``), and
runs one explanation at a time per process in a worker thread: the event loop never waits
on it, and a burst of explanations cannot take every core from classification.

The image goes through the model's own eval transform exactly as ``/v1/classify`` decodes it
(:func:`imageiq.classify.prepare_image`); the map, computed on the centre crop the model saw,
is drawn back onto the whole image, so it overlays the preview as the client shows it.
"""

from __future__ import annotations

import functools
import io
import math
import threading
import time
from dataclasses import dataclass

import anyio
import numpy as np
import torch
from cachetools import LRUCache
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image
from torch import nn
from torch.nn import functional as F

from imageiq import errors
from imageiq.admission import Budget
from imageiq.architectures import MAIN_HEAD, ImageIQNet, explain_layer
from imageiq.classify import prepare_image
from imageiq.inference import ModelIO
from imageiq.metrics import metrics
from imageiq.registry import RegisteredModel, load_model
from imageiq.settings import Settings

METHOD = "grad-cam"
# The overlay's longest side (never more than the image's own), and the grid's.
MAX_OVERLAY_SIDE = 512
MAX_GRID_SIDE = 32
COLORMAP = "jet"
# The overlay's opacity where the map is 1; it falls linearly to 0 where the map is 0.
OVERLAY_MAX_ALPHA = 0.8


@dataclass(frozen=True)
class Explanation:
    head: str
    label: str  # the target: a value of the head
    score: float  # its softmax probability, calibrated as /v1/classify scores it
    layer: str  # the block explained, e.g. "backbone.layer4"
    width: int  # of the overlay (the image's aspect ratio)
    height: int
    png: bytes  # RGBA: the colour map, alpha rising with the value
    grid: list[list[float]]  # the map over the whole image, 0..1, at most 32 a side
    # The centre crop the model saw, in displayed image pixels (left, top, width, height);
    # the map is 0 outside it.
    region: tuple[int, int, int, int]
    image_width: int  # as displayed (after EXIF orientation)
    image_height: int
    seconds: float  # decode to PNG


@dataclass(frozen=True)
class Explainable:
    """A registered model ready for Grad-CAM: its eager network (weights frozen: only the
    block's gradient is needed), the block explained and its eval transform."""

    model: RegisteredModel
    net: ImageIQNet
    layer_name: str
    layer: nn.Module
    io: ModelIO

    @classmethod
    def of(cls, model: RegisteredModel, net: ImageIQNet) -> Explainable:
        net = net.eval().requires_grad_(False)
        size = model.card.preprocessing.crop_size
        name, layer = explain_layer(net, arch=model.card.architecture, input_size=size)
        return cls(model, net, name, layer, ModelIO(model))


def check_target(model: RegisteredModel, *, head: str, label: str | None) -> None:
    """422 ``unknown_head`` / ``unknown_label`` (listing the valid ones) before any work."""
    _target_index(model, head=head, label=label)


def explain(
    explainable: Explainable,
    data: bytes,
    *,
    head: str = MAIN_HEAD,
    label: str | None = None,
    max_pixels: int,
    draft: bool = True,
    pixels: Budget | None = None,
    wait_s: float = 0.0,
) -> Explanation:
    """The Grad-CAM of ``data`` for ``head``'s ``label`` (default: the model's top value).
    CPU-bound and not thread-safe per network: :class:`Explainer` runs it in a worker thread,
    one at a time."""
    started = time.perf_counter()
    model = explainable.model
    target = _target_index(model, head=head, label=label)
    prepared = prepare_image(
        explainable.io, data, max_pixels=max_pixels, draft=draft, pixels=pixels, wait_s=wait_s
    )
    x = explainable.io.transform.normalize(prepared.tensor.unsqueeze(0))
    net = explainable.net

    def logits(batch: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = net(batch)[head]
        return out

    with torch.no_grad():
        temperature = float(model.card.temperature.get(head, 1.0))
        probs = torch.softmax(logits(x)[0].float() / temperature, dim=0)
    if target is None:
        target = int(probs.argmax())
    # Serving may turn gradients (or inference mode) off; both are per thread.
    with torch.inference_mode(False), torch.enable_grad():
        cam = LayerGradCam(logits, explainable.layer).attribute(
            x, target=target, relu_attributions=True
        )
    crop = model.card.preprocessing.crop_size
    upsampled = LayerAttribution.interpolate(cam.detach(), (crop, crop), "bilinear")[0, 0]
    heat = _normalised(upsampled)
    width, height = prepared.width, prepared.height
    box = _crop_box(explainable.io, width=width, height=height)
    overlay = _project(heat, box=box, size=_fit(width, height, MAX_OVERLAY_SIDE))
    grid = _project(heat, box=box, size=_fit(width, height, MAX_GRID_SIDE))
    values = model.card.labels if head == MAIN_HEAD else model.card.heads[head]
    return Explanation(
        head=head,
        label=values[target],
        score=float(probs[target]),
        layer=explainable.layer_name,
        width=overlay.shape[1],
        height=overlay.shape[0],
        png=_overlay_png(overlay),
        grid=[[round(float(v), 4) for v in row] for row in grid.tolist()],
        region=_region(box, width=width, height=height),
        image_width=width,
        image_height=height,
        seconds=time.perf_counter() - started,
    )


class Explainer:
    """Explanations for a service process: an eager copy per model (the last
    ``explain_cache_models`` used), one explanation at a time, in a worker thread."""

    def __init__(self, *, settings: Settings, pixels: Budget | None = None) -> None:
        self.settings = settings
        self.pixels = pixels  # the decoded-pixel budget classification holds images in
        self._models: LRUCache[str, Explainable] = LRUCache(maxsize=settings.explain_cache_models)
        self._turn = anyio.CapacityLimiter(1)
        self._lock = threading.Lock()  # the same rule for callers on other threads

    async def explain(
        self,
        model: RegisteredModel,
        data: bytes,
        *,
        head: str = MAIN_HEAD,
        label: str | None = None,
    ) -> Explanation:
        """The explanation of ``data`` by ``model`` (a served version). Waits for its turn up
        to ``max_latency_ms`` (as an image waits for its batch), then 503 ``overloaded``."""
        check_target(model, head=head, label=label)
        wait_s = self.settings.max_latency_ms / 1000
        turn = False
        with anyio.move_on_after(wait_s):
            await self._turn.acquire()
            turn = True
        if not turn:
            raise errors.Overloaded(
                f"Explanations wait one at a time; this one waited {wait_s:g} s for its turn.",
                retry_after=max(1, math.ceil(wait_s / 10)),
            )
        try:
            return await anyio.to_thread.run_sync(
                functools.partial(self.explain_now, model, data, head=head, label=label)
            )
        finally:
            self._turn.release()

    def explain_now(
        self,
        model: RegisteredModel,
        data: bytes,
        *,
        head: str = MAIN_HEAD,
        label: str | None = None,
    ) -> Explanation:
        """:meth:`explain` on the calling thread (blocking), under the same one-at-a-time rule."""
        with self._lock:
            explainable = self._models.get(model.tag)
            if explainable is None:
                _, net = load_model(model.tag, device="cpu")
                explainable = self._models[model.tag] = Explainable.of(model, net)
            explanation = explain(
                explainable,
                data,
                head=head,
                label=label,
                max_pixels=self.settings.max_image_pixels,
                draft=self.settings.jpeg_draft,
                pixels=self.pixels,
                wait_s=self.settings.max_latency_ms / 1000,
            )
        metrics().explain_seconds.labels(model.name, model.version).observe(explanation.seconds)
        return explanation


def _target_index(model: RegisteredModel, *, head: str, label: str | None) -> int | None:
    card = model.card
    heads = {MAIN_HEAD: card.labels, **card.heads}
    if head not in heads:
        raise errors.UnknownHead(
            f"{model.tag} has no head {head[:100]!r}. Only {', '.join(heads)} are supported.",
            details={"field": "head", "heads": list(heads)},
        )
    if label is None:
        return None
    values = heads[head]
    if label not in values:
        shown = ", ".join(values[:20]) + (", ..." if len(values) > 20 else "")
        raise errors.UnknownLabel(
            f"{label[:100]!r} is not a value of head {head!r} of {model.tag}: {shown}.",
            details={"field": "label", "head": head, "labels": values[:1000]},
        )
    return values.index(label)


def _normalised(cam: torch.Tensor) -> torch.Tensor:
    """ReLU, then divided by the peak: 0..1; a map with no positive cell stays 0."""
    cam = torch.nan_to_num(cam.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    peak = float(cam.max())
    return cam / peak if peak > 0 else torch.zeros_like(cam)


def _crop_box(model_io: ModelIO, *, width: int, height: int) -> tuple[float, float, float, float]:
    """Where the centre crop lies on the image, as fractions of its width and height
    (left, top, width, height): the transform resizes, then crops (or pads) to the square,
    as torchvision's ``center_crop`` does."""
    crop = model_io.transform.config.crop_size
    resized_h, resized_w = model_io.transform.resized_size(width, height)

    def offset(size: int) -> int:
        return -((crop - size) // 2) if crop > size else round((size - crop) / 2.0)

    return (
        offset(resized_w) / resized_w,
        offset(resized_h) / resized_h,
        crop / resized_w,
        crop / resized_h,
    )


def _fit(width: int, height: int, most: int) -> tuple[int, int]:
    """(width, height) at the image's aspect ratio, the longest side at most ``most`` and
    never more than the image's."""
    scale = min(1.0, most / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _project(
    heat: torch.Tensor, *, box: tuple[float, float, float, float], size: tuple[int, int]
) -> torch.Tensor:
    """The crop's map sampled (bilinear) at each pixel centre of a ``size`` image: 0 outside
    the crop."""
    width, height = size
    left, top, box_w, box_h = box
    u = ((torch.arange(width, dtype=torch.float32) + 0.5) / width - left) / box_w
    v = ((torch.arange(height, dtype=torch.float32) + 0.5) / height - top) / box_h
    grid = torch.stack(torch.meshgrid(u * 2 - 1, v * 2 - 1, indexing="xy"), dim=-1)
    sampled = F.grid_sample(
        heat[None, None], grid[None], mode="bilinear", padding_mode="border", align_corners=False
    )[0, 0]
    inside = ((v >= 0) & (v <= 1))[:, None] & ((u >= 0) & (u <= 1))[None, :]
    return (sampled * inside).clamp(0, 1)


def _region(
    box: tuple[float, float, float, float], *, width: int, height: int
) -> tuple[int, int, int, int]:
    """The crop box in image pixels, clipped to the image."""
    left, top = max(0.0, box[0]), max(0.0, box[1])
    right, bottom = min(1.0, box[0] + box[2]), min(1.0, box[1] + box[3])
    x0, y0 = round(left * width), round(top * height)
    return x0, y0, round(right * width) - x0, round(bottom * height) - y0


@functools.cache
def _palette() -> np.ndarray:
    """The colour map as 256 RGB rows (matplotlib, imported on first use)."""
    import matplotlib

    colours = matplotlib.colormaps[COLORMAP](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.rint(colours * 255).astype(np.uint8)


def _overlay_png(heat: torch.Tensor) -> bytes:
    values = heat.numpy()
    rgba = np.empty((*values.shape, 4), dtype=np.uint8)
    rgba[..., :3] = _palette()[np.rint(values * 255).astype(np.intp)]
    rgba[..., 3] = np.rint(values * (255 * OVERLAY_MAX_ALPHA)).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgba).save(out, format="PNG")
    return out.getvalue()
