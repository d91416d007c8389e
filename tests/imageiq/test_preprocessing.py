from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torchvision.models import ResNet50_Weights
from torchvision.transforms import v2

from imageiq.classify import prepare_image
from imageiq.inference import Classifier
from imageiq.preprocessing import EvalTransform, PreprocessConfig, to_rgb
from imageiq.registry import RegisteredModel, get_model
from imageiq.settings import Settings
from tests.imageiq.images_helpers import encode, photo, variants
from training.data import held_out_dataset
from training.sources import load_data


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        PreprocessConfig(resize_size=16, crop_size=32)
    with pytest.raises(ValidationError):
        PreprocessConfig(resize_size=32, crop_size=32, std=(0.2, 0.0, 0.2))


def test_for_weights_follows_torchvision_preset() -> None:
    cfg = PreprocessConfig.for_weights(ResNet50_Weights.DEFAULT, crop_size=224)
    preset = ResNet50_Weights.DEFAULT.transforms()
    assert (cfg.resize_size, cfg.crop_size) == (preset.resize_size[0], preset.crop_size[0])
    assert cfg.mean == tuple(preset.mean) and cfg.std == tuple(preset.std)
    assert cfg.interpolation == preset.interpolation.value
    assert PreprocessConfig.for_weights(ResNet50_Weights.DEFAULT, crop_size=112).resize_size == 116


@pytest.mark.parametrize("size", [(80, 60), (61, 97), (8, 8), (300, 200), (224, 224)])
def test_geometry_matches_torchvision_resize_and_crop(size: tuple[int, int]) -> None:
    cfg = PreprocessConfig(resize_size=36, crop_size=32)
    reference = v2.Compose([v2.Resize(36, antialias=True), v2.CenterCrop(32)])
    image = photo(*size)
    assert torch.equal(
        EvalTransform(cfg).to_uint8(image), v2.functional.pil_to_tensor(reference(image))
    )


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (1000, 3), (1, 1)])
def test_extreme_aspect_ratios_stay_bounded(size: tuple[int, int]) -> None:
    out = EvalTransform(PreprocessConfig(resize_size=36, crop_size=32)).to_uint8(
        Image.new("RGB", size)
    )
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


def test_alpha_is_composited_on_the_configured_background() -> None:
    clear = Image.new("RGBA", (4, 4), (200, 10, 10, 0))
    assert to_rgb(clear, (0, 255, 0)).getpixel((0, 0)) == (0, 255, 0)
    half = Image.new("LA", (4, 4), (0, 128))
    assert to_rgb(half, (255, 255, 255)).getpixel((0, 0)) == (127, 127, 127)


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    image = Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16))
    assert image.mode.startswith("I")
    assert to_rgb(image, (0, 0, 0)).getpixel((0, 0)) == (127, 127, 127)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.full((4, 4), 0.5, np.float32), 128),
        (np.full((4, 4), 200.0, np.float32), 200),
        (np.full((4, 4), np.nan, np.float32), 0),
        (np.full((4, 4), 9e9, np.float32), 255),
    ],
)
def test_float_grayscale(values: np.ndarray, expected: int) -> None:
    image = Image.fromarray(values)
    assert image.mode == "F"
    assert to_rgb(image, (0, 0, 0)).getpixel((0, 0)) == (expected,) * 3


def test_normalize_is_the_same_for_one_image_or_a_batch() -> None:
    transform = EvalTransform(PreprocessConfig(resize_size=32, crop_size=32))
    images = [photo(seed=i) for i in range(5)]
    batch = transform.normalize(torch.stack([transform.to_uint8(im) for im in images]))
    for row, image in zip(batch, images, strict=True):
        assert torch.equal(row, transform(image))


def test_normalize_array_matches_normalize() -> None:
    """The NumPy standardisation (ONNX Runtime's input) is torch's to float32 rounding,
    over every uint8 value in every channel, with a config's own mean and std."""
    config = PreprocessConfig(
        resize_size=16, crop_size=16, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4)
    )
    transform = EvalTransform(config)
    values = torch.arange(256, dtype=torch.uint8).repeat(2, 3, 1).reshape(2, 3, 16, 16)
    got = transform.normalize_array(values.numpy())
    assert got.dtype == np.float32 and got.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(got, transform.normalize(values).numpy(), rtol=0, atol=2e-6)


def _serving_tensors(classifier: Classifier, data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """What the server does to an upload, with its default settings: the core's prepare
    (decode, JPEG draft allowed, colour, resize, crop), then the batch's normalisation."""
    settings = Settings()
    prepared = prepare_image(
        classifier, data, max_pixels=settings.max_image_pixels, draft=settings.jpeg_draft
    )
    normalized = classifier.transform.normalize(prepared.tensor.unsqueeze(0))[0]
    return prepared.tensor, normalized


def test_training_and_serving_give_identical_tensors(
    digits_model: RegisteredModel, tmp_path: Path
) -> None:
    """The preprocessing travels with the model: training's held-out images (read by the
    production dataset path, as `imageiq train` and `imageiq quantize` read them) and an
    upload to the server (the core's prepare) give identical tensors, in every supported
    format and for a camera-size JPEG that the server decodes in draft mode."""
    card = get_model(digits_model.tag).card  # read back from the model store's metadata
    files = {**variants(), "large.jpg": encode(photo(640, 480, seed=3), "JPEG", quality=90)}
    for i, (name, data) in enumerate(files.items()):  # an ImageFolder of two classes
        folder = tmp_path / "data" / str(i % 2)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    loaded = load_data(str(tmp_path / "data"), max_pixels=10**8)
    assert not loaded.skipped and len(loaded.samples) == len(files)
    indices = list(range(len(loaded.samples)))
    uint8_set = held_out_dataset(
        loaded, indices, card.preprocessing, max_pixels=10**8, normalized=False
    )
    float_set = held_out_dataset(loaded, indices, card.preprocessing, max_pixels=10**8)
    classifier = Classifier.load(digits_model.tag)
    for i, sample in enumerate(loaded.samples):
        served_uint8, served_float = _serving_tensors(classifier, loaded.read(i))
        assert torch.equal(uint8_set[i][0], served_uint8), sample.uri
        assert torch.equal(float_set[i][0], served_float), sample.uri
    # The large JPEG really took the draft path (1/8 scale: 80x60 still covers 16 px).
    draft = classifier.decode(files["large.jpg"], max_pixels=10**8, draft=True)
    assert draft.image.size == (80, 60) and (draft.width, draft.height) == (640, 480)
