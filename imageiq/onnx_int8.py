"""Static int8 ONNX Runtime variants of registered models, stored as new model versions.

On CPU-only nodes an int8 network through ONNX Runtime serves several times more images per
core than fp32 PyTorch. :func:`quantize_model` exports a registered model to ONNX, calibrates
activation ranges on the model's own held-out images (preprocessed exactly as serving does),
refuses a variant that loses more than ``max_accuracy_drop`` top-1 on that split, and
registers the rest as a new version holding ``weights.pt`` (still loadable by PyTorch) and
``model.int8.onnx``. :class:`OnnxInt8Runtime` runs that file with the same contract as
:meth:`imageiq.inference.Classifier.predict_proba` after normalisation.
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
from imageiq.preprocessing import EvalTransform
from imageiq.registry import (
    WEIGHTS_FILE,
    ModelCard,
    RegisteredModel,
    _drop_none,
    get_model,
    load_model,
)
from training.data import LabelledDataset, stratified_split
from training.sources import S3Options, load_data

RUNTIME = "onnx-int8"
ONNX_FILE = "model.int8.onnx"
# Without a seed and held-out fraction in the card: the split train.py makes by default.
DEFAULT_SEED, DEFAULT_VAL_FRACTION = 0, 0.2
BATCH_SIZE = 32
DEFAULT_MAX_PIXELS = 50_000_000  # Settings.max_image_pixels' default


class OnnxInt8Runtime:
    """An int8 model file in an ONNX Runtime CPU session: normalised batch -> probabilities."""

    def __init__(self, *, path: str | Path, threads: int) -> None:
        if threads < 0:
            raise ConfigurationError(
                f"threads must be 0 (ONNX Runtime's default) or more: {threads}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # One model call at a time per session: the batcher, not ORT, provides parallelism.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's worker threads otherwise spin after each call, holding a core the server
        # needs for the next request's HTTP and decoding: off, one server measured
        # 41-42 images/s at one client instead of 37-38 (p99 31-34 ms instead of 62-66) and
        # 65-67 instead of 61-63 at 16 (docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise ConfigurationError(f"Could not load the ONNX model {path}: {e}") from e
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    @classmethod
    def load(cls, model: RegisteredModel, *, threads: int) -> OnnxInt8Runtime:
        path = onnx_path(model)
        if path is None:
            raise ConfigurationError(
                f"{model.tag} is not an {RUNTIME} model; make one with `imageiq quantize`."
            )
        return cls(path=path, threads=threads)

    def predict_proba(self, normalized: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """float32 normalised [N, 3, S, S] -> softmax probabilities per head, float32 CPU."""
        if isinstance(normalized, torch.Tensor):
            normalized = normalized.detach().to("cpu", torch.float32).numpy()
        x = np.ascontiguousarray(normalized, dtype=np.float32)
        outputs = self.session.run(self.output_names, {self.input_name: x})
        return {
            name: torch.softmax(torch.from_numpy(np.asarray(out, dtype=np.float32)), dim=1)
            for name, out in zip(self.output_names, outputs, strict=True)
        }

    @staticmethod
    def is_int8(card: ModelCard) -> bool:
        return card.training_config.get("runtime") == RUNTIME


def onnx_path(model: RegisteredModel) -> Path | None:
    """The int8 file of an ``onnx-int8`` version; None for a plain PyTorch model."""
    if not OnnxInt8Runtime.is_int8(model.card):
        return None
    path = Path(model.path) / str(model.card.training_config.get("onnx_file", ONNX_FILE))
    if not path.is_file():
        raise ConfigurationError(f"{model.tag} is an {RUNTIME} model but {path} is missing.")
    return path


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
        dataset = LabelledDataset(loaded, val, transform.to_uint8, max_pixels=max_pixels)
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


# --- command line ---------------------------------------------------------------------------
