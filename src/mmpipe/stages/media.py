"""Moderation's decode stage: bytes → what the item is and the frames the models will look at.

Images are one frame at t=0, videos (and animated GIF/WebP) frames sampled by time, text files
their text. Frames are cut to ``max_side`` here, once, so the model stages never see a 4000-px
photo and queues hold a bounded amount of pixels per item.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
from PIL import Image

from ..decode import DecodeError, decode_image, decode_text, sniff_media_type
from ..decode.image import DEFAULT_MAX_PIXELS
from ..moderation_records import Moderation
from ..records import Decoded, Item


@dataclass(frozen=True)
class MediaOptions:
    fps: float = 1.0
    max_frames: int = 64
    max_side: int = 640
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_text_chars: int = 100_000
    # Per-frame preprocessing for the model stages, done here in the decode pool so that the
    # model workers only run models: name -> frame (H, W, 3) uint8 -> model input array.
    model_inputs: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)


def decode_media(item: Item, opts: MediaOptions) -> Decoded:
    decoded = Decoded(id=item.id, uri=item.uri, text=item.text)
    if item.data is None:
        if item.text is None:
            raise ValueError("item has neither bytes nor text")
        return replace(decoded, moderation=Moderation("text", text_truncated=item.text_truncated))
    if not item.data:
        raise ValueError("empty file")
    kind = sniff_media_type(item.data, item.uri)
    moderation = Moderation(kind, text_truncated=item.text_truncated)
    try:
        if kind == "image":
            img, (decoded.width, decoded.height) = decode_image(item.data, opts.max_pixels,
                                                                min_side=opts.max_side)
            moderation = moderation.with_changes(frames=(_fit(img, opts.max_side),), timestamps=(0.0,))
        elif kind == "video":
            from ..decode.video import sample_frames  # PyAV, of the moderate extra

            video = sample_frames(item.data, fps=opts.fps, max_frames=opts.max_frames,
                                  max_side=opts.max_side, max_pixels=opts.max_pixels)
            moderation = moderation.with_changes(frames=tuple(video.frames),
                                                 timestamps=tuple(video.timestamps),
                                                 duration_s=video.duration, frames_capped=video.capped)
            decoded.height, decoded.width = video.frames[0].shape[:2]
        elif kind == "text":
            text = decode_text(item.data, max_chars=opts.max_text_chars)
            decoded.text = text.text if decoded.text is None else f"{decoded.text}\n{text.text}"
            moderation = moderation.with_changes(text_truncated=item.text_truncated or text.truncated)
        elif kind == "audio":
            raise DecodeError("audio-only file: no video stream to moderate")
        else:
            raise DecodeError("unsupported or unrecognised format")
    except DecodeError as exc:
        raise ValueError(str(exc)) from None
    if moderation.frames:
        moderation = moderation.with_changes(inputs={
            name: np.stack([prepare(f) for f in moderation.frames])
            for name, prepare in opts.model_inputs.items()})
    return replace(decoded, moderation=moderation)


def _fit(img: Image.Image, max_side: int) -> np.ndarray:
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.BILINEAR)
    return np.asarray(img)


def jpeg(frame: np.ndarray, max_side: int | None = None, quality: int = 85) -> bytes:
    """A JPEG of a frame; with ``max_side``, a thumbnail small enough to sit in every row."""
    img = Image.fromarray(frame)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
