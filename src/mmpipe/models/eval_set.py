"""The fixed evaluation set a faster variant is compared with fp32 on: images and captions made
here, the same on every machine, with no download and no optional package.

The images are photo-like rather than noise (smooth lighting, shapes with edges, some texture,
some grayscale), because quantisation errors depend on the activations real inputs produce.
The captions are the sample photos' and short sentences of several lengths, so the text tower
is measured with padding as a job pads.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..sample_data import SOURCES

VERSION = 1  # bump when the set changes: cached accuracy figures name the set they were made on
SIZE = 32  # images and captions each
_SHAPES = ("circle", "square", "triangle", "stripe")
_COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200),
            "yellow": (230, 200, 40), "white": (240, 240, 240), "black": (20, 20, 20)}


def evaluation_images(n: int = SIZE, size: tuple[int, int] = (320, 240)) -> list[Image.Image]:
    return [_image(np.random.default_rng([VERSION, i]), size) for i in range(n)]


def evaluation_captions(n: int = SIZE) -> list[str]:
    rng = np.random.default_rng([VERSION, 1_000])
    captions = [s.caption for s in SOURCES]
    while len(captions) < n:
        colour, shape, back = rng.choice(list(_COLOURS)), rng.choice(_SHAPES), rng.choice(list(_COLOURS))
        captions.append(f"a {colour} {shape} on a {back} background" if rng.random() < 0.5
                        else f"{rng.integers(2, 9)} {colour} {shape}s")
    return captions[:n]


def _image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([rng.uniform(40, 200) + rng.uniform(-60, 60) * (x / w) + rng.uniform(-60, 60) * (y / h)
                     for _ in range(3)], axis=-1)
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        kind = rng.choice(_SHAPES)
        if kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == "triangle":
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 12)))
    grain = rng.normal(0, rng.uniform(2, 12), (h, w, 3))  # sensor noise and texture
    img = Image.fromarray((np.asarray(img, np.float32) + grain).clip(0, 255).astype(np.uint8), "RGB")
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))
    return img.convert("L").convert("RGB") if rng.random() < 0.2 else img
