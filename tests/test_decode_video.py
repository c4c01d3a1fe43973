"""Video frame sampling, media sniffing and text decoding, on files the tests encode themselves."""

from __future__ import annotations

import io
import math
import struct
import wave

import av
import numpy as np
import pytest
from PIL import Image

from mmpipe.decode import DecodeError, decode_text, sample_frames, sniff_media_type

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
           (255, 255, 255), (40, 40, 40)]


def encode(seconds: int = 8, fps: int = 10, gop: int = 12, size=(160, 120)) -> bytes:
    """An MP4 whose second s is a solid COLOURS[s % 8]: a frame tells where it came from."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        for i in range(seconds * fps):
            frame = np.full((size[1], size[0], 3), COLOURS[(i // fps) % 8], np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def second_of(frame: np.ndarray) -> int:
    colour = frame.reshape(-1, 3).mean(axis=0)
    return int(np.argmin([np.abs(colour - c).sum() for c in COLOURS]))


@pytest.fixture(scope="module")
def video() -> bytes:
    return encode()


def test_one_frame_per_second_with_timestamps_and_content(video):
    out = sample_frames(video, fps=1)
    assert out.timestamps == pytest.approx([0, 1, 2, 3, 4, 5, 6, 7], abs=0.1)
    assert [second_of(f) for f in out.frames] == list(range(8))
    assert out.duration == pytest.approx(8, abs=0.2) and not out.capped
    assert out.frames[0].shape == (120, 160, 3) and out.frames[0].dtype == np.uint8


def test_two_per_second_and_the_cap(video):
    assert sample_frames(video, fps=2).timestamps == pytest.approx([i / 2 for i in range(16)], abs=0.1)
    capped = sample_frames(video, fps=1, max_frames=3)
    assert capped.capped and capped.timestamps == pytest.approx([0, 1, 2], abs=0.1)


def test_frames_are_scaled_to_max_side(video):
    assert sample_frames(video, max_side=80).frames[0].shape == (60, 80, 3)


def test_sparse_keyframes_and_long_jumps_seek_correctly():
    data = encode(seconds=40, fps=5, gop=50)
    out = sample_frames(data, fps=0.1)  # a target every 10 s: the seek path
    assert out.timestamps == pytest.approx([0, 10, 20, 30], abs=0.25)
    assert [second_of(f) for f in out.frames] == [s % 8 for s in (0, 10, 20, 30)]


def test_pixel_cap_refuses_large_frames(video):
    with pytest.raises(DecodeError, match="too large"):
        sample_frames(video, max_pixels=100 * 100)


def wav_bytes() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(8000)))
    return buf.getvalue()


def test_audio_only_is_named_and_refused():
    data = wav_bytes()
    assert sniff_media_type(data, "clip.wav") == "audio"
    with pytest.raises(DecodeError, match="no video stream"):
        sample_frames(data)


def test_broken_videos_raise_decode_errors_quickly(video):
    for data in (b"", np.random.default_rng(0).bytes(5000), video[: len(video) // 3]):
        try:
            out = sample_frames(data)
        except DecodeError:
            continue
        # A truncated MP4 may keep its first frames when the index came first: never more.
        assert len(out.frames) <= 8


def gif_bytes(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 48), c) for c in COLOURS[:5]]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=200, loop=0)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_are_short_videos(fmt):
    data = gif_bytes(fmt)
    assert sniff_media_type(data, None) == "video"
    out = sample_frames(data, fps=5)
    assert out.timestamps == pytest.approx([0, 0.2, 0.4, 0.6, 0.8], abs=0.05)
    assert [second_of(f) for f in out.frames] == [0, 1, 2, 3, 4]
    assert sample_frames(data, fps=2).timestamps == pytest.approx([0, 0.6], abs=0.05)


def still(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("data, uri, kind", [
    (still("JPEG"), None, "image"), (still("PNG"), "x.bin", "image"), (still("GIF"), None, "image"),
    (still("WEBP"), None, "image"), (still("BMP"), None, "image"), (still("TIFF"), None, "image"),
    (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40, None, "video"),
    (b"\x1a\x45\xdf\xa3" + b"\x00" * 40, None, "video"),
    (b"RIFF\x00\x00\x00\x00AVI LIST", None, "video"),
    (b"ID3\x03\x00" + b"\x00" * 40, None, "audio"),
    (b"fLaC" + b"\x00" * 40, None, "audio"),
    ("héllo wörld\n".encode(), None, "text"),
    (b"\x00\x01\x02garbage", "thing.mp4", "video"),
    (b"\x00\x01\x02garbage", "thing.png", "image"),
    (b"\x00\x01\x02garbage", None, None),
])
def test_sniffing(data, uri, kind):
    assert sniff_media_type(data, uri) == kind


def test_decode_text_flags_what_it_changes():
    clean = decode_text("hello\nworld\n".encode())
    assert (clean.text, clean.truncated, clean.invalid_utf8) == ("hello\nworld", False, False)
    bad = decode_text(b"caf\xe9 \x00ok")
    assert bad.invalid_utf8 and bad.text == "caf\ufffd ok"
    long = decode_text(b"a" * 1_000_000, max_chars=100_000, max_line_chars=10_000)
    assert long.truncated and len(long.text) == 10_000
    many = decode_text(b"line\n" * 50_000, max_chars=1000)
    assert many.truncated and len(many.text) == 1000
