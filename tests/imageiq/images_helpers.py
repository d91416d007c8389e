"""Images in the shapes users send, made with Pillow (bytes, ready to upload)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Any

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


# --- a corpus of real-world uploads, and of hostile inputs -----------------------------------
# Everything is made here at test time: no files checked in, no network. Every corpus image is
# at most 150 KB and 1,000,000 pixels (the test server's limits).

CORPUS_MAX_BYTES = 150_000
CORPUS_MAX_PIXELS = 1_000_000

_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
_ADAM7 += ((0, 1, 1, 2),)


def _png_chunk(kind: bytes, data: bytes, *, bad_crc: bool = False) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    if bad_crc:
        crc ^= 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def raw_png(
    pixels: np.ndarray,
    *,
    interlace: bool = False,
    extra_chunks: tuple[tuple[bytes, bytes], ...] = (),
    bad_crc: frozenset[bytes] = frozenset(),
) -> bytes:
    """A PNG written by hand (filter 0), for what Pillow cannot write: 16-bit RGB(A), Adam7.

    ``pixels`` is uint8 or uint16, [H, W] (gray), [H, W, 2] (gray+alpha), [H, W, 3] (RGB) or
    [H, W, 4] (RGBA). ``extra_chunks`` go between IHDR and IDAT; ``bad_crc`` names the chunks
    whose checksum is broken.
    """
    arr = pixels if pixels.ndim == 3 else pixels[:, :, None]
    height, width, channels = arr.shape
    depth = 16 if arr.dtype == np.uint16 else 8
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    if depth == 16:
        arr = arr.astype(">u2")
    raw = bytearray()
    for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
        sub = arr[y0::dy, x0::dx]
        if sub.size == 0:  # an empty pass carries no rows at all
            continue
        for row in sub:
            raw += b"\x00" + row.tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, int(interlace))
    chunks = [(b"IHDR", ihdr), *extra_chunks, (b"IDAT", zlib.compress(bytes(raw), 9))]
    return (
        b"\x89PNG\r\n\x1a\n"
        + b"".join(_png_chunk(kind, data, bad_crc=kind in bad_crc) for kind, data in chunks)
        + _png_chunk(b"IEND", b"")
    )


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (gradients and a little grain) that compresses well,
    unlike :func:`photo`'s noise: for the larger images."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / (width / 3.0) + rng.uniform(0, 6))
    g = 255 * y / max(height - 1, 1)
    b = 128 + 90 * np.cos((x + y) / (height / 2.0 + 1))
    arr = np.stack([r, g, b], axis=-1) + rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def exif_orientation(value: int) -> bytes:
    """An EXIF block carrying only the Orientation tag (0x0112)."""
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def _srgb_profile() -> bytes | None:
    try:
        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    except (ImportError, OSError):  # Pillow built without littlecms
        return None
    # the header's creation time (bytes 24-35) is "now": fix it, so the corpus is reproducible
    return profile[:24] + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + profile[36:]


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(marker, offset) of each JPEG segment up to the start of scan."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        out.append((marker, pos))
        if marker == 0xDA:
            break
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return out


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with the frame header (SOF) rewritten to claim width x height."""
    sof = next(pos for marker, pos in _jpeg_segments(data) if 0xC0 <= marker <= 0xC2)
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def jpeg_with_app1(data: bytes, payload: bytes) -> bytes:
    """``data`` with an APP1 segment (EXIF's) of ``payload`` right after SOI."""
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def _gif_first_frame(data: bytes) -> int:
    """Offset of the first image descriptor (0x2C) of a GIF, past its colour table and
    extension blocks."""
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[pos] == 0x21:  # extension: introducer, label, then sub-blocks to a 0 length
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C, "no image descriptor where expected"
    return pos


def corpus(seed: int = 0) -> dict[str, bytes]:
    """Valid images the way users send them, each a distinct case: every format of
    :func:`variants` plus EXIF orientations, subsampling, ICC profiles, metadata, 16-bit,
    interlaced, multi-page, animated, tiny, panoramic and at-the-limit images."""
    rgb = photo(seed=seed)  # 80x60, landscape: EXIF orientations 5..8 turn it to 60x80
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    rng = np.random.default_rng(seed)
    rgb16 = rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    rgba16 = rng.integers(0, 65536, (40, 50, 4), dtype=np.uint16)
    pal = rgb.convert("P")
    jpeg = encode(rgb, "JPEG")
    red = Image.new("RGB", (1, 1), (200, 30, 10))

    out = dict(variants(seed))
    # JPEG: what cameras, phones and editors write
    for value in range(2, 9):
        out[f"exif-orientation-{value}.jpg"] = encode(rgb, "JPEG", exif=exif_orientation(value))
    out["exif-orientation-0-invalid.jpg"] = encode(rgb, "JPEG", exif=exif_orientation(0))
    out["exif-garbage.jpg"] = jpeg_with_app1(jpeg, b"Exif\x00\x00" + b"\xab" * 100)
    out["gray.jpg"] = encode(rgb.convert("L"), "JPEG")
    out["subsampling-444.jpg"] = encode(rgb, "JPEG", subsampling=0, quality=90)
    out["subsampling-422.jpg"] = encode(rgb, "JPEG", subsampling=1)
    out["subsampling-420.jpg"] = encode(rgb, "JPEG", subsampling=2)
    out["optimized-q30.jpg"] = encode(rgb, "JPEG", quality=30, optimize=True)
    out["restart-markers.jpg"] = encode(rgb, "JPEG", restart_marker_rows=1)
    profile = _srgb_profile()
    if profile is not None:
        out["icc-srgb.jpg"] = encode(rgb, "JPEG", icc_profile=profile)
        out["icc-srgb.png"] = encode(rgb, "PNG", icc_profile=profile)
    out["xmp-comment.jpg"] = encode(
        rgb,
        "JPEG",
        comment=b"Taken with a phone",
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>',
    )
    out["junk-after-eoi.jpg"] = jpeg + b"\x00" * 64 + b"trailing junk " * 20
    out["multi-picture.mpo"] = encode(rgb, "MPO", save_all=True, append_images=[rgb.rotate(180)])
    # sizes: Pillow's draft() would reduce the large ones; 1000x1000 is exactly the limit
    out["large-1000x750.jpg"] = encode(scene(1000, 750, seed), "JPEG", quality=80)
    out["at-pixel-limit-1000x1000.jpg"] = encode(scene(1000, 1000, seed), "JPEG", quality=75)
    out["panorama-600x150.jpg"] = encode(scene(600, 150, seed), "JPEG", quality=85)
    out["portrait-150x600.png"] = encode(scene(150, 600, seed).quantize(64), "PNG")
    out["tiny-1x1.png"] = encode(red, "PNG")
    out["tiny-1x1.jpg"] = encode(red, "JPEG")
    # PNG
    out["interlaced-adam7.png"] = raw_png(np.asarray(rgb), interlace=True)
    out["interlaced-adam7-rgba16.png"] = raw_png(rgba16, interlace=True)
    out["gray-alpha-la.png"] = encode(rgba.convert("LA"), "PNG")
    out["rgb16.png"] = raw_png(rgb16)
    out["rgba16.png"] = raw_png(rgba16)
    out["palette-opaque.png"] = encode(pal, "PNG")
    out["palette-4bit.png"] = encode(rgb.quantize(16), "PNG", bits=4)
    out["trns-rgb.png"] = encode(rgb, "PNG", transparency=tuple(np.asarray(rgb)[0, 0].tolist()))
    out["text-gama-chunks.png"] = raw_png(
        np.asarray(rgb),
        extra_chunks=((b"tEXt", b"Software\x00ImageIQ tests"), (b"gAMA", struct.pack(">I", 45455))),
    )
    out["animated.apng"] = encode(rgb, "PNG", save_all=True, append_images=[rgb.rotate(180)])
    # TIFF: scanners, print and photo workflows
    out["lzw.tiff"] = encode(rgb, "TIFF", compression="tiff_lzw")
    out["deflate.tiff"] = encode(rgb, "TIFF", compression="tiff_adobe_deflate")
    out["jpeg-compressed.tiff"] = encode(rgb, "TIFF", compression="jpeg")
    out["bilevel-group4.tiff"] = encode(rgb.convert("1"), "TIFF", compression="group4")
    out["alpha.tiff"] = encode(rgba, "TIFF")
    out["gray-alpha.tiff"] = encode(rgba.convert("LA"), "TIFF")
    out["cmyk.tiff"] = encode(rgb.convert("CMYK"), "TIFF")
    out["gray16.tiff"] = encode(Image.fromarray(rgb16[:, :, 0]), "TIFF")
    out["float32.tiff"] = encode(Image.fromarray(rng.random((40, 50), dtype=np.float32)), "TIFF")
    out["multipage.tiff"] = encode(
        rgb, "TIFF", save_all=True, append_images=[rgb.rotate(180), rgb.convert("L")]
    )
    # BMP, WebP, GIF
    out["palette-8bit.bmp"] = encode(pal, "BMP")
    out["bgra-32bit.bmp"] = encode(rgba, "BMP")
    out["bilevel-1bit.bmp"] = encode(rgb.convert("1"), "BMP")
    out["lossless.webp"] = encode(rgb, "WEBP", lossless=True)
    out["animated.webp"] = encode(
        rgb, "WEBP", save_all=True, append_images=[rgb.rotate(180)], duration=100, loop=0
    )
    out["exif-orientation-6.webp"] = encode(rgb, "WEBP", exif=exif_orientation(6))
    out["transparent.gif"] = encode(pal, "GIF", transparency=0)
    out["single-frame.gif"] = encode(pal, "GIF")
    return out


def hostile_inputs(seed: int = 0) -> dict[str, tuple[bytes, int, str]]:
    """Bad uploads -> (bytes, HTTP status, error code) that ``decode_image`` refuses them with
    (``max_pixels=1_000_000``): not images, images in unsupported formats, truncated and
    corrupt images, and headers claiming absurd sizes."""
    rng = np.random.default_rng(seed)
    rgb = photo(seed=seed)
    jpeg = encode(scene(200, 150, seed), "JPEG")
    sos = next(pos for marker, pos in _jpeg_segments(jpeg) if marker == 0xDA)
    png = encode(rgb, "PNG")
    gif = encode(rgb.convert("P"), "GIF")
    frame = _gif_first_frame(gif)
    bmp = encode(rgb, "BMP")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo("photo.txt", (2020, 1, 1, 0, 0, 0)), "not a photo " * 50)
    zip_bytes = archive.getvalue()
    bmp_info = struct.pack("<IiiHHIIiiII", 40, 65535, 65535, 1, 24, 0, 0, 0, 0, 0, 0)

    empty, too_large, unsupported, corrupt = (
        (400, "empty_image"),
        (413, "image_too_large"),
        (415, "unsupported_image_format"),
        (422, "corrupt_image"),
    )
    cases: dict[str, tuple[bytes, tuple[int, str]]] = {
        "empty.bin": (b"", empty),
        # not images at all
        "random-bytes.bin": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), unsupported),
        "page.html": (b"<!DOCTYPE html><html><body><img src='cat.jpg'></body></html>", unsupported),
        "drawing.svg": (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10"'
            b' height="10"><rect width="10" height="10"/></svg>',
            unsupported,
        ),
        "notes.txt": (b"just some text\n", unsupported),
        "document.pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", unsupported),
        "archive.zip": (zip_bytes, unsupported),
        "polyglot-html-then-png.html": (b"<html>" + png, unsupported),
        "polyglot-zip-then-png.zip": (zip_bytes + png, unsupported),
        # images, but in formats the service does not take
        "photo.heic-header": (
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
            unsupported,
        ),
        "photo.ico": (encode(rgb, "ICO"), unsupported),
        "photo.ppm": (encode(rgb, "PPM"), unsupported),
        "photo.tga": (encode(rgb, "TGA"), unsupported),
        # broken headers of a supported format (its signature is there)
        "png-signature-only.png": (png[:8], corrupt),
        "png-bad-crc-ihdr.png": (
            raw_png(np.asarray(rgb), bad_crc=frozenset({b"IHDR"})),
            corrupt,
        ),
        "png-0x0.png": (png_header_only(0, 0), corrupt),
        "jpeg-0x0.jpg": (jpeg_with_size(jpeg, 0, 0), corrupt),
        "jpeg-soi-then-garbage.jpg": (
            b"\xff\xd8" + rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(),
            corrupt,
        ),
        "jpeg-soi-eoi-only.jpg": (b"\xff\xd8\xff\xd9", corrupt),
        "gif-header-no-frame.gif": (gif[:13] + b"\x3b", corrupt),
        "tiff-bogus-ifd-offset.tif": (
            b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + b"\x00" * 32,
            corrupt,
        ),
        "tiff-header-only.tif": (b"II*\x00\x08\x00\x00\x00", corrupt),
        # too many pixels, refused from the header
        "png-60000x60000.png": (png_header_only(60000, 60000), too_large),
        "jpeg-65535x65535.jpg": (jpeg_with_size(jpeg, 65535, 65535), too_large),
        "gif-65535x65535.gif": (gif[:6] + struct.pack("<HH", 65535, 65535) + gif[10:], too_large),
        "bmp-65535x65535.bmp": (
            b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + bmp_info,
            too_large,
        ),
        "over-limit-1001x1000.jpg": (encode(scene(1001, 1000, seed), "JPEG"), too_large),
        # recognised, but the data is truncated or corrupt
        "truncated-mid-scan.jpg": (jpeg[: sos + (len(jpeg) - sos) // 2], corrupt),
        "truncated-before-scan.jpg": (jpeg[:sos], corrupt),
        "truncated.png": (png[: len(png) // 2], corrupt),
        "truncated-in-ihdr.png": (png[:20], corrupt),
        "png-header-only-2000x400.png": (png_header_only(2000, 400), corrupt),
        "png-ztxt-bomb.png": (
            raw_png(
                np.asarray(rgb),
                extra_chunks=((b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * (4 << 20))),),
            ),
            corrupt,
        ),
        "gif-frame-without-data.gif": (gif[: frame + 10] + b"\x3b", corrupt),
        "webp-truncated.webp": (encode(rgb, "WEBP")[:30], corrupt),
        "webp-riff-header-only.webp": (b"RIFF\x00\x00\x00\x00WEBPVP8 ", corrupt),
        "truncated.bmp": (bmp[:200], corrupt),
        "png-bad-crc-idat.png": (raw_png(np.asarray(rgb), bad_crc=frozenset({b"IDAT"})), corrupt),
    }
    return {name: (data, status, code) for name, (data, (status, code)) in cases.items()}


def predict_offline(classifier: Any, images: list[Image.Image], *, top_k: int) -> list[Any]:
    """The offline reference: prepare each image, stack, predict (no server, no batcher)."""
    import torch

    return classifier.predict(torch.stack([classifier.prepare(im) for im in images]), top_k=top_k)
