import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torchvision.models import ResNet50_Weights
from torchvision.transforms import v2

from imageiq.inference import Classifier
from imageiq.preprocessing import EvalTransform, PreprocessConfig, to_rgb
from imageiq.registry import RegisteredModel, get_model
from tests.imageiq.images_helpers import photo, variants
from training.data import ImageDataset, scan_image_folder


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


def _serving_tensor(classifier: Classifier, data: bytes) -> torch.Tensor:
    """Exactly what the server does: decode (draft allowed), prepare, batch, normalise."""
    decoded = classifier.decode(data, max_pixels=10**8, draft=True)
    return classifier.transform.normalize(classifier.prepare(decoded.image).unsqueeze(0))[0]


def test_training_and_serving_give_identical_tensors(
    digits_model: RegisteredModel, digits_dir
) -> None:
    """The preprocessing travels with the model: both paths rebuild it from the stored card."""
    card = get_model(digits_model.tag).card  # read back from the model store's metadata
    index = scan_image_folder(digits_dir)
    dataset = ImageDataset(
        index.paths, index.targets, EvalTransform(card.preprocessing), max_pixels=10**8
    )
    classifier = Classifier.load(digits_model.tag)
    for i in range(0, len(index.paths), 60):  # 30 digits across all classes
        train_side, _ = dataset[i]
        assert torch.equal(train_side, _serving_tensor(classifier, index.paths[i].read_bytes()))


@pytest.mark.parametrize("name", sorted(variants()))
def test_identical_tensors_for_every_format(
    name: str, digits_model: RegisteredModel, tmp_path
) -> None:
    path = tmp_path / name
    path.write_bytes(variants()[name])
    classifier = Classifier.load(digits_model.tag)
    dataset = ImageDataset([path], [0], classifier.transform, max_pixels=10**8)
    assert torch.equal(dataset[0][0], _serving_tensor(classifier, path.read_bytes()))
