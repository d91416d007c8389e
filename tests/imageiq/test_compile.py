"""The compiled forward pass (``IMAGEIQ_COMPILE``, on by default): the same predictions as
eager, every batch size compiled at warm-up and none after, and eager when compiling fails."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch._dynamo.utils import counters

from imageiq.inference import Classifier, InferenceOptions, batch_sizes, split_batch
from imageiq.registry import RegisteredModel
from tests.imageiq.images_helpers import photo

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("n", "largest", "parts"),
    [
        (1, 16, [1]),
        (13, 16, [8, 4, 1]),
        (16, 16, [16]),
        (37, 16, [16, 16, 4, 1]),
        (7, 1, [1] * 7),
        (12, 12, [8, 4]),
    ],
)
def test_a_batch_splits_into_compiled_sizes(n: int, largest: int, parts: list[int]) -> None:
    sizes = batch_sizes(largest)
    assert all(s & (s - 1) == 0 and s <= largest for s in sizes)
    assert split_batch(n, sizes) == parts and sum(parts) == n


def batch(classifier: Classifier, n: int) -> torch.Tensor:
    return torch.stack([classifier.prepare(photo(seed=i)) for i in range(n)])


@pytest.mark.parametrize("model", ["digits_model", "species_model"])
def test_compiled_model_predicts_as_eager_and_never_recompiles_after_warm_up(
    model: str, request: pytest.FixtureRequest
) -> None:
    registered: RegisteredModel = request.getfixturevalue(model)
    eager = Classifier.load(registered.tag, options=InferenceOptions(precision="fp32"))
    compiled = Classifier.load(
        registered.tag,
        options=InferenceOptions(precision="fp32", compile=True, max_batch_size=16),
    )
    assert compiled.compiled_sizes == (1, 2, 4, 8, 16)
    before = counters["stats"]["unique_graphs"]
    # compiled on another thread, as the service's loader thread does, and run on this one;
    # the second model takes dynamo past its default of 8 graphs for ImageIQNet.forward
    with ThreadPoolExecutor(1) as loader:
        loader.submit(compiled.warm_up).result()
    assert compiled.compiled_sizes == (1, 2, 4, 8, 16), "compilation fell back to eager"
    graphs = counters["stats"]["unique_graphs"]
    assert graphs - before == 5  # one graph per size, none left to eager by a limit
    for n in (1, 3, 13, 16, 21):
        x = batch(eager, n)
        want, got = eager.predict_proba(x), compiled.predict_proba(x)
        assert set(got) == set(want) == {"label", *registered.card.heads}
        for head in want:
            assert got[head].shape == want[head].shape == (n, want[head].shape[1])
            torch.testing.assert_close(got[head], want[head], atol=1e-4, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs  # 13 ran as 8+4+1, 21 as 16+4+1


def test_a_model_that_fails_to_compile_runs_eagerly(
    digits_model: RegisteredModel,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_compiler(net: torch.nn.Module, **kwargs: object) -> object:
        def fail(x: torch.Tensor) -> object:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return fail

    monkeypatch.setattr(torch, "compile", no_compiler)
    eager = Classifier.load(digits_model.tag, options=InferenceOptions(precision="fp32"))
    classifier = Classifier.load(
        digits_model.tag, options=InferenceOptions(precision="fp32", compile=True)
    )
    with caplog.at_level(logging.WARNING, logger="imageiq.inference"):
        classifier.warm_up()
    assert classifier.compiled_sizes == ()
    assert "torch.compile failed (RuntimeError: InvalidCxxCompiler" in caplog.text
    x = batch(eager, 5)
    torch.testing.assert_close(
        classifier.predict_proba(x)["label"], eager.predict_proba(x)["label"]
    )
