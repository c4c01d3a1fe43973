"""Image bytes → an RGB PIL image, correctly for the awkward cases.

Handles CMYK, palette, 16-bit, alpha (composited on white, so hidden colour under transparent
pixels does not leak in), EXIF rotation, animations (first frame) and HEIC/HEIF (iPhone photos,
through libheif). The pixel cap is checked from the header, before any pixel is decoded, which is
what stops decompression bombs.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pi_heif import register_heif_opener

DEFAULT_MAX_PIXELS = 64_000_000
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_ORIENTATION = 0x0112
TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations that swap width and height

# Our own cap is checked first; PIL's bomb check is turned off so that it cannot disagree.
Image.MAX_IMAGE_PIXELS = None
# HEIC/HEIF for Image.open: pi-heif, pillow-heif's decode-only twin (libheif and libde265, both
# LGPL; pillow-heif's wheel adds the GPL x265 encoder). libheif applies the file's irot/imir
# rotation while decoding and the plugin resets EXIF orientation to 1, so the header size is the
# displayed size and exif_transpose below does not rotate twice. No thumbnails: draft() must
# never swap in an embedded one, a separate picture that need not match the image it stands for.
register_heif_opener(thumbnails=False)


class DecodeError(ValueError):
    pass


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``data`` to an RGB image; returns it with the original (width, height).

    ``min_side``: for JPEGs, let the decoder downscale by a power of two while both sides stay at
    least this long (DCT scaling); it makes decoding large photos several times cheaper.
    """
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            size = img.size
            if size[0] * size[1] > max_pixels:
                raise DecodeError(f"image too large: {size[0]}x{size[1]} pixels exceeds the "
                                  f"{max_pixels}-pixel limit")
            if min_side and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
                img.draft(img.mode, _draft_target(size, min_side))
            img.load()
            if img.getexif().get(_ORIENTATION, 1) in TRANSPOSING:
                size = (size[1], size[0])  # report the size as displayed, after EXIF rotation
            img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("unsupported or unrecognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:
        # RuntimeError: libheif refusing a bitstream larger than the header said (its security
        # limits); strip(): libheif's messages end in a newline
        raise DecodeError(f"corrupt image: {str(exc).strip()}") from None
    return rgb, size


def short_side_to(size: tuple[int, int], short: int) -> tuple[int, int]:
    """(width, height) of an image of ``size`` resized so that its short side is ``short``, the
    long side rounded down (CLIP's geometry, wherever the resize runs)."""
    w, h = size
    new_long = int(short * max(w, h) / min(w, h))
    return (short, new_long) if w <= h else (new_long, short)


def _draft_target(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    # draft() keeps both sides >= the requested box; asking for a box with the image's aspect
    # keeps the short side >= min_side.
    w, h = size
    scale = min_side / min(w, h)
    return (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999)))


def to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Scale the sensor range down to 8 bits; a plain convert() would clip it to white.
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "I":
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        else:
            top = max(float(arr.max(initial=0)), 1.0)
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        key = img.info.get("transparency")
        if isinstance(key, int):  # a colour-keyed transparent grey (PNG tRNS): white, as alpha is
            arr8[arr == key] = 255
        return Image.fromarray(arr8, "L").convert("RGB")
    # Palette, grey and RGB images can carry a transparent colour (PNG tRNS, GIF) instead of an
    # alpha band; it is composited like alpha, or the hidden key colour would leak in.
    if mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")
