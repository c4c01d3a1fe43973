"""``zeros:<arch>``, for benchmarks only: an architecture's preprocessing and vector size, with a
"model" that returns zero vectors without reading its input. A job run on it measures what the
job itself costs around a model (reading, decoding, queues, Parquet), with no model compute to
subtract."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class ZeroEmbedder:
    sigmoid = None

    def __init__(self, dim: int, loaded=None):
        self.dim = dim

    def embed_images(self, pixels: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        return np.zeros((len(pixels), self.dim), np.float32)

    def embed_texts(self, token_lists: Sequence[np.ndarray]) -> np.ndarray:
        return np.zeros((len(token_lists), self.dim), np.float32)
