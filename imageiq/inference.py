"""The pure inference core: a registered model plus its eval transform, no server.

``Classifier.predict_proba(batch)`` is what the service's batching queues, offline
evaluation and the parity check all call, so served and offline predictions come from one
code path (with the same :class:`InferenceOptions`, the same numbers).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from PIL import Image

from imageiq.architectures import MAIN_HEAD, ImageIQNet
from imageiq.errors import ConfigurationError
from imageiq.images import DecodedImage
from imageiq.preprocessing import EvalTransform
from imageiq.registry import RegisteredModel, load_model

if TYPE_CHECKING:
    from imageiq.onnx_int8 import OnnxInt8Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoredLabel:
    label: str
    score: float

    def as_dict(self) -> dict[str, str | float]:
        """As the API, the cache and the prediction log write it."""
        return {"label": self.label, "score": self.score}


@dataclass(frozen=True)
class Prediction:
    """Top-k labels (best first) and the best value of each attribute head."""

    labels: list[ScoredLabel]
    attributes: dict[str, ScoredLabel] = field(default_factory=dict)


@dataclass(frozen=True)
class InferenceOptions:
    """How the forward pass runs. The defaults are the exact fp32 reference that evaluation
    uses; the service's settings pick faster ones by measurement (docs/performance.md)."""

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    # With ``compile``: the largest batch compiled. The batch sizes compiled are the powers
    # of two up to it; any other batch runs as a sum of those (13 = 8 + 4 + 1), so no
    # request ever meets a new shape (and a compilation) after the warm-up.
    max_batch_size: int = 16


def batch_sizes(largest: int) -> tuple[int, ...]:
    """The powers of two up to ``largest``: 16 -> (1, 2, 4, 8, 16)."""
    return tuple(1 << i for i in range(max(1, largest).bit_length()))


def split_batch(n: int, sizes: Sequence[int]) -> list[int]:
    """``n`` as a sum of ``sizes`` (powers of two, ascending), largest first: chunks of the
    largest size, then the binary digits of the rest (13 with sizes up to 8 -> 8, 4, 1)."""
    largest = sizes[-1]
    parts = [largest] * (n // largest)
    rest = n % largest
    parts += [s for s in reversed(sizes) if rest & s]
    return parts


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "auto": bf16 where the hardware runs it natively (CPUs with AVX512-BF16 or AMX; GPUs
    that support it, else fp16), fp32 elsewhere: emulated bf16 is slower than fp32. fp16
    off a GPU is refused."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigurationError(
            "precision 'fp16' needs a CUDA device; on the CPU use 'bf16' or 'fp32'."
        )
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device 'cuda' was asked for but no CUDA GPU is visible.")
    return torch.device(name)


class ModelIO:
    """What a model's images go through around the forward pass: decode, prepare and
    postprocess, all from its card. A front process (``IMAGEIQ_MODEL_PROCESS``) holds this,
    not the weights; :class:`Classifier` adds the network."""

    def __init__(self, model: RegisteredModel) -> None:
        self.model = model
        self.transform = EvalTransform(model.card.preprocessing)
        self.labels = model.card.labels
        self.heads = model.card.heads

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self.model.card.preprocessing.crop_size
        return (3, size, size)

    def decode(self, data: bytes, *, max_pixels: int, draft: bool = True) -> DecodedImage:
        """Untrusted bytes -> image; large JPEGs drafted down towards what the model needs
        (:meth:`EvalTransform.decode`, which training's held-out images go through too)."""
        return self.transform.decode(data, max_pixels=max_pixels, draft=draft)

    def pixels_to_decode(self, data: bytes, *, draft: bool = True) -> int:
        """The pixels :meth:`decode` will hold, read from the header alone."""
        return self.transform.pixels_to_decode(data, draft=draft)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One decoded image -> uint8 [3, S, S]; cheap enough for a request thread."""
        return self.transform.to_uint8(image)

    def postprocess(self, probs: dict[str, torch.Tensor], *, top_k: int) -> list[Prediction]:
        main = probs[MAIN_HEAD]
        k = max(1, min(top_k, main.shape[1]))
        scores, indices = main.topk(k, dim=1)
        out = []
        for row in range(main.shape[0]):
            labels = [
                ScoredLabel(self.labels[i], float(s))
                for s, i in zip(scores[row].tolist(), indices[row].tolist(), strict=True)
            ]
            attributes = {}
            for head, values in self.heads.items():
                score, idx = probs[head][row].max(dim=0)
                attributes[head] = ScoredLabel(values[int(idx)], float(score))
            out.append(Prediction(labels, attributes))
        return out


class Classifier(ModelIO):
    def __init__(
        self,
        model: RegisteredModel,
        net: ImageIQNet,
        device: torch.device,
        options: InferenceOptions | None = None,
    ) -> None:
        super().__init__(model)
        self.options = options or InferenceOptions()
        self.precision = resolve_precision(self.options.precision, device)
        self.device = device
        net = net.eval().to(device)
        if self.options.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self._forward = net
        self.int8: OnnxInt8Runtime | None = None  # set by load() for an onnx-int8 version
        # With compile: the batch sizes compiled; empty when the network runs eagerly.
        self.compiled_sizes: tuple[int, ...] = ()
        if self.options.compile:
            # Static shapes, and frozen weights (see warm_up). Compilation is lazy.
            self._forward = torch.compile(net, dynamic=False)  # type: ignore[assignment]
            self.compiled_sizes = batch_sizes(self.options.max_batch_size)

    @classmethod
    def load(
        cls,
        tag: str,
        *,
        device: str = "cpu",
        options: InferenceOptions | None = None,
        threads: int | None = None,
    ) -> Classifier:
        """The registered model on ``device``; an ``onnx-int8`` version (``imageiq
        quantize``) runs its int8 file in ONNX Runtime on the CPU, whatever the device."""
        from imageiq.onnx_int8 import OnnxInt8Runtime

        model, net = load_model(tag, device="cpu")
        if OnnxInt8Runtime.is_int8(model.card):
            classifier = cls(model, net, torch.device("cpu"))
            classifier.int8 = OnnxInt8Runtime.load(
                model, threads=threads or torch.get_num_threads()
            )
            return classifier
        return cls(model, net, resolve_device(device), options)

    @torch.inference_mode()
    def predict_proba(
        self, batch: torch.Tensor, *, calibrated: bool = True
    ) -> dict[str, torch.Tensor]:
        """uint8 [N, 3, S, S] -> softmax probabilities per head, float32 on the CPU; with the
        card's temperature unless ``calibrated`` is False."""
        if self.int8 is not None:
            # Standardised in NumPy: a torch op would leave torch's OpenMP threads spinning
            # on the cores ONNX Runtime's threads need (docs/performance.md).
            probs = self.int8.predict_proba(self.transform.normalize_array(batch.cpu().numpy()))
            if not calibrated:
                return probs
            # ONNX Runtime gives probabilities: the temperature goes on their logarithms,
            # which differ from the logits only by a constant the softmax ignores.
            return {
                name: torch.softmax(torch.log(p.clamp_min(1e-12)) / self.temperature(name), 1)
                for name, p in probs.items()
            }
        if self.device.type == "cuda":  # page-locked: the copy to the GPU runs asynchronously
            batch = batch.pin_memory()
        x = self.transform.normalize(batch.to(self.device, non_blocking=True))
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = _DTYPES.get(self.precision)
        autocast = (
            torch.autocast(self.device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            logits = self._forward_compiled(x) if self.compiled_sizes else self._forward(x)
        return {
            name: torch.softmax(
                out.float() / (self.temperature(name) if calibrated else 1.0), dim=1
            ).cpu()
            for name, out in logits.items()
        }

    def _forward_compiled(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch in chunks of the compiled sizes, so no new shape is ever compiled."""
        parts = split_batch(x.shape[0], self.compiled_sizes)
        if len(parts) == 1:
            return self._forward(x)
        outs = [self._forward(chunk) for chunk in x.split(parts)]
        return {name: torch.cat([o[name] for o in outs]) for name in outs[0]}

    def warm_up(self) -> None:
        """With compile: compiles every batch size now (about 10 s each for ResNet-50 on 2
        cores), so no request pays for it; if compilation fails (no C++ compiler, a layer
        inductor cannot handle), logs why and runs eagerly instead. Else nothing to do."""
        if not self.compiled_sizes:
            return
        from torch import _dynamo
        from torch._inductor import config as inductor

        try:
            for size in self.compiled_sizes:
                started = time.perf_counter()
                zeros = torch.zeros((size, *self.input_shape), dtype=torch.uint8)
                # Frozen weights: constant-folded and pre-packed for oneDNN, 1.7x eager at
                # batch 1 and 1.2x at the best batch for ResNet-50 bf16 on 2 AVX512-BF16
                # cores, where compiling without freezing gains 10% (docs/performance.md).
                # Read when the graph compiles, i.e. on this first call of each size; both
                # configs are per thread, so they are set here, where compilation happens.
                # The recompile limit: one graph per size and model share ImageIQNet.forward,
                # past dynamo's default of 8 it would silently run the rest eagerly.
                # The C++ wrapper runs the whole graph without the GIL: Python's wrapper takes
                # the GIL back after each of its ~100 kernels, and in the server each time
                # waits for the event loop (up to its 5 ms switch interval), so the model
                # stalled whenever requests were being handled (docs/performance.md).
                with (
                    inductor.patch(freezing=True, cpp_wrapper=True),
                    _dynamo.config.patch(recompile_limit=1024),
                ):
                    self.predict_proba(zeros)
                log.info(
                    "model %s compiled for batch %d in %.1f s",
                    self.model.tag,
                    size,
                    time.perf_counter() - started,
                )
        except Exception as e:  # compilation is an optimisation: never a reason not to serve
            log.warning(
                "model %s: torch.compile failed (%s: %s); running it eagerly",
                self.model.tag,
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
            self._forward = self.net
            self.compiled_sizes = ()

    def temperature(self, head: str) -> float:
        """The head's calibration temperature from the card (1: uncalibrated)."""
        return float(self.model.card.temperature.get(head, 1.0))

    def predict(self, batch: torch.Tensor, *, top_k: int = 5) -> list[Prediction]:
        return self.postprocess(self.predict_proba(batch), top_k=top_k)
