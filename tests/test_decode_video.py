"""Video frame sampling, media sniffing and text decoding, on files the tests encode themselves."""

from __future__ import annotations

import io
import math
import struct
import time
import wave

import av
import numpy as np
import pytest
from PIL import Image, ImageCms

from mmpipe.decode import DecodeError, decode_text, sniff_media_type
from mmpipe.decode.video import sample_frames

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
           (255, 255, 255), (40, 40, 40)]


def encode(seconds: int = 8, fps: int = 10, gop: int = 12, fmt: str = "mp4", codec: str = "libx264",
           path=None, options: dict | None = None) -> bytes:
    """A 160x120 video whose second s is a solid COLOURS[s % 8]: a frame tells where it came from.
    ``path``: write there (MP4's faststart rewrites the file, which a BytesIO cannot do)."""
    target = path or io.BytesIO()
    with av.open(target, "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = 160, 120, "yuv420p", gop
        for i in range(seconds * fps):
            frame = np.full((120, 160, 3), COLOURS[(i // fps) % 8], np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes() if path else target.getvalue()


def seconds_of(frames: list[np.ndarray]) -> list[int]:
    """Which COLOURS index each frame shows."""
    return [int(np.argmin([np.abs(f.reshape(-1, 3).mean(axis=0) - c).sum() for c in COLOURS]))
            for f in frames]


@pytest.fixture(scope="module")
def video() -> bytes:
    return encode()


# --- sampling -------------------------------------------------------------------------------


def test_one_frame_per_second_with_timestamps_and_content(video):
    out = sample_frames(video, fps=1)
    assert out.timestamps == pytest.approx([0, 1, 2, 3, 4, 5, 6, 7], abs=0.1)
    assert seconds_of(out.frames) == list(range(8))
    assert out.duration == pytest.approx(8, abs=0.2) and out.frames_total_estimate == 80
    assert not out.capped
    assert out.frames[0].shape == (120, 160, 3) and out.frames[0].dtype == np.uint8


def test_two_per_second_and_the_cap(video):
    two = sample_frames(video, fps=2)
    assert two.timestamps == pytest.approx([i / 2 for i in range(16)], abs=0.1)
    assert seconds_of(two.frames) == [i // 2 for i in range(16)]
    capped = sample_frames(video, fps=1, max_frames=3)
    assert capped.capped and capped.timestamps == pytest.approx([0, 1, 2], abs=0.1)
    assert not sample_frames(video, fps=1, max_frames=8).capped  # exactly all of it


def test_frames_are_scaled_to_max_side(video):
    assert sample_frames(video, max_side=80).frames[0].shape == (60, 80, 3)


def test_sparse_keyframes_decoded_through_and_sought():
    sparse = encode(gop=50)  # a keyframe every 5 s
    out = sample_frames(sparse, fps=1)
    assert out.timestamps == pytest.approx(list(range(8)), abs=0.1)
    assert seconds_of(out.frames) == list(range(8))
    long = encode(seconds=40, fps=5, gop=50)  # keyframes every 10 s; targets 10 s apart: seeks
    out = sample_frames(long, fps=0.1)
    assert out.timestamps == pytest.approx([0, 10, 20, 30], abs=0.25)
    assert seconds_of(out.frames) == [s % 8 for s in (0, 10, 20, 30)]


@pytest.mark.parametrize("fmt, codec", [("mpegts", "libx264"), ("matroska", "mpeg4"),
                                        ("webm", "libvpx"), ("avi", "mpeg4"), ("flv", "flv"),
                                        ("mov", "mpeg4")])
def test_containers(fmt, codec):
    data = encode(seconds=3, fmt=fmt, codec=codec)
    assert sniff_media_type(data, None) == "video"
    out = sample_frames(data)
    assert out.timestamps == pytest.approx([0, 1, 2], abs=0.1)
    assert seconds_of(out.frames) == [0, 1, 2]


def test_raw_stream_without_timestamps_or_seeking():
    """A raw H.264 stream has no timestamps: frames are counted at FFmpeg's assumed 25 fps, and
    decoded straight through even for targets far apart (there is nothing to seek by)."""
    data = encode(seconds=26, fmt="h264")
    out = sample_frames(data, fps=0.1)
    assert out.timestamps == pytest.approx([0, 10], abs=0.05)
    assert seconds_of(out.frames) == [0, 250 // 10 % 8]


def test_stalled_timestamps_stop_sampling():
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:  # matroska lets timestamps repeat
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = 32, 32, "yuv420p", 1
        frames = (np.full((32, 32, 3), i % 255, np.uint8) for i in range(1500))
        packets = [p for f in frames for p in stream.encode(av.VideoFrame.from_ndarray(f, "rgb24"))]
        for packet in packets + stream.encode():
            packet.pts = packet.dts = 0
            container.mux(packet)
    out = sample_frames(buf.getvalue(), fps=1)
    assert out.timestamps == [0.0] and out.capped


# --- refusals -------------------------------------------------------------------------------


def test_pixel_cap_refuses_large_frames(video):
    with pytest.raises(DecodeError, match="too large"):
        sample_frames(video, max_pixels=100 * 100)
    gif = bytearray(gif_bytes("GIF", frames=1))
    gif[6:10] = struct.pack("<HH", 16_000, 16_000)  # the canvas in the header: 256 M pixels
    start = time.monotonic()
    with pytest.raises(DecodeError, match="too large"):
        sample_frames(bytes(gif))
    assert time.monotonic() - start < 1


def wav_bytes() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.array([8000 * math.sin(i / 10) for i in range(8000)], "<i2").tobytes())
    return buf.getvalue()


def audio_bytes(fmt: str, codec: str, cover: bool = False) -> bytes:
    """A second of silence; with ``cover``, album art as an attached picture (a video stream)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        audio = container.add_stream(codec, rate=16000)
        if cover:
            art = container.add_stream("mjpeg")
            art.width, art.height, art.pix_fmt = 16, 16, "yuvj420p"
            art.disposition = av.stream.Disposition.attached_pic
            picture = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            for packet in art.encode(picture) + art.encode():
                container.mux(packet)
        size = audio.codec_context.frame_size or 1024
        for i in range(16000 // size):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, size), np.float32), "fltp", "mono")
            frame.sample_rate, frame.pts = 16000, i * size
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("make", [wav_bytes, lambda: audio_bytes("mp3", "mp3", cover=True),
                                  lambda: audio_bytes("mp4", "aac"),
                                  lambda: audio_bytes("flac", "flac")],
                         ids=["wav", "mp3-with-cover-art", "aac-in-mp4", "flac"])
def test_audio_only_is_named_and_refused(make):
    data = make()
    assert sniff_media_type(data, None) == "audio"
    with pytest.raises(DecodeError, match="no video stream"):
        sample_frames(data)


def cut(data: bytes, share: float) -> bytes:
    return data[: int(len(data) * share)]


def test_truncated_videos_are_errors_never_hangs(video, tmp_path):
    faststart = encode(path=tmp_path / "fast.mp4", options={"movflags": "faststart"})
    broken = {
        "index at the end, cut away": (cut(video, 0.3), "corrupt"),
        "index first, data cut": (cut(faststart, 0.7), "truncated video: frames end at 3"),
        "matroska": (cut(encode(fmt="matroska", codec="mpeg4"), 0.5), "truncated"),
        "gif": (cut(gif_bytes("GIF"), 0.6), "corrupt animation"),
        "webp": (cut(gif_bytes("WEBP"), 0.6), "corrupt animation"),
        "random bytes": (np.random.default_rng(0).bytes(5000), "corrupt or unrecognised"),
        "empty": (b"", "empty"),
    }
    for name, (data, reason) in broken.items():
        start = time.monotonic()
        with pytest.raises(DecodeError, match=reason):
            sample_frames(data)
        assert time.monotonic() - start < 5, name


def test_truncated_stream_that_cannot_tell_gives_what_it_has():
    """MPEG-TS has no index nor declared length: a cut one is a shorter video."""
    out = sample_frames(cut(encode(fmt="mpegts"), 0.5))
    assert out.timestamps == pytest.approx([0, 1, 2, 3], abs=0.1)
    assert out.duration == pytest.approx(4, abs=0.3)


def test_unsupported_codec_is_named():
    data = encode(seconds=1, fmt="matroska", codec="mpeg4")
    assert data.count(b"V_MPEG4/ISO/ASP") == 1
    with pytest.raises(DecodeError, match="unsupported video codec"):
        sample_frames(data.replace(b"V_MPEG4/ISO/ASP", b"V_NOSUCH/CODEC!"))


# --- animations -----------------------------------------------------------------------------


def gif_bytes(fmt: str, frames: int = 5) -> bytes:
    images = [Image.new("RGB", (64, 48), c) for c in COLOURS[:frames]]
    buf = io.BytesIO()
    images[0].save(buf, fmt, save_all=frames > 1, append_images=images[1:], duration=200, loop=0)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_are_short_videos(fmt):
    data = gif_bytes(fmt)
    assert sniff_media_type(data, None) == "video"
    out = sample_frames(data, fps=5)
    assert out.timestamps == pytest.approx([0, 0.2, 0.4, 0.6, 0.8], abs=0.01)
    assert seconds_of(out.frames) == [0, 1, 2, 3, 4]
    assert out.duration == pytest.approx(1.0) and out.frames_total_estimate == 5
    assert sample_frames(data, fps=2).timestamps == pytest.approx([0, 0.6], abs=0.01)
    capped = sample_frames(data, fps=5, max_frames=2)
    assert capped.capped and capped.timestamps == pytest.approx([0, 0.2])
    assert sniff_media_type(gif_bytes(fmt, frames=1), None) == "image"
    assert len(sample_frames(gif_bytes(fmt, frames=1)).frames) == 1


# --- sniffing -------------------------------------------------------------------------------


def still(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, fmt)
    return buf.getvalue()


def webp_with_icc(frames: int) -> bytes:
    """An ICC profile comes before the ANIM chunk: only the header's flags tell it is animated."""
    images = [Image.new("RGB", (8, 8), c) for c in COLOURS[:frames]]
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    images[0].save(buf, "WEBP", save_all=frames > 1, append_images=images[1:], icc_profile=icc)
    return buf.getvalue()


@pytest.mark.parametrize("data, uri, kind", [
    (webp_with_icc(2), None, "video"), (webp_with_icc(1), None, "image"),
    (still("JPEG"), None, "image"), (still("PNG"), "x.mp4", "image"), (still("GIF"), None, "image"),
    (still("WEBP"), None, "image"), (still("BMP"), None, "image"), (still("TIFF"), None, "image"),
    (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40, None, "image"),
    (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40, None, "video"),
    (b"\x00\x00\x00\x14ftypqt  " + b"\x00" * 40, None, "video"),
    (b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 40, None, "audio"),
    (b"\x1a\x45\xdf\xa3" + b"\x00" * 40, None, "video"),
    (b"RIFF\x00\x00\x00\x00AVI LIST", None, "video"),
    (b"\x00\x00\x01\xba" + b"\x00" * 40, None, "video"),
    (b"OggS\x00\x02" + b"\x00" * 22 + b"\x80theora", None, "video"),
    (b"OggS\x00\x02" + b"\x00" * 22 + b"\x01vorbis", None, "audio"),
    (b"FLV\x01\x04" + b"\x00" * 8, None, "audio"),
    (b"ID3\x03\x00" + b"\x00" * 40, None, "audio"),
    (b"fLaC" + b"\x00" * 40, None, "audio"),
    ("héllo wörld\n".encode(), None, "text"),
    ("Le garçon a mangé une pomme dans le jardin.\n".encode("latin-1"), None, "text"),  # Latin-1
    (b"\x00\x01\x02garbage", "thing.MP4?sig=1", "video"),
    (b"\x00\x01\x02garbage", "thing.png", "image"),
    (b"\x00\x01\x02garbage", "thing.m4a", "audio"),
    (b"\x00\x01\x02garbage", "notes.txt", "text"),
    (b"\x00\x01\x02garbage", None, None),
    (bytes(range(1, 32)) * 20, None, None),  # control characters, no NUL: not text
    (b"", "clip.webm", "video"),
    (b"", None, None),
])
def test_sniffing(data, uri, kind):
    assert sniff_media_type(data, uri) == kind


# --- text -----------------------------------------------------------------------------------


def test_decode_text_flags_what_it_changes():
    clean = decode_text("\ufeffhello\r\nwörld\n".encode())
    assert (clean.text, clean.truncated, clean.invalid_utf8) == ("hello\nwörld", False, False)
    bad = decode_text(b"caf\xe9 \x00ok\x00")
    assert bad.invalid_utf8 and not bad.truncated and bad.text == "caf\ufffd ok"
    one_line = decode_text(b"a" * 1_000_000 + b"\nshort line", max_line_chars=10_000)
    assert one_line.truncated and one_line.text == "a" * 10_000 + "\nshort line"
    many = decode_text(b"line\n" * 50_000, max_chars=1000)
    assert many.truncated and len(many.text) == 1000
