"""Sample photos for the demo, the tests and the benchmarks, made from images that ship inside
scikit-image (``pip install 'mmpipe[samples]'``).

``make_sample_images`` turns the ~20 real photos in ``skimage/data`` into ``n`` varied JPEGs and
PNGs (random crops, resizes, flips, small rotations, colour and brightness jitter, some
grayscale), each with a sidecar ``.txt`` caption saying what it shows, plus two deliberately
broken files. The same seed gives the same bytes. Nothing here is meant to be committed.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# A hidden file (folder sources skip names starting with "."): written last, so a folder that has
# it with the same parameters is complete and is not made again.
MARKER = ".mmpipe-samples.json"
BROKEN_FILES = ("broken_truncated.jpg", "broken_empty.png")
_SAMPLE_NAME = re.compile(r"^\d{4,}_[a-z_]+\.(jpg|png|txt)$")
_VERSION = 1  # bump when the output for a given seed changes


@dataclass(frozen=True)
class Source:
    file: str  # in skimage/data
    caption: str  # what it shows; grayscale originals say so


SOURCES = (
    Source("astronaut.png", "a portrait of an astronaut in a spacesuit with a flag"),
    Source("chelsea.png", "a photo of a tabby cat"),
    Source("coffee.png", "a photo of a cup of coffee on a saucer"),
    Source("rocket.jpg", "a photo of a rocket on its launch pad"),
    Source("hubble_deep_field.jpg", "a telescope image of distant galaxies in deep space"),
    Source("motorcycle_left.png", "a photo of a red motorcycle parked in a garage"),
    Source("motorcycle_right.png", "a photo of a red motorcycle in a workshop"),
    Source("ihc.png", "a microscope image of stained tissue"),
    Source("retina.jpg", "a medical photo of the back of a human eye"),
    Source("camera.png", "a black and white photo of a man with a camera on a tripod"),
    Source("coins.png", "a grayscale photo of old coins in rows"),
    Source("horse.png", "a black silhouette of a horse"),
    Source("moon.png", "a grayscale photo of the cratered surface of the moon"),
    Source("page.png", "a scanned page of printed text"),
    Source("text.png", "a grayscale photo of handwritten maths on paper"),
    Source("brick.png", "a grayscale close-up of a brick wall"),
    Source("grass.png", "a grayscale close-up of grass"),
    Source("gravel.png", "a grayscale close-up of gravel"),
    Source("clock_motion.png", "a motion-blurred photo of a clock"),
    Source("color.png", "a colour wheel on a black background"),
    Source("logo.png", "the scikit-image logo, a green and orange snake"),
)


def make_sample_images(folder: str | Path, n: int = 300, size: tuple[int, int] | None = None,
                       captions: bool = True, broken: bool = True, seed: int = 0,
                       png_share: float = 0.2) -> Path:
    """Write ``n`` sample images (plus captions and broken files) into ``folder``; return it.

    ``size=(w, h)``: every image is exactly that size; otherwise sizes vary (about 200–900 px a
    side). ``png_share``: the fraction saved as PNG, the rest as JPEG (0 for JPEGs only).
    ``broken``: also write a truncated JPEG and a zero-byte PNG. Deterministic for a seed; a
    folder already made with the same arguments is left as it is.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if size is not None and (len(size) != 2 or min(size) < 16):
        raise ValueError(f"size must be (width, height) of at least 16 px, not {size!r}")
    folder = Path(folder)
    params = {"version": _VERSION, "n": n, "size": list(size) if size else None,
              "captions": captions, "broken": broken, "seed": seed, "png_share": png_share}
    marker = folder / MARKER
    if sample_folder_params(folder) == params:
        return folder
    if folder.is_dir():
        # Made with other arguments, or interrupted: leave no stale files behind.
        marker.unlink(missing_ok=True)
        _remove_samples(folder)
    folder.mkdir(parents=True, exist_ok=True)

    for i, (source, img, notes, rng) in enumerate(sample_photos(n, seed, size)):
        ext = "png" if rng.random() < png_share else "jpg"
        stem = f"{i:04d}_{Path(source.file).stem}"
        _save(img, folder / f"{stem}.{ext}", ext, rng)
        if captions:
            (folder / f"{stem}.txt").write_text(", ".join([source.caption, *notes]) + "\n")
    if broken:
        _write_broken(folder, _Originals().get(SOURCES[1]))
    marker.write_text(json.dumps(params))
    return folder


def sample_photos(n: int, seed: int = 0, size: tuple[int, int] | None = None
                  ) -> Iterator[tuple[Source, Image.Image, list[str], np.random.Generator]]:
    """The ``n`` photos ``make_sample_images`` writes, in memory: each with its source, the words
    describing its variation, and its generator (which goes on to pick the file format)."""
    originals = _Originals()
    order = np.random.default_rng(seed).permutation(len(SOURCES))
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        # Cycle through a shuffled list of sources, so every source is used about equally.
        source = SOURCES[order[i % len(SOURCES)]]
        img, notes = _variant(originals.get(source), rng, size)
        yield source, img, notes, rng


def sample_folder_params(folder: str | Path) -> dict | None:
    """The arguments a complete sample folder was made with; None if it is not one."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _remove_samples(folder: Path) -> None:
    """Delete the files an earlier call wrote (by their names), and nothing else."""
    for p in folder.iterdir():
        if p.is_file() and (_SAMPLE_NAME.match(p.name) or p.name in BROKEN_FILES):
            p.unlink()


class _Originals:
    """The source images, decoded once each, as RGB or L (alpha composited on white)."""

    def __init__(self):
        self.root = resources.files("skimage") / "data"
        self.cache: dict[str, Image.Image] = {}

    def get(self, source: Source) -> Image.Image:
        img = self.cache.get(source.file)
        if img is None:
            with (self.root / source.file).open("rb") as f:
                img = Image.open(io.BytesIO(f.read()))
                img.load()
            if img.mode in ("RGBA", "LA", "P"):
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, "white")
                img.paste(rgba, mask=rgba.getchannel("A"))
            elif img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            self.cache[source.file] = img
        return img


def _variant(src: Image.Image, rng: np.random.Generator,
             size: tuple[int, int] | None) -> tuple[Image.Image, list[str]]:
    """One random variant of ``src`` and the words describing what was done to it."""
    notes: list[str] = []
    sw, sh = src.size
    # Output size and the aspect ratio of the crop.
    if size is not None:
        out_w, out_h = size
    else:
        aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.8))))
        long = int(rng.integers(200, 901))
        out_w, out_h = (long, max(16, round(long / aspect))) if aspect >= 1 else \
            (max(16, round(long * aspect)), long)
    aspect = out_w / out_h

    # Crop: the largest box of that aspect, times a random scale, at a random place.
    scale = float(rng.uniform(0.35, 1.0))
    full_w, full_h = (sw, sw / aspect) if sw / aspect <= sh else (sh * aspect, sh)
    cw, ch = max(8.0, full_w * scale), max(8.0, full_h * scale)
    x0 = float(rng.uniform(0, sw - cw)) if sw > cw else 0.0
    y0 = float(rng.uniform(0, sh - ch)) if sh > ch else 0.0
    notes.append("tight crop" if scale < 0.55 else "medium crop" if scale < 0.8 else "full view")

    # A small rotation: resize the crop larger, rotate it, cut the exact size out of the middle
    # (the largest centred box that has no corners from outside the picture).
    angle = float(rng.uniform(-12, 12)) if rng.random() < 0.3 else 0.0
    if angle:
        t = math.radians(abs(angle))
        fit = min(out_w / (out_w * math.cos(t) + out_h * math.sin(t)),
                  out_h / (out_w * math.sin(t) + out_h * math.cos(t)))
        big_w, big_h = math.ceil(out_w / fit) + 2, math.ceil(out_h / fit) + 2
        img = src.resize((big_w, big_h), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch),
                         reducing_gap=3.0)
        img = img.rotate(angle, Image.BICUBIC)
        left, top = (big_w - out_w) // 2, (big_h - out_h) // 2
        img = img.crop((left, top, left + out_w, top + out_h))
        notes.append("slightly rotated")
    else:
        img = src.resize((out_w, out_h), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch),
                         reducing_gap=3.0)

    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
        notes.append("flipped")

    if img.mode == "RGB" and rng.random() < 0.15:
        img = img.convert("L")
        notes.append("in black and white")
    brightness = float(rng.uniform(0.65, 1.35)) if rng.random() < 0.5 else 1.0
    if brightness != 1.0:
        img = ImageEnhance.Brightness(img).enhance(brightness)
        if brightness < 0.85:
            notes.append("darker")
        elif brightness > 1.15:
            notes.append("brighter")
    if rng.random() < 0.4:
        img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.7, 1.3)))
    if img.mode == "RGB" and rng.random() < 0.4:
        saturation = float(rng.uniform(0.4, 1.6))
        img = ImageEnhance.Color(img).enhance(saturation)
        if saturation < 0.7:
            notes.append("muted colours")
        elif saturation > 1.3:
            notes.append("vivid colours")
    return img, notes


def _save(img: Image.Image, path: Path, ext: str, rng: np.random.Generator) -> None:
    if ext == "png":
        img.save(path, "PNG", compress_level=1)
    else:
        img.save(path, "JPEG", quality=int(rng.integers(70, 96)))


def _write_broken(folder: Path, img: Image.Image) -> None:
    """A JPEG cut off after its first third, and a zero-byte PNG: both must become error rows."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    (folder / BROKEN_FILES[0]).write_bytes(data[: len(data) // 3])
    (folder / BROKEN_FILES[1]).write_bytes(b"")
