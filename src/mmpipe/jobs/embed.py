"""The embedding job: items → read → decode + preprocess → CLIP towers → Parquet shards."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from ..decode import DecodeError, decode_image
from ..errors import ConfigError
from ..engine import Engine, LocalEngine, make_engine
from ..models import DEFAULT_CLIP, ClipPreprocessor, load_clip
from ..models.clip import LoadedClip
from ..models.variants import ClipVariant, Precision, Runtime, Variant
from ..records import Decoded, Item, Record, Scored
from ..sources import open_source
from ..stage import ArrayField, Resources, SharedSetup, Stage
from ..stages.common import decode_stage
from ..tune.accuracy import Gate
from ..tune.clip_gate import gated_variant
from .config import JobConfig
from .runner import JobResult, JobSpec, run_job


class EmbedConfig(JobConfig):
    """Every option of ``mmpipe embed``; field names are the CLI flags with dashes."""

    model: str = DEFAULT_CLIP
    batch_size: int = Field(16, ge=1, le=4096)
    precision: Precision = "fp32"
    runtime: Runtime = "eager"
    # The accuracy gate: a variant whose vectors' mean cosine to eager fp32 is lower is refused.
    min_cosine: float = Field(0.99, ge=-1, le=1)
    # JPEG DCT-domain downscaling while decoding (see decode_image); off for bit-exact preprocessing.
    fast_decode: bool = True
    # Split the image tower into this many consecutive parts, one worker (device) each.
    pipeline_stages: int = Field(1, ge=1, le=64)
    # Model workers per device sharing one copy of the weights (see models.device_feed).
    model_replicas: int = Field(1, ge=1, le=16)
    # The decode workers as processes writing into shared memory (local engine; see
    # engine.child_process), so that this process only feeds the model; False: threads here.
    decode_processes: bool = True

    @model_validator(mode="after")
    def _variant_runs_here(self):
        self.variant.check(self.device)
        if self.model.startswith("zeros:") and (not self.variant.is_reference or self.pipeline_stages > 1):
            raise ConfigError("--model", "zeros: (a benchmark's model that returns zero vectors) runs "
                                         "eager fp32 in one piece only")
        if self.pipeline_stages > 1 and (self.precision == "int8" or self.runtime != "eager"):
            raise ConfigError("--pipeline-stages", "splits the eager PyTorch model; it does not combine "
                                                   f"with --precision {self.precision} --runtime {self.runtime}")
        if self.model_replicas > 1 and self.pipeline_stages > 1:
            raise ConfigError("--model-replicas", "does not combine with --pipeline-stages")
        if self.model_replicas > 1 and self.runtime == "compile" and self.device.startswith("cuda"):
            # max-autotune replays CUDA graphs, which belong to the thread that recorded them.
            raise ConfigError("--model-replicas", "a model compiled for CUDA runs in one thread; "
                                                  "use --runtime eager with several replicas")
        return self

    @property
    def variant(self) -> Variant:
        return Variant(self.precision, self.runtime)

    @property
    def gate(self) -> Gate:
        return Gate(min_mean_cosine=self.min_cosine)


def embed(input: str, out: str, *, progress: bool | None = None, **options) -> JobResult:
    """Embed every image and caption of ``input`` into Parquet shards under ``out``.

    Options are the fields of ``EmbedConfig``. Re-running with the same ``out`` resumes.
    """
    cfg = EmbedConfig.build(input=input, out=out, **options)
    engine = make_engine(cfg.engine, cfg.ray_address)
    clip = gated_clip(cfg, engine)
    job = JobSpec(
        label="embed",
        # INPUT too: resuming another input into the same folder would mix two jobs' rows.
        signature={"job": "embed", "input": cfg.input, "model": str(clip.spec),
                   "precision": cfg.precision, "runtime": cfg.runtime},
        items=open_source(cfg.input, cfg.source_options()),
        stages=embed_stages(clip, cfg, engine),
        to_table=lambda records: embeddings_table(records, clip.dim),
        manifest={"job": "embed", "model": str(clip.spec), "random_weights": clip.spec.random_weights,
                  "dimension": clip.dim, "precision": cfg.precision, "variant": clip.describe(),
                  "input": cfg.input,
                  "columns": [f.name for f in embedding_schema(clip.dim)]},
    )
    return run_job(job, Path(cfg.out), shard_size=cfg.shard_size, limit=cfg.limit,
                   overwrite=cfg.overwrite, progress=progress, engine=engine)


def gated_clip(cfg: EmbedConfig, engine: Engine = LocalEngine()) -> ClipVariant:
    """The job's CLIP as its ``--precision``/``--runtime`` variant, measured against eager fp32
    and refused below the gate (tune.clip_gate) where the model stages run: a GPU node when
    they need one."""
    clip = load_clip(cfg.model, cfg.device, cfg.variant.weights_precision, cfg.allow_pickle,
                     device_here=cfg.engine == "local")
    if cfg.variant.is_reference:  # nothing to measure, so no need to go where the model runs
        return ClipVariant.wrap(clip, cfg.variant)
    gated = engine.run_once(partial(gated_variant, clip, cfg.variant, cfg.gate), model_resources(cfg))
    return replace(gated, image_batch=cfg.batch_size)


def model_resources(cfg: EmbedConfig) -> Resources:
    """A model worker's share of a device: with N replicas each takes 1/N of a GPU (on Ray, N
    actors on each GPU, each with its own weights; in this process they share one copy)."""
    return Resources(num_cpus=1, num_gpus=1 / cfg.model_replicas if cfg.device.startswith("cuda") else 0)


def embed_stages(clip: LoadedClip, cfg: EmbedConfig, engine: Engine = LocalEngine()) -> list[Stage]:
    pre = clip.preprocessor
    # Drafting only down to twice the model's input keeps the resize that follows nearly exact
    # (worst cosine 0.9999 vs a full decode, against 0.998 when drafting to the input size).
    min_side = 2 * pre.resize_to if cfg.fast_decode else None
    # Decode batches are the model's: a worker process fills one slab per batch, which the
    # model then reads as it lies.
    return [
        decode_stage(partial(preprocess, pre=pre, max_pixels=cfg.max_pixels, min_side=min_side),
                     workers=cfg.decode_workers, read_workers=cfg.read_workers, batch_size=cfg.batch_size,
                     in_processes=cfg.decode_processes, shared=ArrayField("pixels", (3, pre.crop, pre.crop))),
        *model_stages(clip, cfg, engine),
    ]


def model_stages(clip: LoadedClip, cfg: EmbedConfig, engine: Engine = LocalEngine()) -> list[Stage]:
    """One stage with the whole model or, with ``--pipeline-stages K``, the text tower then the
    image tower in K parts, each part a worker of its own owning only its layers. Parts work on
    consecutive micro-batches (the job's batch size) at once, like a bucket chain."""
    device = model_resources(cfg)
    if cfg.pipeline_stages == 1:
        return [Stage("embed", SharedSetup(partial(EmbedBatch, clip)), batch_size=cfg.batch_size,
                      concurrency=cfg.model_replicas, resources=device)]
    from ..models.pipeline import split_vision

    # Measured once, on the kind of device the parts will run on, so that every worker gets the
    # same plain ranges.
    parts = engine.run_once(partial(split_vision, clip, cfg.pipeline_stages, cfg.batch_size), device)
    return [Stage("embed-text", partial(TextTowerBatch, clip), batch_size=cfg.batch_size,
                  resources=device),
            *(Stage(f"embed-vision-{i}", partial(ImagePartBatch, clip, layers),
                    batch_size=cfg.batch_size, resources=device) for i, layers in enumerate(parts))]


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
        images = _where_present([r.pixels for r in batch],
                                self.embedder.embed_images)
        texts = _where_present([r.tokens for r in batch], self.embedder.embed_texts)
        return [_scored(r, image_embedding=i, text_embedding=t) for r, i, t in zip(batch, images, texts)]


class TextTowerBatch:
    """A pipelined embed's first model stage: the text tower alone; images pass on untouched."""

    def __init__(self, clip: LoadedClip):
        from ..models.pipeline import text_embedder

        self.embedder = text_embedder(clip)

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        texts = _where_present([r.tokens for r in batch], self.embedder.embed_texts)
        return [r if v is None else replace(r, tokens=None, outputs={**r.outputs, "text_embedding": v})
                for r, v in zip(batch, texts)]


class ImagePartBatch:
    """One part of a pipelined image tower: pixels or the previous part's ``hidden`` in, ``hidden``
    out; the last part turns every record into its ``Scored`` row, as ``EmbedBatch`` does."""

    def __init__(self, clip: LoadedClip, layers: range):
        from ..models.pipeline import VisionPart

        self.part = VisionPart(clip, layers)

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
    return Scored(id=r.id, uri=r.uri, text=r.text, width=r.width, height=r.height, outputs=outputs)


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
        mask = pa.array([v is None for v in rows], pa.bool_())
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
