"""`imageiq export`: ONNX and TorchScript files checked against PyTorch, recorded in the card."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from imageiq.errors import ConfigurationError
from imageiq.export import export_model
from imageiq.inference import Classifier
from imageiq.registry import RegisteredModel, get_model
from imageiq_cli.main import main as cli_main

pytestmark = pytest.mark.slow


def test_export_onnx_and_torchscript_on_100_digits(
    digits_model: RegisteredModel, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(
        [
            "export",
            "--model",
            digits_model.tag,
            "--format",
            "onnx",
            "--format",
            "torchscript",
            "--data",
            str(digits_dir),
            "--images",
            "100",
        ]
    )
    assert code == 0
    assert "max |logit difference|" in " ".join(capsys.readouterr().out.split())
    model = get_model(digits_model.tag)  # read back from the store
    exports = model.card.exports
    assert set(exports) == {"onnx", "torchscript"}
    for info in exports.values():
        assert info["images"] == 100 and info["max_abs_diff"] < 1e-3
        assert (Path(model.path) / info["file"]).is_file()
    assert exports["onnx"]["outputs"] == ["label"]

    # the file works on its own: onnxruntime on a served-path tensor, dynamic batch
    classifier = Classifier.load(digits_model.tag)
    batch = torch.stack(
        [
            classifier.prepare(classifier.decode(p.read_bytes(), max_pixels=10**6).image)
            for p in sorted(digits_dir.rglob("*.png"))[:7]
        ]
    )
    session = ort.InferenceSession(
        str(Path(model.path) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["label"], {"input": classifier.transform.normalize(batch).numpy()})
    served = classifier.predict_proba(batch)["label"]
    onnx_probs = torch.softmax(torch.from_numpy(logits) / classifier.temperature("label"), 1)
    assert torch.allclose(onnx_probs, served, atol=1e-4)
    assert Classifier.load(digits_model.tag).model.card.exports  # the model still loads


def test_an_export_that_does_not_match_is_refused(digits_model: RegisteredModel) -> None:
    inputs = torch.randn(4, 3, 16, 16)
    with pytest.raises(ConfigurationError, match="differs from PyTorch"):
        export_model(digits_model.tag, formats=["torchscript"], inputs=inputs, tolerance=-1.0)
