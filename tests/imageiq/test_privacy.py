"""Stored images lose their personal metadata: real JPEG, PNG, WebP, GIF and TIFF files made
with Pillow, carrying a GPS position in EXIF, XMP and comments. The stored copy has none of
it, decodes to the same pixels (oriented the same way), and is filed under the sha256 of
the bytes sent."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from imageiq.privacy import strip_metadata
from imageiq.settings import Settings
from imageiq.storage import build_store

GPS = {1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 1.0)}  # Berlin
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="52,31.2N" '
    b'exif:BodySerialNumber="SN-4711"/></rdf:RDF></x:xmpmeta>'
)
SECRETS = [b"SN-4711", b"Alice's camera", b"GPSLatitude", b"secret comment"]


def exif(orientation: int | None = None) -> bytes:
    data = Image.Exif()
    data[0x010F] = "Alice's camera"  # Make
    data[0xA431] = "SN-4711"  # BodySerialNumber (in the Exif IFD on a real camera)
    data[0x8825] = GPS
    if orientation is not None:
        data[0x0112] = orientation
    return data.tobytes()


def pixels(mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    return image.convert(mode)


def encode(fmt: str, *, orientation: int | None = None, **options: Any) -> bytes:
    out = io.BytesIO()
    image = pixels("P" if fmt == "GIF" else "RGB")
    if fmt != "GIF":
        options.update(exif=exif(orientation), xmp=XMP)
    image.save(out, format=fmt, **options)
    return out.getvalue()


FILES = {
    "jpeg": lambda o: encode("JPEG", orientation=o, quality=90, comment=b"secret comment"),
    "png": lambda o: encode("PNG", orientation=o),
    "webp-lossy": lambda o: encode("WEBP", orientation=o, quality=80),
    "webp-lossless": lambda o: encode("WEBP", orientation=o, lossless=True),
    "tiff": lambda o: encode("TIFF", orientation=o),
}


def decoded(data: bytes) -> np.ndarray:
    """What the classifier sees: the first frame, turned upright, in RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def assert_clean(stored: bytes, original: bytes) -> None:
    for secret in SECRETS:
        assert secret not in stored, secret
    with Image.open(io.BytesIO(stored)) as image:
        found = image.getexif()
        assert found.get_ifd(0x8825) == {}  # no GPS
        assert set(found) - {0x0112} <= {256, 257, 258, 259, 262, 273, 277, 278, 279, 284}
        assert "xmp" not in image.info and "comment" not in image.info
    with Image.open(io.BytesIO(original)) as image:
        assert image.getexif().get_ifd(0x8825)  # the test file did carry a position
    assert np.array_equal(decoded(stored), decoded(original))


@pytest.mark.parametrize("orientation", [None, 1, 6, 3])
@pytest.mark.parametrize("kind", sorted(FILES))
def test_metadata_goes_and_pixels_stay(kind: str, orientation: int | None) -> None:
    original = FILES[kind](orientation)
    stored = strip_metadata(original)
    assert_clean(stored, original)
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == Image.open(io.BytesIO(original)).format
        if kind != "tiff":  # TIFF is re-encoded upright: Pillow turns it as it loads
            assert image.getexif().get(0x0112, 1) == (orientation or 1)
    assert strip_metadata(stored) == stored  # nothing left to remove


def test_jpeg_keeps_its_entropy_coded_data_byte_for_byte() -> None:
    original = FILES["jpeg"](None)
    stored = strip_metadata(original)
    scan = original.index(b"\xff\xda")
    assert stored.endswith(original[scan:])  # no re-encoding: the scan is the same bytes
    assert len(stored) < len(original)


def test_jpeg_keeps_icc_and_adobe_and_drops_what_follows_the_image() -> None:
    out = io.BytesIO()
    icc = b"\x00" * 128 + b"fake but kept"
    pixels("CMYK").save(out, format="JPEG", icc_profile=icc, exif=exif(), quality=95)
    original = out.getvalue()
    assert b"Adobe" in original
    second = encode("JPEG", quality=50)  # an MPF-style secondary image, with its own EXIF
    stored = strip_metadata(original + second)
    assert b"Adobe" in stored and b"fake but kept" in stored
    assert stored.endswith(b"\xff\xd9") and b"Alice's camera" not in stored
    with Image.open(io.BytesIO(stored)) as image:
        assert image.info.get("icc_profile") == icc
    with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(stored)) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # CMYK: the Adobe flag kept


def test_progressive_jpeg_with_restart_markers() -> None:
    original = encode("JPEG", progressive=True, restart_marker_blocks=1, quality=85)
    stored = strip_metadata(original)
    assert_clean(stored, original)


def test_png_text_chunks_go_and_transparency_stays() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Alice's camera")
    info.add_text("Comment", "secret comment", zip=True)
    info.add_itxt("Location", "GPSLatitude 52.5", lang="en")
    out = io.BytesIO()
    pixels("RGBA").save(out, format="PNG", pnginfo=info, exif=exif(), dpi=(72, 72))
    original = out.getvalue()
    stored = strip_metadata(original)
    assert_clean(stored, original)
    with Image.open(io.BytesIO(stored)) as image:
        assert image.mode == "RGBA" and image.text == {}
        assert image.info["dpi"] == pytest.approx((72, 72), abs=0.01)  # pHYs: not personal


def test_gif_comments_and_xmp_go_animation_stays() -> None:
    frames = [pixels("P"), pixels("P").rotate(90, expand=False)]
    out = io.BytesIO()
    frames[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        loop=0,
        duration=100,
        comment=b"secret comment",
    )
    xmp = b"\x21\xff\x0bXMP DataXMP" + bytes([len(XMP[:255])]) + XMP[:255] + b"\x00"
    original = out.getvalue()
    original = original[:-1] + xmp + b"\x3b"  # an XMP application extension, before the end
    stored = strip_metadata(original)
    assert b"secret comment" not in stored and b"XMP DataXMP" not in stored
    assert b"NETSCAPE2.0" in stored  # looping kept
    with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(stored)) as b:
        assert b.n_frames == a.n_frames == 2
        for i in range(2):
            a.seek(i)
            b.seek(i)
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_bmp_is_stored_as_is() -> None:
    out = io.BytesIO()
    pixels().save(out, format="BMP")
    assert strip_metadata(out.getvalue()) == out.getvalue()


def test_a_file_the_walker_cannot_follow_is_re_encoded_without_metadata() -> None:
    out = io.BytesIO()
    pixels("P").save(out, format="GIF", comment=b"secret comment")
    original = out.getvalue()
    header = 13 + 3 * 256  # signature, screen descriptor, global colour table
    # A stray byte between blocks: Pillow skips it, the walker gives up (re-encoding).
    odd = original[:header] + b"\x00" + original[header:]
    with Image.open(io.BytesIO(odd)) as image:
        assert image.info["comment"] == b"secret comment"
    stored = strip_metadata(odd)
    assert b"secret comment" not in stored
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == "GIF" and "comment" not in image.info
    assert np.array_equal(decoded(stored), decoded(original))
    with pytest.raises(ValueError, match="cannot remove the metadata"):
        strip_metadata(b"\xff\xd8\xff\xe0 not a jpeg at all")


@pytest.mark.parametrize("keep", [False, True])
def test_the_store_files_the_clean_copy_under_the_uploads_hash(tmp_path: Path, keep: bool) -> None:
    store = build_store(Settings(data_dir=tmp_path, keep_image_metadata=keep))
    original = FILES["jpeg"](6)
    sha256 = hashlib.sha256(original).hexdigest()
    key = store.put(sha256, original, content_type="image/jpeg")
    assert key == store.key_for(sha256)
    stored = store.get(key)
    if keep:
        assert stored == original
    else:
        assert_clean(stored, original)
        assert hashlib.sha256(stored).hexdigest() != sha256
    with pytest.raises(ValueError, match="does not hash"):
        store.put(hashlib.sha256(stored).hexdigest()[::-1], original, content_type="image/jpeg")
