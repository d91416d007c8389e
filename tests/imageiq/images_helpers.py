"""Images in the shapes users send, made with Pillow (bytes, ready to upload)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def photo(width: int = 80, height: int = 60, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def variants(seed: int = 0) -> dict[str, bytes]:
    """One image in every supported format and colour layout."""
    rgb = photo(seed=seed)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:])
    gray16 = Image.fromarray(
        np.random.default_rng(seed).integers(0, 65535, (50, 50)).astype(np.uint16)
    )
    return {
        "baseline.jpg": encode(rgb, "JPEG"),
        "progressive.jpg": encode(rgb, "JPEG", progressive=True),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "exif-rotated.jpg": encode(rgb, "JPEG", exif=exif.tobytes()),
        "rgb.png": encode(rgb, "PNG"),
        "alpha.png": encode(rgba, "PNG"),
        "palette-transparent.png": encode(rgb.convert("P"), "PNG", transparency=0),
        "gray.png": encode(rgb.convert("L"), "PNG"),
        "gray16.png": encode(gray16, "PNG"),
        "bilevel.png": encode(rgb.convert("1"), "PNG"),
        "lossy.webp": encode(rgb, "WEBP"),
        "alpha.webp": encode(rgba, "WEBP"),
        "animated.gif": anim.getvalue(),
        "image.bmp": encode(rgb, "BMP"),
        "image.tiff": encode(rgb, "TIFF"),
    }


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no data (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
