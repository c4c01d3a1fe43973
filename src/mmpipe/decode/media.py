"""What an item is — image, video, text or audio — from its bytes first, its name second.

Order: magic bytes (they cannot lie about the container), then the URI's extension (for formats
without a reliable signature, such as MPEG-TS), then "text" for bytes that decode as UTF-8.
Animated GIF and WebP count as video: a meme's frames are moderated like a clip's.
"""

from __future__ import annotations

import io
import posixpath

from PIL import Image

from ..sources.files import IMAGE_SUFFIXES, VIDEO_SUFFIXES

AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".aac", ".m4a", ".ogg", ".opus", ".wma")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".csv", ".json")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00")
_AUDIO_MAGIC = (b"ID3", b"fLaC", b"\xff\xf1", b"\xff\xf9", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")


def sniff_media_type(data: bytes, uri: str | None = None) -> str | None:
    head = data[:64]
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "video" if _animated(data) else "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "video" if b"ANIM" in data[12:64] else "image"
    if head.startswith(_IMAGE_MAGIC):
        return "image"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "audio" if brand in (b"M4A ", b"M4B ", b"dash") and b"vide" not in data[:4096] else "video"
    if head.startswith(b"\x1a\x45\xdf\xa3") or head.startswith(b"FLV"):
        return "video"
    if head[:4] == b"RIFF":
        return "video" if head[8:12] == b"AVI " else "audio" if head[8:12] == b"WAVE" else None
    if head.startswith(b"OggS"):
        return "video" if b"theora" in data[:512] else "audio"
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")) or (len(data) > 188 and data[0] == 0x47 and data[188] == 0x47):
        return "video"
    if head.startswith(_AUDIO_MAGIC):
        return "audio"
    ext = posixpath.splitext((uri or "").split("?")[0].split("#")[0])[1].lower()
    if ext in VIDEO_SUFFIXES:
        return "video"
    if ext in AUDIO_SUFFIXES:
        return "audio"
    if ext in IMAGE_SUFFIXES:
        return "image"  # a broken image: the image decoder will say what is wrong with it
    if ext in TEXT_SUFFIXES or _looks_like_text(data):
        return "text"
    return None


def _animated(data: bytes) -> bool:
    try:
        return getattr(Image.open(io.BytesIO(data)), "n_frames", 1) > 1
    except (OSError, ValueError, EOFError):
        return False


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:  # only a character cut at the sample's end is fine
            return False
    return True
