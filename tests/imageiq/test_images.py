import pytest
from PIL import Image

from imageiq.errors import CorruptImage, EmptyImage, ImageTooLarge, UnsupportedImageFormat
from imageiq.images import decode_image
from tests.imageiq.images_helpers import encode, photo, png_header_only, variants

LIMIT = 50_000_000


@pytest.mark.parametrize(("name", "data"), sorted(variants().items()))
def test_decodes_every_supported_variant(name: str, data: bytes) -> None:
    image = decode_image(data, max_pixels=LIMIT)
    assert image.size[0] > 0 and image.size[1] > 0
    image.load()


def test_exif_orientation_is_applied() -> None:
    image = decode_image(variants()["exif-rotated.jpg"], max_pixels=LIMIT)
    assert image.size == (60, 80)  # stored 80x60, shown rotated


def test_animated_gif_gives_its_first_frame() -> None:
    first = decode_image(variants()["animated.gif"], max_pixels=LIMIT).convert("RGB")
    assert first.tobytes() == photo().convert("P").convert("RGB").tobytes()


@pytest.mark.parametrize(
    "data",
    [b"hello world\n", b"%PDF-1.4\n%%EOF", encode(photo(), "ICO"), b"\x00" * 1000],
)
def test_unsupported_data(data: bytes) -> None:
    with pytest.raises(UnsupportedImageFormat):
        decode_image(data, max_pixels=LIMIT)


def test_empty() -> None:
    with pytest.raises(EmptyImage):
        decode_image(b"", max_pixels=LIMIT)


@pytest.mark.parametrize("name", ["baseline.jpg", "rgb.png", "lossy.webp"])
def test_truncated_data_is_corrupt(name: str) -> None:
    data = variants()[name]
    with pytest.raises(CorruptImage):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def test_broken_header_is_corrupt() -> None:
    with pytest.raises(CorruptImage):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, max_pixels=LIMIT)


@pytest.mark.parametrize(("width", "height"), [(8000, 8000), (100_000, 100_000), (2**31 - 1, 1)])
def test_pixel_bombs_are_refused_from_the_header(width: int, height: int) -> None:
    # 64e6, 1e10 and 2e9 pixels claimed by a few hundred bytes: refused before decoding.
    with pytest.raises(ImageTooLarge):
        decode_image(png_header_only(width, height), max_pixels=LIMIT)


def test_limit_is_the_setting() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    decode_image(data, max_pixels=10_000)
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=9_999)


def test_large_jpegs_are_drafted_small_ones_and_other_formats_are_not() -> None:
    from imageiq.images import read_image
    from imageiq.preprocessing import EvalTransform, PreprocessConfig

    transform = EvalTransform(PreprocessConfig(resize_size=64, crop_size=56))
    big = photo(1200, 900, seed=1).resize((1200, 900))
    jpeg, png = encode(big, "JPEG", quality=95), encode(big, "PNG")
    drafted = read_image(jpeg, max_pixels=LIMIT * 100, draft_size=64)
    full = read_image(jpeg, max_pixels=LIMIT * 100)
    # the smallest scale still at least the size asked for (1200x900 / 8 = 150x113 >= 64),
    # the size reported is the full image's
    assert drafted.image.size == (150, 113)
    assert (drafted.width, drafted.height, drafted.format) == (1200, 900, "JPEG")
    assert full.image.size == (1200, 900)
    assert read_image(png, max_pixels=LIMIT * 100, draft_size=64).image.size == (1200, 900)
    small = encode(photo(240, 180), "JPEG")  # under 4x the size asked for: decoded in full
    assert read_image(small, max_pixels=LIMIT, draft_size=64).image.size == (240, 180)
    # what the model sees barely changes
    diff = transform.to_uint8(drafted.image).float() - transform.to_uint8(full.image).float()
    assert diff.abs().mean().item() < 8.0


def test_exif_rotated_size_is_reported_as_displayed() -> None:
    from imageiq.images import read_image

    decoded = read_image(variants()["exif-rotated.jpg"], max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == decoded.image.size == (60, 80)
