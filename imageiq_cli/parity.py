"""Train/serve parity: does the server answer what the registered model answers offline?

Posts every image under a folder to ``/v1/classify`` and compares each top-1 label and score
with the same model run in-process through :class:`imageiq.inference.Classifier`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from imageiq.errors import ConfigurationError
from imageiq.inference import Classifier
from training.data import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ParityReport:
    model: str
    images: int
    agreed: int
    max_score_diff: float
    disagreements: list[tuple[str, str, str]]  # (path, served, offline)

    @property
    def agreement(self) -> float:
        return self.agreed / self.images if self.images else 0.0


def list_images(root: Path, limit: int | None = None) -> list[Path]:
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    return files[:limit] if limit else files


def check_parity(
    *,
    url: str,
    data: Path,
    model: str | None,
    limit: int | None,
    concurrency: int,
    max_pixels: int,
    batch_size: int = 64,
    api_key: str | None = None,
) -> ParityReport:
    paths = list_images(data, limit)
    if not paths:
        raise ConfigurationError(f"No images under {data}.")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with (
        httpx.Client(base_url=url, timeout=120, headers=headers) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        served = list(pool.map(lambda p: _classify(client, p), paths))
    served_tags = {tag for tag, _, _ in served}
    if len(served_tags) != 1:
        raise ConfigurationError(f"The server answered with several models: {served_tags}")
    tag = model or served_tags.pop()
    classifier = Classifier.load(tag)
    offline: list[tuple[str, float]] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        batch = torch.stack(
            [
                classifier.prepare(classifier.decode(p.read_bytes(), max_pixels=max_pixels).image)
                for p in chunk
            ]
        )
        offline += [
            (p.labels[0].label, p.labels[0].score) for p in classifier.predict(batch, top_k=1)
        ]
    agreed, max_diff, disagreements = 0, 0.0, []
    for path, (_, label, score), (off_label, off_score) in zip(paths, served, offline, strict=True):
        if label == off_label:
            agreed += 1
            max_diff = max(max_diff, abs(score - off_score))
        else:
            disagreements.append((str(path), label, off_label))
    return ParityReport(classifier.model.tag, len(paths), agreed, max_diff, disagreements)


def _classify(client: httpx.Client, path: Path) -> tuple[str, str, float]:
    resp = client.post(
        "/v1/classify", files={"image": (path.name, path.read_bytes())}, data={"top_k": "1"}
    )
    if resp.status_code != 200:
        raise ConfigurationError(f"{path}: HTTP {resp.status_code} {resp.text[:300]}")
    body = resp.json()
    best = body["predictions"][0]
    return (
        f"{body['model']['name']}:{body['model']['version']}",
        best["label"],
        float(best["score"]),
    )
