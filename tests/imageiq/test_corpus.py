"""A corpus of real-world uploads is accepted; hostile inputs are refused with a clear 4xx."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from imageiq.errors import ImageIQError
from imageiq.images import decode_image
from imageiq.preprocessing import EvalTransform, PreprocessConfig
from tests.imageiq.images_helpers import (
    CORPUS_MAX_BYTES,
    CORPUS_MAX_PIXELS,
    corpus,
    hostile_inputs,
)

CORPUS = corpus()
HOSTILE = hostile_inputs()
TRANSFORM = EvalTransform(PreprocessConfig(resize_size=32, crop_size=32))

# EXIF orientation -> the transposition that shows the image upright
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def test_corpus_sizes() -> None:
    assert len(CORPUS) >= 30
    assert len(HOSTILE) >= 14
    too_big = {name: len(data) for name, data in CORPUS.items() if len(data) > CORPUS_MAX_BYTES}
    assert not too_big


def test_corpus_is_deterministic() -> None:
    assert corpus(seed=0) == CORPUS
    assert {k: v[0] for k, v in hostile_inputs(seed=0).items()} == {
        k: v[0] for k, v in HOSTILE.items()
    }


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_image_decodes_and_preprocesses(name: str) -> None:
    image = decode_image(CORPUS[name], max_pixels=CORPUS_MAX_PIXELS)
    assert image.width * image.height <= CORPUS_MAX_PIXELS
    tensor = TRANSFORM(image)
    assert tensor.shape == (3, 32, 32)
    assert tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("value", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(value: int) -> None:
    """The oriented JPEG holds the same pixels as baseline.jpg (same encoder, same image),
    so once upright it equals baseline.jpg transposed, exactly."""
    upright = decode_image(CORPUS[f"exif-orientation-{value}.jpg"], max_pixels=CORPUS_MAX_PIXELS)
    baseline = decode_image(CORPUS["baseline.jpg"], max_pixels=CORPUS_MAX_PIXELS)
    expected = baseline.transpose(ORIENTATIONS[value])
    assert upright.size == expected.size
    assert upright.format == "JPEG"
    assert upright.tobytes() == expected.tobytes()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns on some corrupt metadata
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_refused(name: str) -> None:
    data, status, code = HOSTILE[name]
    assert 400 <= status < 500
    with pytest.raises(ImageIQError) as info:
        decode_image(data, max_pixels=CORPUS_MAX_PIXELS)
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    assert info.value.message
