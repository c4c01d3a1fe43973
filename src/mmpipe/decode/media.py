"""What an item is — "image", "video", "text" or "audio" — from its bytes first, its name second.

Order:
1. magic bytes: they cannot lie about the container, whatever the file is called. Animated GIF
   and WebP count as video (a meme's frames are moderated like a clip's); MP4/MOV files whose
   tracks are all sound, WAV, MP3, FLAC, AAC and Ogg without Theora are audio, so that the caller
   can say "audio-only" rather than fail to find a picture. Matroska/WebM can hold either and
   count as video; the video decoder names an audio-only one.
2. the URI's extension, for formats without a reliable signature (raw streams, a broken file
   whose name is all that is left: its decoder then says what is wrong with it).
3. "text" when the bytes decode as mostly printable UTF-8.
Nothing matched (or empty bytes with no telling name): ``None``.
"""

from __future__ import annotations

import io
import posixpath
import struct

from PIL import Image

from ..sources.files import IMAGE_SUFFIXES, VIDEO_SUFFIXES

AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".aac", ".m4a", ".ogg", ".oga", ".opus", ".wma")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".csv", ".json")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*",
                b"\x00\x00\x01\x00")  # JPEG, PNG, BMP, TIFF (both byte orders), ICO
_AUDIO_MAGIC = (b"ID3", b"fLaC", b"\xff\xf1", b"\xff\xf9", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"mif2", b"avif")  # still images
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"M4P ", b"F4A ")
_TEXT_SAMPLE = 4096
_OGG_HEADERS = 4096  # every stream's first page, which names its codec, comes before any data
_TOP_BOXES = 64  # real files put a handful of boxes before the moov; crafted ones could be all boxes
_PRINTABLE_SHARE = 0.9  # leaves room for a Latin-1 file's accents (each one a U+FFFD)


def sniff_media_type(data: bytes, uri: str | None = None) -> str | None:
    kind = _from_magic(data)
    if kind is None:
        ext = posixpath.splitext((uri or "").split("?")[0].split("#")[0])[1].lower()
        kind = ("video" if ext in VIDEO_SUFFIXES else "audio" if ext in AUDIO_SUFFIXES
                else "image" if ext in IMAGE_SUFFIXES else "text" if ext in TEXT_SUFFIXES else None)
    if kind is None and _looks_like_text(data):
        kind = "text"
    return kind


def _from_magic(data: bytes) -> str | None:
    head = data[:16]
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "video" if _frame_count(data) > 1 else "image"
    if head[:4] == b"RIFF":
        # An animated WebP says so in its VP8X header's flags (an ICC profile may come first).
        animated_webp = data[12:16] == b"VP8X" and len(data) > 20 and data[20] & 0x02
        return {b"WEBP": "video" if animated_webp else "image",
                b"AVI ": "video", b"WAVE": "audio"}.get(head[8:12])
    if head.startswith(_IMAGE_MAGIC):
        return "image"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "image"
        return "audio" if brand in _AUDIO_BRANDS or _mp4_sound_only(data) else "video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video"
    if head.startswith(b"FLV"):
        # Header flags: 4 = audio, 1 = video. Some muxers write 0, which FFmpeg reads as both.
        return "audio" if len(head) > 4 and head[4] == 4 else "video"
    if head.startswith(b"OggS"):
        return "video" if b"theora" in data[:_OGG_HEADERS] else "audio"
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")) or _mpeg_ts(data):
        return "video"
    if head.startswith(_AUDIO_MAGIC):
        return "audio"
    return None


def _frame_count(data: bytes) -> int:
    try:
        return getattr(Image.open(io.BytesIO(data)), "n_frames", 1)
    except (OSError, ValueError, EOFError, SyntaxError):
        return 1


def _mpeg_ts(data: bytes) -> bool:
    # A sync byte every 188 bytes (192 with the 4-byte timecode of Blu-ray .m2ts).
    return any(len(data) > 2 * size + lead and all(data[lead + i * size] == 0x47 for i in range(3))
               for size, lead in ((188, 0), (192, 4)))


def _mp4_sound_only(data: bytes) -> bool:
    """Whether the movie's handlers are all sound: an AAC or ALAC file in a generic MP4 brand."""
    moov = _top_level_box(data, b"moov")
    # hdlr box: 'hdlr', version and flags (4), pre_defined (4), then the handler type.
    handlers = set()
    at = moov.find(b"hdlr")
    while at >= 0:
        handlers.add(moov[at + 12: at + 16])
        at = moov.find(b"hdlr", at + 4)
    return b"soun" in handlers and b"vide" not in handlers


def _top_level_box(data: bytes, kind: bytes) -> bytes:
    """The payload of the first top-level ISO-BMFF box of ``kind``, hopping over the others
    (so a large mdat before the moov costs nothing); empty when absent."""
    at = 0
    for _ in range(_TOP_BOXES):
        if at + 8 > len(data):
            break
        size, name = struct.unpack(">I4s", data[at: at + 8])
        header = 8
        if size == 1 and at + 16 <= len(data):
            size, header = struct.unpack(">Q", data[at + 8: at + 16])[0], 16
        elif size == 0:
            size = len(data) - at  # the box runs to the end of the file
        if size < header:
            return b""
        if name == kind:
            return data[at + header: at + size]
        at += size
    return b""


def _looks_like_text(data: bytes) -> bool:
    sample = data[:_TEXT_SAMPLE]
    if not sample or b"\x00" in sample:
        return False
    text = sample.decode("utf-8", errors="replace")
    printable = sum(ch.isprintable() or ch in "\t\n\r\f\v" for ch in text if ch != "\ufffd")
    return printable >= _PRINTABLE_SHARE * len(text)
