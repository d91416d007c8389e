"""Exporting a registered model to ONNX and TorchScript, verified against PyTorch.

The exported files go into the model's own directory in the store and are recorded in its
card (``exports``: file, format, the largest logit difference from PyTorch and on how many
images it was measured), so whoever deploys an export knows it was checked. An export whose
logits differ by more than ``tolerance`` is refused and not recorded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import bentoml
import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from imageiq.architectures import MAIN_HEAD, ImageIQNet
from imageiq.errors import ConfigurationError
from imageiq.registry import load_model

Format = Literal["onnx", "torchscript"]
FILES: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
OPSET = 17
INPUT_NAME = "input"


class HeadOutputs(nn.Module):
    """ImageIQNet's dict of logits as a tuple in a fixed head order (ONNX and TorchScript
    outputs are positional)."""

    def __init__(self, net: ImageIQNet, heads: Sequence[str]) -> None:
        super().__init__()
        self.net, self.heads = net, list(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.net(x)
        return tuple(logits[h] for h in self.heads)


def export_onnx(net: ImageIQNet, path: Path, *, heads: Sequence[str], size: int) -> None:
    """Normalised float32 NCHW in (dynamic batch), one logits output per head."""
    # The torch.export-based exporter (the default since torch 2.9) needs onnxscript, which
    # this project does not install; the TorchScript one is deprecated but complete for CNNs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(
            HeadOutputs(net, heads).eval(),
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(heads),
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *heads]},
            opset_version=OPSET,
            dynamo=False,
        )


def export_model(
    tag: str,
    *,
    formats: Sequence[Format],
    inputs: torch.Tensor,
    tolerance: float = 1e-3,
) -> dict[str, dict[str, Any]]:
    """Export ``tag`` in each format, check it on ``inputs`` (normalised float32 images),
    and record it in the model's card. Returns the card's new ``exports`` entries."""
    model, net = load_model(tag)
    heads = [MAIN_HEAD, *model.card.heads]
    size = model.card.preprocessing.crop_size
    with torch.inference_mode():
        reference = HeadOutputs(net, heads)(inputs)
    stored = bentoml.models.get(model.tag)
    exports: dict[str, dict[str, Any]] = {}
    for fmt in formats:
        path = Path(stored.path) / FILES[fmt]
        if fmt == "onnx":
            export_onnx(net, path, heads=heads, size=size)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(heads, {INPUT_NAME: inputs.numpy()})
        else:
            # Deprecated upstream in favour of torch.export, but still what TorchServe,
            # Triton's PyTorch backend and C++ libtorch load.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
                traced = torch.jit.trace(HeadOutputs(net, heads).eval(), inputs[:1])
                torch.jit.save(traced, str(path))
                with torch.inference_mode():
                    got = [t.numpy() for t in torch.jit.load(str(path))(inputs)]
        diff = max(
            float(np.abs(np.asarray(g) - r.numpy()).max())
            for g, r in zip(got, reference, strict=True)
        )
        if diff > tolerance:
            path.unlink(missing_ok=True)
            raise ConfigurationError(
                f"The {fmt} export of {model.tag} differs from PyTorch by {diff:.2e} "
                f"(tolerance {tolerance:.0e}); nothing was recorded."
            )
        exports[fmt] = {
            "file": FILES[fmt],
            "max_abs_diff": diff,
            "images": len(inputs),
            "outputs": heads,
            "input": ["batch", 3, size, size],
            **({"opset": OPSET} if fmt == "onnx" else {}),
        }
    metadata: dict[str, Any] = stored.info.metadata
    metadata["exports"] = {**metadata.get("exports", {}), **exports}
    stored.flush()  # the card lives in the store's model.yaml
    return exports
