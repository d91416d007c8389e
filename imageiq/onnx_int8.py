"""Static int8 ONNX Runtime variants of registered models: running them.

On CPU-only nodes an int8 network through ONNX Runtime serves several times more images per
core than fp32 PyTorch. ``imageiq quantize`` (:mod:`training.quantize`) makes such a
version: ``weights.pt`` (still loadable by PyTorch) and ``model.int8.onnx``.
:class:`OnnxInt8Runtime` runs that file with the same contract as
:meth:`imageiq.inference.Classifier.predict_proba` after normalisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from imageiq.errors import ConfigurationError
from imageiq.registry import ModelCard, RegisteredModel

RUNTIME = "onnx-int8"
ONNX_FILE = "model.int8.onnx"


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
