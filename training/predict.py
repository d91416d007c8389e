"""Batch prediction: a registered model over an unlabelled folder (or a manifest), streamed
to CSV.

Images go through the serving code path (:meth:`Classifier.decode`, ``prepare``, batched
``predict_proba``, ``postprocess``), so a row here is what ``/v1/classify`` would answer.
Rows are written as each batch finishes, in input order; a file that cannot be read or
decoded gets a row with its error instead of stopping the run.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from imageiq.errors import DatasetError, ImageIQError
from imageiq.inference import Classifier
from training.data import IMAGE_EXTENSIONS
from training.sources import MANIFEST_SUFFIXES, BlobReader, S3Options, load_data


@dataclass(frozen=True)
class PredictSummary:
    images: int
    failed: int
    out: Path


def list_inputs(source: str | Path, *, max_pixels: int, s3: S3Options | None) -> list[str]:
    """Image files under a folder (recursively, sorted), or the images of a manifest."""
    text = str(source)
    if text.endswith(MANIFEST_SUFFIXES):
        return [s.uri for s in load_data(text, max_pixels=max_pixels, s3=s3, check=False).samples]
    root = Path(text)
    if not root.is_dir():
        raise DatasetError(f"{source} is neither a directory nor a .csv/.jsonl manifest.")
    files = sorted(
        str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DatasetError(f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}.")
    return files


def predict_to_csv(
    classifier: Classifier,
    inputs: list[str],
    out: Path,
    *,
    batch_size: int,
    top_k: int,
    max_pixels: int,
    reader: BlobReader | None = None,
    progress: Callable[[int], None] | None = None,
) -> PredictSummary:
    reader = reader or BlobReader()
    heads = list(classifier.heads)
    columns = ["path"]
    for rank in range(1, top_k + 1):
        columns += [f"label_{rank}", f"score_{rank}"]
    for head in heads:
        columns += [head, f"{head}_score"]
    columns.append("error")
    failed = 0
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for chunk in _chunks(inputs, batch_size):
            tensors: list[torch.Tensor] = []
            rows: list[tuple[str, str | None]] = []
            for uri in chunk:
                try:
                    decoded = classifier.decode(reader.read(uri), max_pixels=max_pixels)
                    tensors.append(classifier.prepare(decoded.image))
                    rows.append((uri, None))
                except ImageIQError as e:
                    rows.append((uri, f"{e.code}: {e.message}"))
            predictions = iter(
                classifier.predict(torch.stack(tensors), top_k=top_k) if tensors else []
            )
            for uri, error in rows:
                if error is not None:
                    failed += 1
                    writer.writerow([uri, *[""] * (len(columns) - 2), error])
                    continue
                p = next(predictions)
                row: list[object] = [uri]
                for scored in p.labels:
                    row += [scored.label, f"{scored.score:.6f}"]
                row += ["", ""] * (top_k - len(p.labels))
                for head in heads:
                    row += [p.attributes[head].label, f"{p.attributes[head].score:.6f}"]
                writer.writerow([*row, ""])
            f.flush()
            if progress is not None:
                progress(len(chunk))
    return PredictSummary(images=len(inputs), failed=failed, out=out)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
