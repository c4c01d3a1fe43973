"""Text→image and image→image search over an index, with the model that made its vectors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..decode.image import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from ..errors import ConfigError
from .index import IndexMeta, open_table

# A model that reproduces the index's vectors gives the probe caption's vector back at cosine
# ~1 (fp32 elsewhere: > 0.9999; an index embedded with an int8 or bf16 variant, which the
# accuracy gate keeps near 0.99 of fp32, a little less); other weights of the same shape land
# far below (0.56 at best between differently seeded tiny CLIPs).
PROBE_MIN_COSINE = 0.95
# ANN settings at query time: probe 5 % of the partitions (at least 8) and re-rank 10× k
# candidates by their exact vectors; more re-ranking bought no recall in the benchmark.
NPROBES_SHARE = 0.05
MIN_NPROBES = 8
REFINE_FACTOR = 10


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    uri: str | None
    text: str | None
    score: float  # cosine similarity between the query and the item's image vector
    width: int | None
    height: int | None


class SearchIndex:
    """An opened index: its metadata and table, searched by vector."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.meta = IndexMeta.read(self.path)
        self.table = open_table(self.path)

    def check_model(self, spec: str, dim: int, embed_text: Callable[[str], np.ndarray],
                    field: str = "--model") -> None:
        """Refuse a model whose vectors are not the index's: another shape, or (checked on the
        indexed caption the index keeps) other weights under the same shape."""
        if dim != self.meta.dimension:
            raise ConfigError(field, f"{spec} makes {dim}-dim vectors; {self.path} holds "
                                     f"{self.meta.dimension}-dim vectors of {self.meta.model}")
        probe = self.meta.probe
        if probe is None:
            return
        cosine = float(embed_text(probe["text"]) @ np.asarray(probe["vector"], np.float32))
        if cosine < PROBE_MIN_COSINE:
            raise ConfigError(field, f"{spec} does not reproduce {self.path}'s vectors (cosine "
                                     f"{cosine:.3f} on an indexed caption); the index was built "
                                     f"with {self.meta.model}")

    def search(self, vector: np.ndarray, k: int = 20) -> list[Hit]:
        if k < 1:
            raise ConfigError("-k", f"must be at least 1, not {k}")
        query = (self.table.search(vector, vector_column_name="vector").distance_type("cosine")
                 .select(["id", "uri", "text", "width", "height", "_distance"]).limit(k))
        if self.meta.ann:
            partitions = self.meta.ann["partitions"]
            nprobes = min(partitions, max(MIN_NPROBES, round(partitions * NPROBES_SHARE)))
            query = query.nprobes(nprobes).refine_factor(REFINE_FACTOR)
        rows = query.to_arrow().to_pylist()
        return [Hit(rank=i + 1, id=r["id"], uri=r["uri"], text=r["text"], score=1.0 - r["_distance"],
                    width=r["width"], height=r["height"]) for i, r in enumerate(rows)]


def query_vector(parts: Sequence[np.ndarray]) -> np.ndarray:
    """One unit query vector from a text's and/or an image's: the normalised sum finds images
    close to both."""
    vector = np.sum(np.asarray(parts, np.float32), axis=0)
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


class Searcher:
    """An index and its model, loaded once in this process; queries are cheap after that."""

    def __init__(self, index: str | os.PathLike, model: str | None = None, device: str = "cpu",
                 allow_pickle: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
        from ..models import load_embedder

        self.index = SearchIndex(index)
        self.meta = self.index.meta
        self.max_pixels = max_pixels
        clip = load_embedder(model or self.meta.model, device, "fp32", allow_pickle)
        self.spec = str(clip.spec)
        self.preprocessor = clip.preprocessor
        self.embedder = clip.make_embedder()
        self.index.check_model(self.spec, clip.dim, self._text_vector)

    def _text_vector(self, text: str) -> np.ndarray:
        return self.embedder.embed_texts([self.preprocessor.text(text)])[0]

    def query_vector(self, text: str | None = None, image: bytes | None = None) -> np.ndarray:
        """The query vector of a text, an image (encoded bytes), or both."""
        if not text and image is None:
            raise ConfigError("QUERY", "give a text query, an image, or both")
        parts = [self._text_vector(text)] if text else []
        if image is not None:
            try:
                img, _ = decode_image(image, self.max_pixels)
            except DecodeError as exc:
                raise ConfigError("--image", f"cannot read the query image: {exc}") from None
            parts.append(self.embedder.embed_images(self.preprocessor.image(img)[None])[0])
        return query_vector(parts)

    def search(self, vector: np.ndarray, k: int = 20) -> list[Hit]:
        return self.index.search(vector, k)
