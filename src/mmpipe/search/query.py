"""Text→image and image→image search over an index, with the model that made its vectors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..decode.image import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from ..errors import ConfigError
from .index import IndexMeta, open_table

# A model that reproduces the index's vectors gives the probe caption's vector back at cosine
# ~1 (fp32 on another machine: > 0.9999); other weights of the same shape land far below.
PROBE_MIN_COSINE = 0.99
# ANN settings at query time: probe enough partitions for recall, then re-rank exactly.
NPROBES_SHARE = 0.05
REFINE_FACTOR = 5


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    uri: str | None
    text: str | None
    score: float  # cosine similarity between the query and the item's image vector
    width: int | None
    height: int | None


class Searcher:
    """An opened index and its model, loaded once; queries are cheap after that."""

    def __init__(self, index: str | os.PathLike, model: str | None = None, device: str = "cpu",
                 allow_pickle: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
        from ..models import load_clip

        self.path = Path(index)
        self.meta = IndexMeta.read(self.path)
        self.table = open_table(self.path)
        self.max_pixels = max_pixels
        clip = load_clip(model or self.meta.model, device, "fp32", allow_pickle)
        if clip.dim != self.meta.dimension:
            raise ConfigError("--model", f"{clip.spec} makes {clip.dim}-dim vectors; {self.path} "
                                         f"holds {self.meta.dimension}-dim vectors of {self.meta.model}")
        self.spec = str(clip.spec)
        self.preprocessor = clip.preprocessor
        self.embedder = clip.make_embedder()
        self._check_probe()

    def _check_probe(self) -> None:
        probe = self.meta.probe
        if probe is None:
            return
        got = self.embedder.embed_texts([self.preprocessor.text(probe["text"])])[0]
        cosine = float(got @ np.asarray(probe["vector"], np.float32))
        if cosine < PROBE_MIN_COSINE:
            raise ConfigError("--model", f"{self.spec} does not reproduce {self.path}'s vectors "
                                         f"(cosine {cosine:.3f} on an indexed caption); the index "
                                         f"was built with {self.meta.model}")

    def query_vector(self, text: str | None = None, image: bytes | None = None) -> np.ndarray:
        """The unit query vector of a text, an image (encoded bytes), or both: the normalised sum
        of their vectors finds images close to both."""
        if not text and image is None:
            raise ConfigError("QUERY", "give a text query, an image, or both")
        parts = []
        if text:
            parts.append(self.embedder.embed_texts([self.preprocessor.text(text)])[0])
        if image is not None:
            try:
                img, _ = decode_image(image, self.max_pixels)
            except DecodeError as exc:
                raise ConfigError("--image", f"cannot read the query image: {exc}") from None
            parts.append(self.embedder.embed_images(self.preprocessor.image(img)[None])[0])
        vector = np.sum(parts, axis=0)
        return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)

    def search(self, vector: np.ndarray, k: int = 20) -> list[Hit]:
        if k < 1:
            raise ConfigError("-k", f"must be at least 1, not {k}")
        query = (self.table.search(vector, vector_column_name="vector").distance_type("cosine")
                 .select(["id", "uri", "text", "width", "height", "_distance"]).limit(k))
        if self.meta.ann:
            partitions = self.meta.ann["partitions"]
            query = query.nprobes(max(1, round(partitions * NPROBES_SHARE))).refine_factor(REFINE_FACTOR)
        rows = query.to_arrow().to_pylist()
        return [Hit(rank=i + 1, id=r["id"], uri=r["uri"], text=r["text"], score=1.0 - r["_distance"],
                    width=r["width"], height=r["height"]) for i, r in enumerate(rows)]
