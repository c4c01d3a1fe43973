"""A sample set for ``mmpipe moderate``: real photos, images with rendered text (clean and
offensive phrases), short videos with a text overlay in a known time window, and text comments,
all listed in one manifest (``manifest.jsonl``) so that one job covers every media type.

Made offline from scikit-image's photos (see ``sample_data``); nothing here is committed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .sample_data import BROKEN_FILES, make_sample_images

MANIFEST = "manifest.jsonl"
_MARKER = ".mmpipe-moderation-samples.json"
_VERSION = 2

CLEAN_PHRASES = (
    "have a lovely day", "great photo, thanks for sharing", "see you at the meeting tomorrow",
    "the weather is nice today", "congratulations on your new job", "what a beautiful sunset",
    "happy birthday to you", "this recipe looks delicious",
)
OFFENSIVE_PHRASES = (
    "you are a stupid idiot", "shut up you moron", "go to hell you idiot", "you are a fucking loser",
    "i will kill you",
)
# Comments as a text manifest would carry them: clean, offensive, obfuscated, self-harm.
COMMENTS = (
    *CLEAN_PHRASES, *OFFENSIVE_PHRASES,
    "y0u 4re 4n 1d10t", "I want to kill myself", "nice work, you stupid idiot",
    "thanks, this was really helpful", "please stop posting this garbage, you moron",
)
# The offensive overlay of the flagged video: this phrase, from OVERLAY_START to OVERLAY_END s.
OVERLAY_TEXT = "you are a stupid idiot"
OVERLAY_START, OVERLAY_END = 3.0, 5.0
VIDEO_SECONDS, VIDEO_FPS, VIDEO_SIZE = 8, 10, (640, 360)


def make_moderation_samples(folder: str | Path, n_photos: int = 120, seed: int = 0) -> Path:
    """Write the sample set into ``folder`` (once) and return the path of its manifest."""
    folder = Path(folder)
    params = {"version": _VERSION, "n_photos": n_photos, "seed": seed}
    manifest = folder / MANIFEST
    try:
        if json.loads((folder / _MARKER).read_text()) == params and manifest.exists():
            return manifest
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    photos = make_sample_images(folder / "photos", n=n_photos, seed=seed)
    for p in sorted(photos.iterdir()):
        if p.suffix in (".jpg", ".png"):
            caption = p.with_suffix(".txt")
            rows.append({"id": f"photos/{p.name}", "image": f"photos/{p.name}",
                         "text": caption.read_text().strip() if caption.exists() else None})
    rows += _text_images(folder / "text_images", photos, seed)
    rows += _videos(folder / "videos")
    rows += [{"id": f"comment-{i:03d}", "text": t} for i, t in enumerate(COMMENTS)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / _MARKER).write_text(json.dumps(params))
    return manifest


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def draw_caption(img: Image.Image, text: str, size: int = 32, where: str = "middle") -> Image.Image:
    """``text`` in white on a dark band, as memes and video captions show it."""
    img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    font = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left, bottom - top
    x = max(4, (img.width - w) // 2)
    y = {"top": 8, "middle": (img.height - h) // 2, "bottom": img.height - h - 16}[where]
    draw.rectangle((x - 8, y - 8, x + w + 8, y + h + 12), fill=(20, 20, 20))
    draw.text((x - left, y - top), text, font=font, fill=(255, 255, 255))
    return img


def _text_images(folder: Path, photos: Path, seed: int) -> list[dict]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    backgrounds = [p for p in sorted(photos.glob("*.jpg")) if p.name not in BROKEN_FILES][:20]
    rows = []
    for kind, phrases in (("clean", CLEAN_PHRASES), ("offensive", OFFENSIVE_PHRASES)):
        for i, phrase in enumerate(phrases):
            if i % 2 and backgrounds:
                bg = Image.open(backgrounds[int(rng.integers(len(backgrounds)))]).convert("RGB")
                bg = bg.resize((640, int(640 * bg.height / bg.width)))
            else:
                colour = tuple(int(c) for c in rng.integers(40, 200, 3))
                bg = Image.new("RGB", (640, 360), colour)
            img = draw_caption(bg, phrase, size=int(rng.integers(28, 40)),
                               where=("top", "middle", "bottom")[i % 3])
            name = f"{kind}_{i:02d}.jpg"
            img.save(folder / name, quality=90)
            rows.append({"id": f"text_images/{name}", "image": f"text_images/{name}"})
    return rows


def _videos(folder: Path) -> list[dict]:
    folder.mkdir(exist_ok=True)
    write_video(folder / "clean.mp4", overlay=None)
    write_video(folder / "overlay.mp4", overlay=(OVERLAY_TEXT, OVERLAY_START, OVERLAY_END))
    frames = [_moving_frame(i, (400, 300)) for i in range(0, 30, 6)]
    for i in (2, 3):  # sampled at 1 fps, the frame at 1.2 s is the one a job sees
        frames[i] = draw_caption(frames[i], "shut up you moron", size=30)
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=400,
                   loop=0)
    return [{"id": f"videos/{n}", "image": f"videos/{n}"}
            for n in ("clean.mp4", "overlay.mp4", "animated.gif")]


def _moving_frame(i: int, size: tuple[int, int]) -> Image.Image:
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([127 + 100 * np.sin(0.03 * x + 0.2 * i), 127 + 100 * np.sin(0.04 * y - 0.1 * i),
                    np.full_like(x, 90 + 3 * i)], axis=-1)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def write_video(path: Path, overlay: tuple[str, float, float] | None,
                seconds: int = VIDEO_SECONDS, fps: int = VIDEO_FPS, size=VIDEO_SIZE) -> Path:
    """An H.264 MP4 of a moving gradient; ``overlay`` = (text, start s, end s) drawn on it."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            img = _moving_frame(i, size)
            if overlay and overlay[1] <= i / fps < overlay[2]:
                img = draw_caption(img, overlay[0], size=34, where="bottom")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
