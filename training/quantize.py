"""``imageiq quantize``: a static int8 ONNX Runtime variant of a registered model, stored as
a new model version.

:func:`quantize_model` exports a registered model to ONNX, calibrates activation ranges on
the model's own held-out images (preprocessed exactly as serving does), refuses a variant
that loses more than ``max_accuracy_drop`` top-1 on that split, and registers the rest as a
new version holding ``weights.pt`` and ``model.int8.onnx``, which
:class:`imageiq.onnx_int8.OnnxInt8Runtime` serves.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch.utils.data import DataLoader, Dataset, Subset

from imageiq.architectures import MAIN_HEAD, ImageIQNet
from imageiq.errors import ConfigurationError, DatasetError
from imageiq.export import INPUT_NAME, OPSET, export_onnx
from imageiq.onnx_int8 import ONNX_FILE, RUNTIME, OnnxInt8Runtime
from imageiq.preprocessing import EvalTransform
from imageiq.registry import (
    WEIGHTS_FILE,
    ModelCard,
    RegisteredModel,
    _drop_none,
    get_model,
    load_model,
)
from training.data import LabelledDataset, held_out_dataset, stratified_split
from training.sources import S3Options, load_data

# Without a seed and held-out fraction in the card: the split train.py makes by default.
DEFAULT_SEED, DEFAULT_VAL_FRACTION = 0, 0.2
BATCH_SIZE = 32
DEFAULT_MAX_PIXELS = 50_000_000  # Settings.max_image_pixels' default


def quantize_model(
    *,
    tag: str,
    data: str | Path,
    max_calibration: int = 256,
    max_accuracy_drop: float = 0.01,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    s3: S3Options | None = None,
) -> RegisteredModel:
    """Register a static int8 variant of ``tag``, calibrated and judged on its held-out split.

    ``data`` is the data the model was trained on (ImageFolder tree or manifest, read as
    ``imageiq train`` reads it): the held-out split is rebuilt
    from it with the seed and fraction the card recorded, so the accuracy compared is the one
    the card reports, on images the model never trained on. ``max_accuracy_drop`` is absolute
    (0.01: one point of top-1).
    """
    if max_calibration < 1:
        raise ConfigurationError(f"max_calibration must be at least 1, got {max_calibration}.")
    parent, net = load_model(tag)
    card = parent.card
    split = _HeldOut.build(card, data, max_pixels=max_pixels, s3=s3)
    rng = np.random.default_rng(split.seed)
    # The held-out indices are sorted by class: calibrate on a random subset, not the head.
    n_calib = min(max_calibration, len(split.dataset))
    calibration = sorted(int(i) for i in rng.choice(len(split.dataset), n_calib, replace=False))

    heads = [MAIN_HEAD, *card.heads]
    with tempfile.TemporaryDirectory(prefix="imageiq-int8-") as tmp:
        fp32_file, int8_file = Path(tmp) / "model.onnx", Path(tmp) / ONNX_FILE
        export_onnx(net, fp32_file, heads=heads, size=card.preprocessing.crop_size)
        _quantize(fp32_file, int8_file, _Calibration(split.batches(calibration)))
        runtime = OnnxInt8Runtime(path=int8_file, threads=torch.get_num_threads())
        scores = _compare(net, runtime, split)
        if scores["int8_top1"] < scores["fp32_top1"] - max_accuracy_drop:
            raise ConfigurationError(
                f"int8 top-1 {scores['int8_top1']:.4f} is more than {max_accuracy_drop:.4f} "
                f"below fp32 top-1 {scores['fp32_top1']:.4f} on {len(split.dataset)} held-out "
                f"images of {tag}; nothing registered. Calibrate on more images "
                "(--max-calibration) or keep serving the fp32 model.",
                details={**scores, "max_accuracy_drop": max_accuracy_drop},
            )
        new_card = _int8_card(parent, split=split, scores=scores, calibration_images=n_calib)
        with bentoml.models.create(
            name or parent.name,
            labels={"architecture": card.architecture, "framework": "imageiq", "runtime": RUNTIME},
            metadata=_drop_none(new_card.model_dump(mode="json")),
        ) as stored:
            # Written inside the context: the store directory is read-only once it closes.
            shutil.copyfile(Path(parent.path) / WEIGHTS_FILE, stored.path_of(WEIGHTS_FILE))
            shutil.copyfile(int8_file, stored.path_of(ONNX_FILE))
    return get_model(str(stored.tag))


class _HeldOut:
    """The model's held-out images as uint8 tensors, with targets in the card's label order."""

    def __init__(
        self,
        dataset: LabelledDataset,
        transform: EvalTransform,
        info: dict[str, Any],
        remap: torch.Tensor,
    ) -> None:
        self.dataset, self.transform, self.info = dataset, transform, info
        self.seed = int(info["seed"])
        self._remap = remap  # the data's class index -> the card's label index

    @classmethod
    def build(
        cls, card: ModelCard, data: str | Path, *, max_pixels: int, s3: S3Options | None = None
    ) -> _HeldOut:
        config = card.training_config
        recorded = "seed" in config and "val_fraction" in config
        seed = int(config["seed"]) if recorded else DEFAULT_SEED
        fraction = float(config["val_fraction"]) if recorded else DEFAULT_VAL_FRACTION
        loaded = load_data(data, max_pixels=max_pixels, s3=s3)  # exactly what train.py reads
        unknown = sorted(set(loaded.classes) - set(card.labels))
        if unknown:
            raise DatasetError(
                f"Classes {unknown} of {data} are not labels of the model "
                f"({', '.join(card.labels)}): pass the data it was trained on."
            )
        label_of = {label: i for i, label in enumerate(card.labels)}
        # The split is over the data's own targets, exactly as train.py made it.
        _, val = stratified_split(loaded.targets, val_fraction=fraction, seed=seed)
        transform = EvalTransform(card.preprocessing)
        dataset = held_out_dataset(
            loaded, val, card.preprocessing, max_pixels=max_pixels, normalized=False
        )
        info = {
            "seed": seed,
            "val_fraction": fraction,
            "images": len(val),
            "source": "training_config" if recorded else "default: the card records no split",
            # False also when the card has no fingerprint: then nobody can tell.
            "same_dataset": card.dataset_fingerprint is not None
            and card.dataset_fingerprint == loaded.fingerprint,
        }
        remap = torch.tensor([label_of[c] for c in loaded.classes])
        return cls(dataset, transform, info, remap)

    def batches(
        self, indices: Sequence[int] | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalised float32 batch, targets): to_uint8 per image, then normalize per batch,
        the two halves the server runs."""
        subset: Dataset[tuple[torch.Tensor, dict[str, int]]] = (
            self.dataset if indices is None else Subset(self.dataset, indices)
        )
        for images, targets in DataLoader(subset, batch_size=BATCH_SIZE):
            yield self.transform.normalize(images), self._remap[targets[MAIN_HEAD]]


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch[0].numpy()}


def _quantize(fp32_file: Path, int8_file: Path, reader: CalibrationDataReader) -> None:
    # ORT's recommended pre-pass: shape inference and graph clean-up. Without it, Identity
    # nodes the exporter puts on shared (e.g. all-zero) conv biases stop bias quantisation.
    quant_pre_process(str(fp32_file), str(fp32_file))
    # uint8 activations with int8 weights (U8S8): on x86 ORT fuses every QDQ conv and add into
    # QLinearConv/QLinearAdd; int8 activations (S8S8, the default) left half the convs in
    # fp32 and ran slower than fp32. MinMax keeps only per-tensor extremes in memory
    # (Percentile keeps every activation).
    quantize_static(
        str(fp32_file),
        str(int8_file),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


@torch.inference_mode()
def _compare(net: ImageIQNet, runtime: OnnxInt8Runtime, split: _HeldOut) -> dict[str, float]:
    fp32_hits = int8_hits = agreed = total = 0
    for x, y in split.batches():
        fp32 = net(x)[MAIN_HEAD].argmax(dim=1)
        int8 = runtime.predict_proba(x)[MAIN_HEAD].argmax(dim=1)
        fp32_hits += int((fp32 == y).sum())
        int8_hits += int((int8 == y).sum())
        agreed += int((fp32 == int8).sum())
        total += len(y)
    return {
        "fp32_top1": fp32_hits / total,
        "int8_top1": int8_hits / total,
        "int8_agreement": agreed / total,
    }


def _int8_card(
    parent: RegisteredModel, *, split: _HeldOut, scores: dict[str, float], calibration_images: int
) -> ModelCard:
    card = parent.card
    return card.model_copy(
        update={
            "metrics": {**card.metrics, **scores},
            "training_config": {
                **card.training_config,
                "runtime": RUNTIME,
                "parent": parent.tag,
                "onnx_file": ONNX_FILE,
                "calibration_images": calibration_images,
                "quantization": {
                    "format": "QDQ",
                    "activations": "uint8 per-tensor",
                    "weights": "int8 per-channel",
                    "calibration": "MinMax",
                    "opset": OPSET,
                },
                "evaluation_split": split.info,
            },
            "created_at": datetime.now(timezone.utc),
            "software": {
                **card.software,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
            },
        }
    )
