"""Video bytes → frames sampled by time, with their timestamps (PyAV; GIF and WebP through PIL).

One frame is kept per target time (0, 1/fps, 2/fps, …): the first decoded frame at or after it.
Frames are decoded forward; when the next target is more than ``SEEK_AHEAD_S`` ahead, the demuxer
seeks to the keyframe before it instead. Every seek restarts decoding at a keyframe, so for the
short clips moderation mostly sees, and for sampling rates of a frame every few seconds, decoding
straight through costs less than seeking; for long videos sampled sparsely, seeking skips most of
the file. Streams without timestamps (raw elementary streams) are decoded straight through.

Bounds, so that no input can run away with time or memory: at most ``max_frames`` frames are kept
(``capped`` says the video had more), frames are scaled to ``max_side`` as they are converted,
FFmpeg itself refuses frames over ``max_pixels`` (also those whose size only shows once decoding
starts), and at most ``GAP_FRAMES`` (plus a target interval's worth) frames are decoded between
two kept ones, which ends videos whose timestamps stall (``capped`` too).

A video that cannot be read to its end raises ``DecodeError``, like a truncated image: moderating
only the readable start would pass content nobody looked at. Truncation shows as a decoding error
or as frames ending well before the duration the container declares; formats whose duration is
measured from the data itself (MPEG-TS, AVI) cannot tell, and give the frames that could be read.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from .image import DEFAULT_MAX_PIXELS, DecodeError, to_rgb

SEEK_AHEAD_S = 5.0
GAP_FRAMES = 1_000  # covers the longest keyframe interval a seek may have to decode through
_MAX_RATE = 240.0  # frame rates above this are taken as bogus when sizing the gap budget
_EPS = 1e-6  # time bases round: a frame within a microsecond of a target is on it


@dataclass
class VideoFrames:
    frames: list[np.ndarray]  # RGB uint8 (H, W, 3), long side <= max_side
    timestamps: list[float]  # seconds from the first frame
    duration: float | None
    frames_total_estimate: int | None
    capped: bool  # the video went on after the last kept frame, unlooked at


def sample_frames(data: bytes, fps: float = 1.0, max_frames: int = 64, max_side: int = 640,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoFrames:
    if fps <= 0 or max_frames < 1:
        raise ValueError("fps must be > 0 and max_frames >= 1")
    if not data:
        raise DecodeError("empty file")
    if data.startswith((b"GIF87a", b"GIF89a")) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        # PIL reads the canvas size from the header before decoding (FFmpeg's GIF decoder learns
        # it only while allocating it), composites frames as browsers do, and decodes animated
        # WebP, which FFmpeg cannot.
        return _animation(data, 1.0 / fps, max_frames, max_side, max_pixels)
    return _video(data, 1.0 / fps, max_frames, max_side, max_pixels)


class _Schedule:
    """Which decoded frames to keep: the first at or after each target time, up to a cap."""

    def __init__(self, step: float, max_frames: int, rate: float):
        self.step, self.max_frames = step, max_frames
        self.target, self.kept, self.since_kept = 0.0, 0, 0
        self.gap_budget = GAP_FRAMES + math.ceil(step * min(rate, _MAX_RATE))
        self.stopped = False  # set with capped: the video has frames beyond the last kept one

    def keep(self, t: float) -> bool:
        if t + _EPS < self.target:
            self.since_kept += 1
            self.stopped = self.since_kept > self.gap_budget
            return False
        if self.kept == self.max_frames:
            self.stopped = True
            return False
        self.kept, self.since_kept = self.kept + 1, 0
        # The next target after t, computed rather than stepped to: a bogus huge timestamp must
        # not turn into billions of steps.
        self.target = (math.floor((t + _EPS) / self.step) + 1) * self.step
        return True


def _video(data: bytes, step: float, max_frames: int, max_side: int,
           max_pixels: int) -> VideoFrames:
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise DecodeError(f"corrupt or unrecognised video: {exc}") from None
    with container:
        # An attached picture is an audio file's cover art, not a video.
        stream = next((s for s in container.streams.video
                       if not s.disposition & av.stream.Disposition.attached_pic), None)
        if stream is None:
            raise DecodeError("no video stream (audio-only or not a video)")
        ctx = stream.codec_context
        if ctx is None:
            raise DecodeError("unsupported video codec: this FFmpeg build has no decoder for it")
        if ctx.width * ctx.height > max_pixels:
            raise DecodeError(f"video too large: {ctx.width}x{ctx.height} pixels exceeds the "
                              f"{max_pixels}-pixel limit")
        ctx.options = {"max_pixels": str(max_pixels)}
        stream.thread_type = "AUTO"
        duration = _duration(container, stream)
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        schedule = _Schedule(step, max_frames, rate)
        try:
            frames, times, end = _decode(container, stream, schedule, max_side, 1.0 / rate)
        except av.ArgumentError as exc:
            raise DecodeError(f"cannot decode the video (unsupported parameters, or frames over "
                              f"the {max_pixels}-pixel limit): {exc}") from None
        except av.FFmpegError as exc:
            raise DecodeError(f"corrupt video: {exc}") from None
    if not frames:
        raise DecodeError("no decodable video frames")
    # The last frame may be shown for a while (a slideshow): allow two frame intervals too.
    if not schedule.stopped and duration and end < duration - max(1.0, 0.1 * duration, 2 / rate):
        raise DecodeError(f"truncated video: frames end at {end:.1f} s of {duration:.1f} s")
    estimate = stream.frames or (round(duration * rate) if duration else None)
    return VideoFrames(frames, times, duration, estimate, schedule.stopped)


def _duration(container, stream) -> float | None:
    # The stream's own duration first: the container's also covers a longer audio track.
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _decode(container, stream, schedule: _Schedule, max_side: int,
            frame_step: float) -> tuple[list[np.ndarray], list[float], float]:
    """The kept frames, their times, and the time of the last frame decoded (to spot truncation)."""
    frames, times = [], []
    start = last = None
    seekable = stream.time_base is not None
    while not schedule.stopped:
        jumped = False
        for frame in container.decode(stream):
            if frame.time is None:
                # A raw elementary stream: no timestamps to seek by, so count frames at its rate.
                seekable = False
                t = 0.0 if last is None else last + frame_step
            else:
                t = frame.time
            start = t if start is None else start
            last = t if last is None else max(last, t)
            if not schedule.keep(t - start):
                if schedule.stopped:
                    break
                continue
            frames.append(_to_array(frame, max_side))
            times.append(round(t - start, 3))
            if seekable and schedule.target - (t - start) > SEEK_AHEAD_S:
                offset = int((schedule.target + start) / float(stream.time_base))
                try:
                    container.seek(offset, stream=stream, backward=True)
                except av.FFmpegError as exc:
                    # Where a failed seek left the demuxer is unknown: going on could skip frames.
                    raise DecodeError(f"cannot seek in the video: {exc}") from None
                jumped = True
                break
        if not jumped:
            break
    return frames, times, (last - start) if frames else 0.0


def _to_array(frame: av.VideoFrame, max_side: int) -> np.ndarray:
    width, height = _fit_size(frame.width, frame.height, max_side)
    return frame.to_ndarray(format="rgb24", width=width, height=height)


def _animation(data: bytes, step: float, max_frames: int, max_side: int,
               max_pixels: int) -> VideoFrames:
    schedule = _Schedule(step, max_frames, _MAX_RATE)
    frames, times, t = [], [], 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise DecodeError(f"image too large: {img.width}x{img.height} pixels exceeds the "
                                  f"{max_pixels}-pixel limit")
            total = getattr(img, "n_frames", 1)
            for index in range(total):
                img.seek(index)
                img.load()  # a WebP frame's duration is known only once it is loaded
                if schedule.keep(t):
                    frames.append(_fit(to_rgb(img), max_side))  # alpha on white, as for images
                    times.append(round(t, 3))
                elif schedule.stopped:
                    break
                t += _frame_seconds(img.info.get("duration"))
    except DecodeError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise DecodeError(f"corrupt animation: {exc}") from None
    if not frames:
        raise DecodeError("no decodable frames")
    # Stopped early, the rest of the frames' durations were never read.
    return VideoFrames(frames, times, None if schedule.stopped else t, total, schedule.stopped)


def _frame_seconds(duration_ms) -> float:
    # Browsers show frames with no delay or one of 10 ms or less for 100 ms, and so do we.
    return duration_ms / 1000.0 if duration_ms and duration_ms > 10 else 0.1


def _fit(img: Image.Image, max_side: int) -> np.ndarray:
    size = _fit_size(img.width, img.height, max_side)
    return np.asarray(img if size == img.size else img.resize(size, Image.BILINEAR))


def _fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))
