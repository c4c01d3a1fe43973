"""Video bytes → frames sampled by time, with their timestamps (PyAV).

Frames are decoded forward and the first frame at or after each target time is kept. When the
next target is far ahead (more than ``SEEK_AHEAD_S``), the demuxer seeks to the keyframe before
it instead: for the short clips moderation mostly sees, decoding straight through is cheaper than
seeking (every seek restarts at a keyframe), while for long videos seeking skips most of the file.
The frame count is capped, so a bogus or enormous video cannot run away with time or memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from .image import DEFAULT_MAX_PIXELS, DecodeError

SEEK_AHEAD_S = 5.0


@dataclass
class VideoFrames:
    frames: list[np.ndarray]  # RGB uint8 (H, W, 3), long side <= max_side
    timestamps: list[float]  # seconds from the start
    duration: float | None
    capped: bool  # the video went on after max_frames


def sample_frames(data: bytes, fps: float = 1.0, max_frames: int = 64, max_side: int = 640,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoFrames:
    if not data:
        raise DecodeError("empty file")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _animated_image(data, fps, max_frames, max_side, max_pixels)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise DecodeError(f"corrupt or unsupported video: {exc}") from None
    with container:
        if not container.streams.video:
            raise DecodeError("no video stream (audio-only or not a video)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        if ctx.width and ctx.height and ctx.width * ctx.height > max_pixels:
            raise DecodeError(f"video too large: {ctx.width}x{ctx.height} pixels exceeds the "
                              f"{max_pixels}-pixel limit")
        duration = _duration(container, stream)
        try:
            out = _sample(container, stream, 1.0 / fps, max_frames, max_side)
        except av.FFmpegError as exc:
            raise DecodeError(f"corrupt video: {exc}") from None
    if not out.frames:
        raise DecodeError("no decodable video frames")
    out.duration = duration
    return out


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _sample(container, stream, step: float, max_frames: int, max_side: int) -> VideoFrames:
    frames, times = [], []
    target, start = 0.0, None
    capped = False
    while True:
        restart = False
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            if start is None:
                start = frame.time
            t = frame.time - start
            if t + 1e-6 < target:
                continue
            if len(frames) == max_frames:
                capped = True
                break
            frames.append(_fit(frame.to_image(), max_side))
            times.append(round(t, 3))
            target += step
            while target <= t:  # frames sparser than the sampling rate
                target += step
            if target - t > SEEK_AHEAD_S and stream.time_base is not None:
                container.seek(int((target + start) / stream.time_base), stream=stream, backward=True)
                restart = True
                break
        if not restart or capped:
            break
    return VideoFrames(frames, times, None, capped)


def _animated_image(data: bytes, fps: float, max_frames: int, max_side: int,
                    max_pixels: int) -> VideoFrames:
    """Animated WebP (which PyAV's FFmpeg cannot decode): frames and their durations from PIL."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise DecodeError(f"image too large: {img.width}x{img.height} pixels")
        frames, times, t, target, capped = [], [], 0.0, 0.0, False
        for index in range(getattr(img, "n_frames", 1)):
            img.seek(index)
            img.load()  # a WebP frame's duration is only known once it is loaded
            frame = img
            if t + 1e-6 >= target:
                if len(frames) == max_frames:
                    capped = True
                    break
                frames.append(_fit(frame.convert("RGB"), max_side))
                times.append(round(t, 3))
                target += 1.0 / fps
                while target <= t:
                    target += 1.0 / fps
            t += (frame.info.get("duration") or 100) / 1000.0
    except (OSError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt animation: {exc}") from None
    if not frames:
        raise DecodeError("no decodable frames")
    return VideoFrames(frames, times, t, capped)


def _fit(img: Image.Image, max_side: int) -> np.ndarray:
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.BILINEAR)
    return np.asarray(img.convert("RGB"))
