"""A JPEG's header, read from its bytes, to route it to the GPU's JPEG decoder (nvJPEG) or not.

With ``--decode-device cuda`` batches of JPEGs are decoded on the GPU, which takes only the
common kind: 8-bit sequential Huffman JPEGs (SOF0 baseline, SOF1 extended) in grey or YCbCr,
within the pixel cap. Everything else falls back to the CPU path, item by item, decided here
before any decoding: progressive, lossless, arithmetic-coded and 12-bit JPEGs, CMYK/YCCK and
RGB-stored files, and any header that does not parse up to the first scan (not a JPEG, cut short,
a bad marker or length), which the CPU decoder turns into a clear error row. Only the header is
read: a file cut inside its scan data passes here, and the GPU decode itself must fail it.

The orientation is the one the CPU path applies (PIL's ``ImageOps.exif_transpose``): EXIF IFD0's
tag, else XMP's ``tiff:Orientation`` as Pillow reads it, so the GPU path can rotate the same way.
Every length and offset is checked against the data: no input raises, and the work is bounded.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

_MAX_MARKERS = 256  # split ICC profiles and Photoshop blocks take dozens; no real header more
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no segment
_SOS, _APP0, _APP1, _APP14 = 0xDA, 0xE0, 0xE1, 0xEE
# What may come before the first scan (as libjpeg): tables, restart interval, APPn, comments.
_HEADER = _SOF | {_SOS, 0xC4, 0xCC, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)}
_XMP = b"http://ns.adobe.com/xap/1.0/\0"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # Pillow's own pattern
_EXIF_INT = {1: "B", 3: "H", 4: "I"}  # TIFF types whose single value Pillow reads as an int


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int  # 0 when the height comes later, in a DNL marker
    components: int
    process: int  # SOF's low nibble: 0 baseline, 1 extended, 2 progressive, 3 lossless, 9+ arith.
    precision: int  # bits per sample
    component_ids: bytes
    jfif: bool  # an APP0 JFIF marker, which implies YCbCr
    adobe_transform: int | None  # APP14: 0 none (RGB, CMYK), 1 YCbCr, 2 YCCK; None without one
    orientation: int  # EXIF's 1..8 (else XMP's); 1 when absent or unreadable


def gpu_decodable(data: bytes, max_pixels: int) -> bool:
    """Whether nvJPEG can take ``data``; False sends it to the CPU path."""
    return nvjpeg_takes(read_jpeg_header(data), max_pixels)


def nvjpeg_takes(h: JpegHeader | None, max_pixels: int) -> bool:
    """``gpu_decodable`` for a header already read."""
    return (h is not None and h.process in (0, 1) and h.precision == 8
            and h.width > 0 and h.height > 0 and h.width * h.height <= max_pixels
            and (h.components == 1 or (h.components == 3 and _ycbcr(h))))


def _ycbcr(h: JpegHeader) -> bool:
    # libjpeg's rule: JFIF means YCbCr, else APP14's transform, else ids 'R','G','B' mean RGB.
    # Transform 0 goes to the CPU even beside JFIF: decoders disagree on that file.
    if h.adobe_transform == 0:
        return False
    return h.jfif or h.adobe_transform is not None or h.component_ids != b"RGB"


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """The header up to the first SOS; None if ``data`` is not a JPEG or the header is broken."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, sof, jfif, adobe, exif, xmp = 2, None, False, None, None, None  # exif, xmp: (start, end)
    for _ in range(_MAX_MARKERS):
        if pos >= n or data[pos] != 0xFF:
            return None  # garbage where a marker must start
        while pos < n and data[pos] == 0xFF:  # fill bytes may pad a marker
            pos += 1
        if pos + 3 > n:
            return None
        marker = data[pos]
        if marker in _NO_LENGTH:
            pos += 1
            continue
        length = (data[pos + 1] << 8) | data[pos + 2]
        body, end = pos + 3, pos + 1 + length
        if marker not in _HEADER or length < 2 or end > n:
            return None
        if marker == _SOS:
            count = data[body] if length > 2 else 0
            if sof is None or not 1 <= count <= 4 or length != 6 + 2 * count:
                return None
            return JpegHeader(*sof, jfif, adobe, _orientation(data, exif, xmp))
        if marker in _SOF:
            if sof is not None or length < 8:
                return None
            precision, height, width, comps = struct.unpack_from(">BHHB", data, body)
            if comps == 0 or length != 8 + 3 * comps:
                return None
            sof = (width, height, comps, marker & 0x0F, precision, bytes(data[body + 6:end:3]))
        elif marker == _APP0:
            jfif = jfif or data[body:body + 5] == b"JFIF\0"
        elif marker == _APP1 and data[body:body + 6] == b"Exif\0\0":
            exif = exif or (body + 6, end)  # Pillow reads IFD0 from the first Exif segment...
        elif marker == _APP1 and data[body:body + len(_XMP)] == _XMP:
            xmp = (body + len(_XMP), end)  # ...and XMP from the last one
        elif marker == _APP14 and length >= 14 and data[body:body + 5] == b"Adobe":
            adobe = data[body + 11]
        pos = end
    return None


def _orientation(data: bytes, exif: tuple[int, int] | None, xmp: tuple[int, int] | None) -> int:
    # As Pillow's getexif(): XMP counts only when EXIF has no orientation tag.
    value = _exif_orientation(data, *exif) if exif else None
    if value is None and xmp:
        match = _XMP_ORIENTATION.search(data, *xmp)
        value = int(match[2]) if match else None
    return value if value is not None and 1 <= value <= 8 else 1


def _exif_orientation(data: bytes, tiff: int, end: int) -> int | None:
    """IFD0's orientation in the TIFF block ``data[tiff:end]``: None if absent or unreadable,
    0 if present but not a single integer (Pillow then does not rotate, nor look at XMP)."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[tiff:tiff + 2]))
    if order is None or tiff + 8 > end:
        return None
    (ifd,) = struct.unpack_from(order + "I", data, tiff + 4)
    pos = tiff + ifd
    if pos + 2 > end:
        return None
    (count,) = struct.unpack_from(order + "H", data, pos)
    for entry in range(pos + 2, min(pos + 2 + 12 * count, end - 11), 12):
        tag, kind, values = struct.unpack_from(order + "HHI", data, entry)
        if tag == 0x0112:
            fmt = _EXIF_INT.get(kind)
            return struct.unpack_from(order + fmt, data, entry + 8)[0] if fmt and values == 1 else 0
    return None
