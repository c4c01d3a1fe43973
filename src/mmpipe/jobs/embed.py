"""The embedding job: items → read → decode + preprocess → CLIP towers → Parquet shards."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field

from ..decode import DecodeError, decode_image
from ..models import DEFAULT_CLIP, ClipPreprocessor, load_clip
from ..models.clip import LoadedClip
from ..records import Decoded, Item, Record, Scored
from ..sources import open_source
from ..stage import Resources, Stage
from ..stages.common import per_item, read_stage
from .config import JobConfig
from .runner import JobResult, JobSpec, run_job


class EmbedConfig(JobConfig):
    """Every option of ``mmpipe embed``; field names are the CLI flags with dashes."""

    model: str = DEFAULT_CLIP
    batch_size: int = Field(16, ge=1, le=4096)
    precision: str = "fp32"
    # JPEG DCT-domain downscaling while decoding (see decode_image); off for bit-exact preprocessing.
    fast_decode: bool = True


def embed(input: str, out: str, *, progress: bool | None = None, **options) -> JobResult:
    """Embed every image and caption of ``input`` into Parquet shards under ``out``.

    Options are the fields of ``EmbedConfig``. Re-running with the same ``out`` resumes.
    """
    cfg = EmbedConfig.build(input=input, out=out, **options)
    clip = load_clip(cfg.model, cfg.device, cfg.precision, cfg.allow_pickle)
    job = JobSpec(
        label="embed",
        # INPUT too: resuming another input into the same folder would mix two jobs' rows.
        signature={"job": "embed", "input": cfg.input, "model": str(clip.spec),
                   "precision": cfg.precision},
        items=open_source(cfg.input, cfg.source_options()),
        stages=embed_stages(clip, cfg),
        to_table=lambda records: embeddings_table(records, clip.dim),
        manifest={"job": "embed", "model": str(clip.spec), "random_weights": clip.spec.random_weights,
                  "dimension": clip.dim, "precision": cfg.precision, "input": cfg.input,
                  "columns": [f.name for f in embedding_schema(clip.dim)]},
    )
    return run_job(job, Path(cfg.out), shard_size=cfg.shard_size, limit=cfg.limit,
                   overwrite=cfg.overwrite, progress=progress)


def embed_stages(clip: LoadedClip, cfg: EmbedConfig) -> list[Stage]:
    pre = clip.preprocessor
    # Drafting only down to twice the model's input keeps the resize that follows nearly exact
    # (worst cosine 0.9999 vs a full decode, against 0.998 when drafting to the input size).
    min_side = 2 * pre.resize_to if cfg.fast_decode else None
    return [
        read_stage(cfg.read_workers),
        Stage("decode", lambda: per_item("decode", lambda r: preprocess(r, pre, cfg.max_pixels, min_side)),
              concurrency=cfg.decode_workers),
        Stage("embed", lambda: EmbedBatch(clip), batch_size=cfg.batch_size,
              resources=Resources(num_cpus=1, num_gpus=1 if cfg.device.startswith("cuda") else 0)),
    ]


def preprocess(item: Item, pre: ClipPreprocessor, max_pixels: int, min_side: int | None) -> Decoded:
    decoded = Decoded(id=item.id, uri=item.uri, text=item.text)
    if item.data is not None:
        try:
            img, (decoded.width, decoded.height) = decode_image(item.data, max_pixels, min_side)
        except DecodeError as exc:
            raise ValueError(str(exc)) from None
        decoded.pixels = pre.image(img)
    if item.text:
        decoded.tokens = pre.text(item.text)
    return decoded


class EmbedBatch:
    """The model stage's batch function: one per model worker, owning its weights."""

    def __init__(self, clip: LoadedClip):
        self.embedder = clip.make_embedder()

    def __call__(self, batch: Sequence[Decoded]) -> list[Scored]:
        out = [Scored(id=r.id, uri=r.uri, text=r.text, width=r.width, height=r.height) for r in batch]
        images = [i for i, r in enumerate(batch) if r.pixels is not None]
        if images:
            vectors = self.embedder.embed_images(np.stack([batch[i].pixels for i in images]))
            for i, v in zip(images, vectors):
                out[i].outputs["image_embedding"] = v
        texts = [i for i, r in enumerate(batch) if r.tokens is not None]
        if texts:
            vectors = self.embedder.embed_texts([batch[i].tokens for i in texts])
            for i, v in zip(texts, vectors):
                out[i].outputs["text_embedding"] = v
        return out


def embedding_schema(dim: int) -> pa.Schema:
    vector = pa.list_(pa.float32(), dim)
    return pa.schema([
        ("id", pa.string()), ("uri", pa.string()), ("text", pa.string()),
        ("image_embedding", vector), ("text_embedding", vector),
        ("width", pa.int32()), ("height", pa.int32()), ("error", pa.string()),
    ])


def embeddings_table(records: Sequence[Record], dim: int) -> pa.Table:
    def vectors(name: str) -> pa.Array:
        rows = [getattr(r, "outputs", {}).get(name) for r in records]
        flat = np.zeros((len(rows), dim), dtype=np.float32)
        for i, v in enumerate(rows):
            if v is not None:
                flat[i] = v
        mask = pa.array([v is None for v in rows])
        return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=mask)

    return pa.Table.from_arrays([
        pa.array([r.id for r in records], pa.string()),
        pa.array([r.uri for r in records], pa.string()),
        pa.array([r.text for r in records], pa.string()),
        vectors("image_embedding"), vectors("text_embedding"),
        pa.array([getattr(r, "width", None) for r in records], pa.int32()),
        pa.array([getattr(r, "height", None) for r in records], pa.int32()),
        pa.array([r.error for r in records], pa.string()),
    ], schema=embedding_schema(dim))
