"""Stored images without personal metadata: no EXIF (GPS position, camera serial numbers,
times), XMP, IPTC, comments or text chunks, unless ``keep_image_metadata`` says so.

The pixels are never touched where the format allows: JPEG, PNG, WebP and GIF are walked
segment by segment (chunk, block) and the metadata ones are left out, so the stored file
decodes to exactly the pixels the model saw. A library would do less: Pillow cannot drop a
segment without re-encoding (lossy for JPEG), and piexif removes EXIF only (not XMP, IPTC,
comments, PNG text). What the viewer needs is kept: the colour profile (ICC), JFIF and
Adobe segments (the Adobe one says how to convert the colours), transparency, gamma,
animation. The orientation, which EXIF (or XMP) carries and the classifier applies, is
written back as a minimal EXIF block holding that one tag, so the stored image is seen the
way it was classified.

TIFF keeps its metadata in the same directory as its pixel layout, so it is re-encoded
(deflate: lossless) with nothing but the orientation and the ICC profile, every frame
kept. BMP has no metadata container and is stored as is. A file of a listed format that the
walker cannot follow (it decoded, but its structure is off) is re-encoded by Pillow without
metadata as well: for JPEG with its own quantisation tables (``quality="keep"``), the
closest to lossless there is. Bytes of no supported format are stored as they are: they
never reached the store (only decoded images do).

The image id stays the sha256 of the bytes the client sent; only the stored copy changes.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageSequence, JpegImagePlugin

ORIENTATION = 0x0112
_PNG = b"\x89PNG\r\n\x1a\n"
# PNG chunks that draw the image (ancillary ones a viewer needs), besides the critical ones
# (upper-case first letter). Everything else goes: tEXt, zTXt, iTXt, eXIf, tIME, private.
_PNG_KEEP = set(b"tRNS gAMA cHRM sRGB iCCP sBIT bKGD pHYs cICP mDCv cLLi acTL fcTL fdAT".split())
# WebP chunks of the pixels, their colour profile and animation; EXIF, XMP and unknown go.
_WEBP_KEEP = {b"VP8X", b"VP8 ", b"VP8L", b"ALPH", b"ICCP", b"ANIM", b"ANMF"}
_WEBP_EXIF, _WEBP_XMP = 0x08, 0x04  # VP8X flags
# GIF application extensions that play the animation or colour it.
_GIF_KEEP_APPS = {b"NETSCAPE2.0", b"ANIMEXTS1.0", b"ICCRGBG1012"}
# What a re-encoded frame keeps of Pillow's ``info``: how it is drawn and played.
_INFO_KEEP = ("transparency", "duration", "loop", "background", "disposal", "icc_profile")


class _Malformed(ValueError):
    """The walker cannot follow the file's structure."""


def strip_metadata(data: bytes) -> bytes:
    """``data`` without personal metadata (see the module's docstring), in its format.
    Raises ValueError for an image that neither the walkers nor Pillow can read."""
    walker = _walker(data)
    if walker is None:
        return data
    try:
        return walker(data, _orientation(data))
    except (_Malformed, struct.error, IndexError):
        pass
    try:
        return _reencode(data)
    except Exception as e:  # not decodable after all: never stored with its metadata
        raise ValueError(f"cannot remove the metadata of this image: {e}") from e


def _walker(data: bytes) -> Callable[[bytes, int], bytes] | None:
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg
    if data.startswith(_PNG):
        return _png
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff
    return None  # BMP (no metadata container), or not an image at all


def _orientation(data: bytes) -> int:
    """The orientation the classifier applied (EXIF, else XMP; 1 when none or broken)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            value = int(image.getexif().get(ORIENTATION, 1))
    except Exception:  # a broken EXIF block: the decoder took it as no orientation too
        return 1
    return value if 1 <= value <= 8 else 1


def _exif_tiff(orientation: int) -> bytes:
    """A minimal EXIF (TIFF) block holding only the orientation."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()[6:]  # less the "Exif\0\0" header of the JPEG segment


# --- JPEG --------------------------------------------------------------------------------------
def _jpeg_keeps(marker: int, payload: bytes) -> bool:
    if marker == 0xFE:  # COM
        return False
    if 0xE0 <= marker <= 0xEF:  # APPn: only JFIF/JFXX, the ICC profile and Adobe's
        return (
            marker == 0xE0
            or (marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"))
            or (marker == 0xEE and payload.startswith(b"Adobe"))
        )
    return True  # tables, frame, scan, restart interval, ...


def _jpeg(data: bytes, orientation: int) -> bytes:
    """The first image, SOI to EOI, without the metadata segments; what follows EOI (MPF
    secondary images with EXIF of their own, vendor trailers) goes too."""
    out = [b"\xff\xd8"]
    pos, size = 2, len(data)
    first = True
    while True:
        if pos >= size or data[pos] != 0xFF:
            raise _Malformed("expected a marker")
        while pos < size and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= size:
            raise _Malformed("truncated")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            out.append(b"\xff\xd9")
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            out.append(bytes((0xFF, marker)))
            continue
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        end = pos + length
        if length < 2 or end > size:
            raise _Malformed("segment runs past the end")
        if _jpeg_keeps(marker, data[pos + 2 : end]):
            out.append(data[pos - 2 : end])
        if first:  # the orientation goes after JFIF (which must come first) or SOI
            first = False
            if orientation != 1:
                exif = b"Exif\x00\x00" + _exif_tiff(orientation)
                segment = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
                out.insert(2 if marker == 0xE0 else 1, segment)
        pos = end
        if marker == 0xDA:  # SOS: the entropy-coded data runs to the next real marker
            scan = pos
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= size:
                    raise _Malformed("scan without an end")
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2  # a stuffed 0xFF, or a restart marker inside the scan
                    continue
                break
            out.append(data[scan:pos])
    return b"".join(out)


# --- PNG ---------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png(data: bytes, orientation: int) -> bytes:
    out = [_PNG]
    pos, size = len(_PNG), len(data)
    while True:
        if pos + 12 > size:
            raise _Malformed("truncated chunk")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > size:
            raise _Malformed("chunk runs past the end")
        if kind == b"IDAT" and orientation != 1:
            out.append(_png_chunk(b"eXIf", _exif_tiff(orientation)))
            orientation = 1  # written once, before the first IDAT
        if kind[0:1].isupper() or kind in _PNG_KEEP:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            return b"".join(out)


# --- WebP --------------------------------------------------------------------------------------
def _webp(data: bytes, orientation: int) -> bytes:
    (riff_size,) = struct.unpack("<I", data[4:8])
    size = min(len(data), 8 + riff_size)
    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    while pos + 8 <= size:
        kind, length = struct.unpack("<4sI", data[pos : pos + 8])
        end = pos + 8 + length
        if end > size:
            raise _Malformed("chunk runs past the end")
        chunks.append((kind, data[pos + 8 : end]))
        pos = end + (length & 1)  # chunks are padded to an even size
    if not chunks:
        raise _Malformed("no chunks")
    if chunks[0][0] != b"VP8X":  # the simple format: one image chunk, no room for more
        return _riff_file(chunks[:1])
    if len(chunks[0][1]) < 10:
        raise _Malformed("extended format without its header")
    kept = [(k, p) for k, p in chunks if k in _WEBP_KEEP]
    header = bytearray(chunks[0][1])
    header[0] &= ~(_WEBP_EXIF | _WEBP_XMP) & 0xFF
    if orientation != 1:
        header[0] |= _WEBP_EXIF
        kept.append((b"EXIF", _exif_tiff(orientation)))  # EXIF comes after the image data
    kept[0] = (b"VP8X", bytes(header))
    return _riff_file(kept)


def _riff_file(kept: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        struct.pack("<4sI", k, len(p)) + p + (b"\x00" if len(p) & 1 else b"") for k, p in kept
    )
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


# --- GIF ---------------------------------------------------------------------------------------
def _gif_table(flags: int) -> int:
    return 3 * (2 ** ((flags & 0x07) + 1)) if flags & 0x80 else 0


def _gif_sub_blocks(data: bytes, pos: int) -> int:
    """The position after a run of data sub-blocks (ending with a zero-length one)."""
    while True:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            return pos


def _gif(data: bytes, orientation: int) -> bytes:
    """Comments and application extensions other than looping and ICC go; no EXIF exists."""
    pos = 13 + _gif_table(data[10])
    out = [data[:pos]]
    while True:
        introducer = data[pos]
        if introducer == 0x3B:  # trailer: what follows it is not part of the GIF
            out.append(b"\x3b")
            return b"".join(out)
        if introducer == 0x2C:  # image: descriptor, local table, LZW code size, data
            start = pos
            pos += 10 + _gif_table(data[pos + 9]) + 1
            pos = _gif_sub_blocks(data, pos)
            out.append(data[start:pos])
        elif introducer == 0x21:
            start, label = pos, data[pos + 1]
            pos = _gif_sub_blocks(data, pos + 2)
            application = data[start + 3 : start + 14] if data[start + 2] == 11 else b""
            if label == 0xFE or (label == 0xFF and application not in _GIF_KEEP_APPS):
                continue  # a comment, or XMP and other application data
            out.append(data[start:pos])
        else:
            raise _Malformed(f"unknown GIF block 0x{introducer:02x}")


# --- TIFF and anything the walkers cannot follow -----------------------------------------------
def _tiff(data: bytes, orientation: int) -> bytes:
    return _reencode(data)


def _reencode(data: bytes) -> bytes:
    """Pillow's copy of the image in its own format, every frame, with no metadata but the
    orientation and the ICC profile. Lossless except for JPEG (saved with its own
    quantisation tables and subsampling: no visible loss)."""
    options: dict[str, Any] = {}
    with Image.open(io.BytesIO(data)) as image:
        fmt = "JPEG" if image.format == "MPO" else (image.format or "PNG")
        image.load()
        # Read after loading: Pillow turns a single-frame TIFF upright as it loads it (and
        # drops the tag then), so only an orientation still there is left to keep.
        try:
            orientation = int(image.getexif().get(ORIENTATION, 1))
        except Exception:
            orientation = 1
        orientation = orientation if 1 <= orientation <= 8 else 1
        if fmt == "JPEG":
            options["qtables"] = getattr(image, "quantization", None)
            sampling = JpegImagePlugin.get_sampling(image)
            if sampling >= 0:
                options["subsampling"] = sampling
            frames = [_clean(image)]  # the first image only, as decoded
        else:
            frames = [_clean(frame) for frame in ImageSequence.Iterator(image)]
    if fmt == "TIFF":
        options["compression"] = "tiff_adobe_deflate"
    elif fmt == "WEBP":
        options.update(lossless=True, exact=True)
    if orientation != 1:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    if frames[0].info.get("icc_profile"):
        options["icc_profile"] = frames[0].info["icc_profile"]
    out = io.BytesIO()
    if len(frames) > 1:
        options.update(save_all=True, append_images=frames[1:])
    frames[0].save(out, format=fmt, **options)
    return out.getvalue()


def _clean(frame: Image.Image) -> Image.Image:
    """A detached copy of a frame with only the information that draws it: Pillow's savers
    copy comments, XMP, IPTC and TIFF tags from the image they save, never from a copy."""
    copy = frame.copy()
    copy.info = {k: v for k, v in frame.info.items() if k in _INFO_KEEP}
    return copy
