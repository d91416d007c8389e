"""The pure inference core: a registered model plus its eval transform, no server.

``Classifier.predict(batch)`` is what the service's batching endpoint, offline evaluation
and the parity check all call, so served and offline predictions come from one code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from imageiq.architectures import MAIN_HEAD, ImageIQNet
from imageiq.errors import ConfigurationError
from imageiq.preprocessing import EvalTransform
from imageiq.registry import RegisteredModel, load_model


@dataclass(frozen=True)
class ScoredLabel:
    label: str
    score: float


@dataclass(frozen=True)
class Prediction:
    """Top-k labels (best first) and the best value of each attribute head."""

    labels: list[ScoredLabel]
    attributes: dict[str, ScoredLabel] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device 'cuda' was asked for but no CUDA GPU is visible.")
    return torch.device(name)


class Classifier:
    def __init__(self, model: RegisteredModel, net: ImageIQNet, device: torch.device) -> None:
        self.model = model
        self.net = net.eval().to(device)
        self.device = device
        self.transform = EvalTransform(model.card.preprocessing)
        self.labels = model.card.labels
        self.heads = model.card.heads

    @classmethod
    def load(cls, tag: str, *, device: str = "cpu") -> Classifier:
        dev = resolve_device(device)
        model, net = load_model(tag, device=dev)
        return cls(model, net, dev)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self.model.card.preprocessing.crop_size
        return (3, size, size)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One decoded image -> uint8 [3, S, S]; cheap enough for a request thread."""
        return self.transform.to_uint8(image)

    @torch.inference_mode()
    def predict_proba(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 [N, 3, S, S] -> softmax probabilities per head, float32 on the CPU."""
        x = self.transform.normalize(batch.to(self.device, non_blocking=True))
        logits = self.net(x)
        return {name: torch.softmax(out.float(), dim=1).cpu() for name, out in logits.items()}

    def predict(self, batch: torch.Tensor, *, top_k: int = 5) -> list[Prediction]:
        return self.postprocess(self.predict_proba(batch), top_k=top_k)

    def predict_images(self, images: Sequence[Image.Image], *, top_k: int = 5) -> list[Prediction]:
        return self.predict(torch.stack([self.prepare(im) for im in images]), top_k=top_k)

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
