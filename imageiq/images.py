"""Turning untrusted bytes into a decoded PIL image, within limits, or a domain error.

The pixel limit is checked from the header, before any pixel data is decoded, so a
decompression bomb is refused without allocating it. Orientation (EXIF) is applied here;
colour handling (modes, alpha) belongs to the model's preprocessing.

Large JPEGs can be decoded at 1/2, 1/4 or 1/8 scale (Pillow's ``draft``: the IDCT skips the
detail) when the model needs far fewer pixels (at least 4x fewer per side). The reduced image
stays at least the size asked for, and the final resize antialiases from there; the DCT
scaling is itself a clean low-pass filter, so the model's input moves by under 1/255 on
average (docs/performance.md).
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from imageiq.errors import CorruptImage, EmptyImage, ImageTooLarge, UnsupportedImageFormat

SUPPORTED_HUMAN = "JPEG, PNG, WebP, GIF, BMP and TIFF"
Image.init()  # register every plugin, so opening with `formats=` finds them all
# Pillow format names we accept. MPO, the multi-picture JPEG of many phone cameras, is a
# format of its own in older Pillow releases and part of JPEG in newer ones.
SUPPORTED_FORMATS = tuple(
    f for f in ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF") if f in Image.OPEN
)


# Only JPEGs at least DRAFT_FROM times the size the model needs are drafted (camera photos,
# not everyday uploads), to the smallest scale that still gives that size. Pillow's
# `thumbnail` keeps twice the size; the smallest scale decodes a 4000x3000 photo for a 256 px
# resize at 1/8 instead of 1/4: 5 ms less on 2 cores, the input within 1/255 on average.
DRAFT_FROM = 4
# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # oriented; possibly drafted to a smaller size
    format: str  # Pillow's name: JPEG, PNG, WEBP, ...
    width: int  # of the full image as the viewer sees it (after EXIF orientation)
    height: int


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode ``data``; EXIF orientation applied, first frame of animations."""
    return read_image(data, max_pixels=max_pixels, draft_size=draft_size).image


def read_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> DecodedImage:
    """Decode ``data`` (see :func:`decode_image`); a JPEG whose shorter side is at least
    twice ``draft_size`` is decoded at a reduced scale that keeps it at least that large."""
    if not data:
        raise EmptyImage("The uploaded image is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        claimed = _claimed_format(data)
        if claimed is not None:
            raise CorruptImage(
                f"The data starts like a {claimed} image but its header is broken."
            ) from None
        raise UnsupportedImageFormat(
            f"The upload is not an image in a supported format ({SUPPORTED_HUMAN})."
        ) from None
    except Image.DecompressionBombError as e:  # Pillow's own guard, far above ours
        raise ImageTooLarge(
            f"The image has too many pixels; at most {max_pixels} are accepted.",
            details={"max_pixels": max_pixels},
        ) from e
    except Exception as e:  # Pillow raises many types on hostile headers
        raise CorruptImage(f"The image header could not be read ({type(e).__name__}).") from e
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImage(f"The image has no pixels ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} = {width * height} pixels; "
            f"at most {max_pixels} are accepted.",
            details={"width": width, "height": height, "max_pixels": max_pixels},
        )
    fmt = str(image.format)
    if fmt == "PNG":
        _check_png_chunks(data)
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block: exif_transpose below reports it
        orientation = 1
    if orientation in _TRANSPOSED:
        width, height = height, width
    if draft_size and fmt in ("JPEG", "MPO") and min(width, height) >= DRAFT_FROM * draft_size:
        target = draft_size
        image.draft(None, (target, target))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            oriented = ImageOps.exif_transpose(image)
    except Exception as e:  # truncated data, bad chunks, broken EXIF, ...
        raise CorruptImage(
            f"The {image.format} image could not be decoded ({type(e).__name__}: {e})."
        ) from e
    if oriented is not image:
        oriented.format = image.format
    return DecodedImage(oriented, fmt, width, height)


def pixels_to_decode(data: bytes, *, draft_size: int | None = None) -> int:
    """The pixels :func:`read_image` will decode, from the header alone (a JPEG it drafts
    counts at its reduced scale); 0 when the header cannot be read (decoding says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as image:
                width, height, fmt = *image.size, image.format
    except Exception:
        return 0
    scale = 1
    if draft_size and fmt in ("JPEG", "MPO") and min(width, height) >= DRAFT_FROM * draft_size:
        while scale < 8 and min(width, height) // (scale * 2) >= draft_size:
            scale *= 2
    return max(0, -(-width // scale) * -(-height // scale))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


def _claimed_format(data: bytes) -> str | None:
    """The supported format whose signature ``data`` starts with, if any."""
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    if (
        data.startswith(b"BM")
        and len(data) >= 18
        and struct.unpack_from("<I", data, 14)[0] in _BMP_HEADER_SIZES
    ):
        return "BMP"
    return None


def _check_png_chunks(data: bytes) -> None:
    """Every chunk's CRC: Pillow checks those before the pixel data, not the pixel data
    itself, so a flipped bit in IDAT would otherwise decode into a silently wrong image."""
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data):
            return  # truncated: decoding reports it
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[pos + 4 : end]) & 0xFFFFFFFF != crc:
            raise CorruptImage(
                f"The PNG's {kind.decode('latin-1')!r} chunk fails its CRC check: "
                "the file is damaged."
            )
        if kind == b"IEND":
            return
        pos = end + 4
