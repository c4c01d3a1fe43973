"""The embedding job: items → read + decode + preprocess → CLIP towers → Parquet shards."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..engine import Engine, LocalEngine, make_engine
from ..models import DEFAULT_CLIP, load_clip
from ..models.clip import LoadedClip, check_device
from ..models.variants import ClipVariant, Precision, Runtime, Variant
from ..records import Record
from ..sources import open_source
from ..stage import ArrayField, DeviceSetups, Resources, Stage
from ..stages.clip_embedding import EmbedBatch, ImagePartBatch, TextTowerBatch, crop_only, preprocess
from ..stages.common import decode_stage
from ..stages.gpu_images import MIN_AGREEMENT, GpuDecoding, agreement
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
    # JPEG DCT-domain downscaling while decoding, and resizing only the crop (see
    # stages.clip_embedding.image_crop); off for bit-exact reference preprocessing.
    fast_decode: bool = True
    # Split the image tower into this many consecutive parts, one worker (device) each.
    pipeline_stages: int = Field(1, ge=1, le=64)
    # Model workers per device sharing one copy of the weights (see models.device_feed).
    model_replicas: int = Field(1, ge=1, le=16)
    # Where JPEGs are decoded: cuda is nvJPEG on the model's GPU (stages.gpu_images); auto picks
    # it when the model is on CUDA and a GPU JPEG decoder is installed.
    decode_device: Literal["auto", "cpu", "cuda"] = "auto"
    # The GPUs of the local engine's model workers (default with --device cuda: all visible).
    devices: list[str] | None = None

    @field_validator("devices", mode="before")
    @classmethod
    def _device_list(cls, value):
        if isinstance(value, str):
            value = [d.strip() for d in value.split(",") if d.strip()]
        if value is not None and (not value or any(not d.startswith("cuda:") for d in value)):
            raise ValueError("expected CUDA devices such as cuda:0,cuda:2")
        return value

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
        if self.devices and not self.device.startswith("cuda"):
            if self.device != "cpu":
                raise ConfigError("--devices", f"lists GPUs; it does not combine with --device {self.device}")
            self.device = "cuda"  # --devices alone says where the model runs
        if self.devices and (self.engine != "local" or self.pipeline_stages > 1):
            raise ConfigError("--devices", "spreads the local engine's model workers over GPUs; on Ray "
                                           "each actor has a GPU of its own, and pipeline parts one each")
        if self.decode_device == "cuda" and not self.device.startswith("cuda"):
            raise ConfigError("--decode-device", "cuda decodes JPEGs on the model's GPU: it needs "
                                                 "--device cuda")
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
    model_devices(cfg)  # a GPU named in --devices that is not there stops the job here, by that flag
    engine = make_engine(cfg.engine, cfg.ray_address)
    clip = gated_clip(cfg, engine)
    gpu = gpu_decoding(cfg, clip)
    decode = {"device": "cuda" if gpu else "cpu", "fast": cfg.fast_decode,
              "processes": cfg.decode_processes and cfg.engine == "local"}
    if gpu:
        decode["agreement"] = checked_agreement(clip, gpu, cfg, engine)
    job = JobSpec(
        label="embed",
        # INPUT too: resuming another input into the same folder would mix two jobs' rows.
        signature={"job": "embed", "input": cfg.input, "model": str(clip.spec),
                   "precision": cfg.precision, "runtime": cfg.runtime},
        items=open_source(cfg.input, cfg.source_options()),
        stages=embed_stages(clip, cfg, engine, gpu),
        to_table=lambda records: embeddings_table(records, clip.dim),
        manifest={"job": "embed", "model": str(clip.spec), "random_weights": clip.spec.random_weights,
                  "dimension": clip.dim, "precision": cfg.precision, "variant": clip.describe(),
                  "decode": decode, "input": cfg.input,
                  "columns": [f.name for f in embedding_schema(clip.dim)]},
    )
    return run_job(job, Path(cfg.out), shard_size=cfg.shard_size, limit=cfg.limit,
                   overwrite=cfg.overwrite, progress=progress, engine=engine,
                   price_per_hour=cfg.price_per_hour)


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


def gpu_decoding(cfg: EmbedConfig, clip: LoadedClip) -> GpuDecoding | None:
    """How the model workers decode JPEGs on their GPU, or None: the CPU decodes everything."""
    if cfg.decode_device == "cpu" or not cfg.device.startswith("cuda"):
        return None
    from ..decode.gpu import nvjpeg_backend

    backend = nvjpeg_backend()
    if backend is None:
        if cfg.decode_device == "cuda":
            raise ConfigError("--decode-device", "no GPU JPEG decoder can be imported here: install "
                                                 "torchvision built for this torch, or nvidia-nvimgcodec-cu12")
        return None
    pre = clip.preprocessor
    return GpuDecoding(backend, pre.resize_to, pre.crop,
                       partial(crop_only, pre=pre, max_pixels=cfg.max_pixels, fast=cfg.fast_decode))


def checked_agreement(clip: LoadedClip, gpu: GpuDecoding, cfg: EmbedConfig, engine: Engine) -> dict:
    """GPU decoding's vectors against the CPU path's on the evaluation set, measured where the
    model runs; refused below MIN_AGREEMENT mean cosine."""
    measured = engine.run_once(partial(_agreement, clip, gpu), model_resources(cfg))
    if measured["mean_cosine"] < MIN_AGREEMENT:
        raise ConfigError("--decode-device", f"vectors from GPU-decoded images have mean cosine "
                                             f"{measured['mean_cosine']} to the CPU path's (< {MIN_AGREEMENT}) "
                                             "on the evaluation set; use --decode-device cpu")
    return measured


def _agreement(clip: LoadedClip, gpu: GpuDecoding) -> dict:
    return agreement(gpu.on(clip.device), clip.make_embedder().embed_images)


def model_devices(cfg: EmbedConfig) -> list[str]:
    """The devices of the model workers: --devices, every visible GPU for a local --device cuda,
    else the one --device (on Ray, each actor's own)."""
    if cfg.devices:
        for device in cfg.devices:
            check_device(device, flag="--devices")
        return cfg.devices
    if cfg.device == "cuda" and cfg.engine == "local":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [cfg.device]


def model_resources(cfg: EmbedConfig) -> Resources:
    """A model worker's share of a device: with N replicas each takes 1/N of a GPU (on Ray, N
    actors on each GPU, each with its own weights; in this process they share one copy)."""
    return Resources(num_cpus=1, num_gpus=1 / cfg.model_replicas if cfg.device.startswith("cuda") else 0)


def embed_stages(clip: LoadedClip, cfg: EmbedConfig, engine: Engine = LocalEngine(),
                 gpu: GpuDecoding | None = None) -> list[Stage]:
    """Reading and decoding in worker processes (or threads), then the model. Decode batches
    are the model's: a worker process fills one slab per batch, which the model reads as it
    lies. With ``gpu``, JPEGs the GPU can take travel as bytes and are decoded there."""
    pre = clip.preprocessor
    return [
        decode_stage(partial(preprocess, pre=pre, max_pixels=cfg.max_pixels, fast=cfg.fast_decode,
                             gpu_jpegs=gpu is not None),
                     workers=cfg.decode_workers, read_workers=cfg.read_workers, batch_size=cfg.batch_size,
                     in_processes=cfg.decode_processes, shared=ArrayField("pixels", (3, pre.crop, pre.crop))),
        *model_stages(clip, cfg, engine, gpu),
    ]


def model_stages(clip: LoadedClip, cfg: EmbedConfig, engine: Engine = LocalEngine(),
                 gpu: GpuDecoding | None = None) -> list[Stage]:
    """One stage with the whole model, ``--model-replicas`` workers on each device (every GPU of
    the node with --device cuda) or, with ``--pipeline-stages K``, the text tower then the
    image tower in K parts, each part a worker of its own owning only its layers. Parts work on
    consecutive micro-batches (the job's batch size) at once, like a bucket chain."""
    device = model_resources(cfg)
    if cfg.pipeline_stages == 1:
        devices = model_devices(cfg)
        return [Stage("embed", DeviceSetups(partial(EmbedBatch, clip, gpu), devices), batch_size=cfg.batch_size,
                      concurrency=len(devices) * cfg.model_replicas, resources=device)]
    from ..models.pipeline import split_vision

    # Measured once, on the kind of device the parts will run on, so that every worker gets the
    # same plain ranges.
    parts = engine.run_once(partial(split_vision, clip, cfg.pipeline_stages, cfg.batch_size), device)
    return [Stage("embed-text", partial(TextTowerBatch, clip), batch_size=cfg.batch_size,
                  resources=device),
            *(Stage(f"embed-vision-{i}", partial(ImagePartBatch, clip, layers),
                    batch_size=cfg.batch_size, resources=device) for i, layers in enumerate(parts))]


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
