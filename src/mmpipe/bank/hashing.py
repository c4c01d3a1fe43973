"""Perceptual hashes of one RGB frame: PDQ (Meta's, 256 bits, with a 0–100 quality) and pHash
(64 bits). Both are bytes in the usual hex order, so banks shared as hex (ThreatExchange PDQ,
imagehash's str()) import as they are."""

from __future__ import annotations

import numpy as np
from PIL import Image

HASHES = {"pdq": 32, "phash": 8}  # bytes per hash


def hash_image(frame: np.ndarray) -> dict[str, bytes | int]:
    """``frame``: (H, W, 3) uint8 RGB. Returns pdq, pdq_quality and phash."""
    import imagehash
    import pdqhash

    # pdqhash returns bit 255 first, the order of the reference implementation's hex.
    bits, quality = pdqhash.compute(np.ascontiguousarray(frame, np.uint8))
    phash = imagehash.phash(Image.fromarray(frame)).hash
    return {"pdq": np.packbits(bits.astype(np.uint8)).tobytes(), "pdq_quality": int(quality),
            "phash": np.packbits(phash.astype(np.uint8)).tobytes()}
