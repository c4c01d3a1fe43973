"""The embedding job's stage functions: a decode worker's ``preprocess`` (bytes → a uint8 crop and
token ids, or a JPEG left for the GPU) and the model workers' batch functions (the whole
embedder, or a pipelined embed's text tower and image-tower parts). ``stages.embedding`` puts
them in a stage list."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from ..decode import DecodeError, decode_image
from ..decode.image import TRANSPOSING
from ..decode.jpeg_header import nvjpeg_takes, read_jpeg_header
from ..models import LoadedEmbedder, Preprocessor
from ..records import Decoded, Item, Scored, failed
from ..stage import shared_row
from .gpu_images import GpuDecoding

def preprocess(item: Item, pre: Preprocessor, max_pixels: int, fast: bool,
               gpu_jpegs: bool = False) -> Decoded:
    """One item for the model: its image as a uint8 crop (or, with ``gpu_jpegs``, a JPEG the GPU
    can take left as bytes, its size read from the header) and its caption's token ids."""
    decoded = Decoded(id=item.id, uri=item.uri, text=item.text)
    if item.data is not None:
        header = read_jpeg_header(item.data) if gpu_jpegs else None
        if nvjpeg_takes(header, max_pixels):
            decoded.encoded = item.data
            size = (header.height, header.width) if header.orientation in TRANSPOSING else (header.width, header.height)
            decoded.width, decoded.height = size
        else:
            decoded.pixels, (decoded.width, decoded.height) = image_crop(item.data, pre, max_pixels, fast)
    if item.text:
        decoded.tokens = pre.text(item.text)
    return decoded


def image_crop(data: bytes, pre: Preprocessor, max_pixels: int,
               fast: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """Image bytes → (the model's uint8 crop, the image's displayed size); ValueError if they
    cannot be decoded.

    ``fast``: a JPEG is decoded at the smallest DCT scale that keeps its short side at least the
    model's input (a 640x480 photo at 320x240), and only the crop is resized; speed and
    distance to the exact path by decoder are in docs/benchmarks.md ("JPEG decoders")."""
    try:
        img, size = decode_image(data, max_pixels, pre.resize_to if fast else None)
    except DecodeError as exc:
        raise ValueError(str(exc)) from None
    return pre.image(img, exact=not fast, out=shared_row()), size


def crop_only(data: bytes, pre: Preprocessor, max_pixels: int, fast: bool) -> np.ndarray:
    return image_crop(data, pre, max_pixels, fast)[0]


class EmbedBatch:
    """The model stage's batch function: one per model worker, owning its weights on ``device``
    (or the embedder's own), and with ``gpu`` decoding the batch's JPEGs there."""

    def __init__(self, loaded: LoadedEmbedder, gpu: GpuDecoding | None = None, device: str | None = None):
        loaded = replace(loaded, device=device) if device else loaded
        self.embedder = loaded.make_embedder()
        self.gpu = gpu.on(loaded.device) if gpu else None

    def __call__(self, batch: Sequence[Decoded]) -> list[Scored]:
        inputs = [r.pixels if r.encoded is None else r.encoded for r in batch]
        errors: list[str | None] = [None] * len(batch)
        if self.gpu and any(r.encoded is not None for r in batch):
            images, errors = self._decoded_here(inputs)
        else:
            images = _where_present(inputs, self.embedder.embed_images)
        texts = _where_present([r.tokens for r in batch], self.embedder.embed_texts)
        return [failed(r, f"decode: {e}") if e else _scored(r, image_embedding=i, text_embedding=t)
                for r, i, t, e in zip(batch, images, texts, errors)]

    def _decoded_here(self, inputs: list) -> tuple[list, list[str | None]]:
        """Image vectors (None where there is no image) and decode errors, with the batch's
        images decoded on the model's device."""
        present = [i for i, x in enumerate(inputs) if x is not None]
        crops, failures = self.gpu([inputs[i] for i in present])
        ok = [k for k, e in enumerate(failures) if e is None]
        vectors = self.embedder.embed_images(crops[ok]) if ok else []
        images: list = [None] * len(inputs)
        errors: list[str | None] = [None] * len(inputs)
        for k, e in enumerate(failures):
            errors[present[k]] = e
        for k, v in zip(ok, vectors):
            images[present[k]] = v
        return images, errors


class TextTowerBatch:
    """A pipelined embed's first model stage: the text tower alone; images pass on untouched."""

    def __init__(self, loaded: LoadedEmbedder):
        from ..models.pipeline import text_embedder

        self.embedder = text_embedder(loaded)

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        texts = _where_present([r.tokens for r in batch], self.embedder.embed_texts)
        # The tokens stay (a few hundred bytes): the last stage counts what the model read.
        return [r if v is None else replace(r, outputs={**r.outputs, "text_embedding": v})
                for r, v in zip(batch, texts)]


class ImagePartBatch:
    """One part of a pipelined image tower: pixels or the previous part's ``hidden`` in, ``hidden``
    out; the last part turns every record into its ``Scored`` row, as ``EmbedBatch`` does."""

    def __init__(self, loaded: LoadedEmbedder, layers: range):
        from ..models.pipeline import VisionPart

        self.part = VisionPart(loaded, layers)

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded | Scored]:
        inputs = [r.pixels if self.part.first else r.hidden for r in batch]
        outs = _where_present(inputs, lambda xs: self.part(np.stack(xs)))
        if self.part.last:
            return [_scored(r, image_embedding=v) for r, v in zip(batch, outs)]
        return [r if h is None else replace(r, pixels=None, hidden=h) for r, h in zip(batch, outs)]


def _where_present(inputs: list[np.ndarray | None],
                   fn: Callable[[list[np.ndarray]], np.ndarray]) -> list[np.ndarray | None]:
    """``fn`` once on the inputs that are there (a batch mixes images, texts and both); None
    where an input is missing."""
    present = [i for i, x in enumerate(inputs) if x is not None]
    out: list[np.ndarray | None] = [None] * len(inputs)
    if present:
        for i, v in zip(present, fn([inputs[i] for i in present])):
            out[i] = v
    return out


def _scored(r: Decoded, **vectors: np.ndarray | None) -> Scored:
    """``r``'s output row: what earlier stages found plus ``vectors``, absent ones left out."""
    outputs = {**r.outputs, **{k: v for k, v in vectors.items() if v is not None}}
    return Scored(id=r.id, uri=r.uri, text=r.text, width=r.width, height=r.height, outputs=outputs,
                  text_tokens=None if r.tokens is None else len(r.tokens))
