"""The embedding job: items → read + decode + preprocess → an embedder's towers (CLIP, SigLIP)
→ Parquet shards."""

from __future__ import annotations

import threading
from functools import partial
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from ..config import default
from ..errors import ConfigError
from ..engine import Engine, make_engine
from ..models import DEFAULT_CLIP, LoadedEmbedder, load_embedder
from ..models.accuracy import Gate
from ..models.gate import gated_embedder
from ..models.variants import EmbedderVariant, Precision, Runtime, Variant
from ..records import Record
from ..stages.embedding import EmbeddingOptions, embedding_stages, model_devices, model_resources
from ..stages.embedding_batches import crop_only
from ..stages.gpu_images import MIN_AGREEMENT, GpuDecoding, agreement
from .config import JobConfig
from .runner import JobResult, JobSpec
from .start import job_input, run_configured


class EmbedConfig(JobConfig):
    """Every option of ``mmpipe embed``; field names are the CLI flags with dashes."""

    model: str = DEFAULT_CLIP
    batch_size: int = Field(16, ge=1, le=4096)
    precision: Precision = "fp32"
    runtime: Runtime = "eager"
    # The accuracy gate: a variant whose vectors' mean cosine to eager fp32 is lower is refused.
    min_cosine: float = Field(default(Gate, "min_mean_cosine"), ge=-1, le=1)
    # JPEG DCT-domain downscaling while decoding, and resizing only the crop (see
    # stages.embedding_batches.image_crop); off for bit-exact reference preprocessing.
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


def embed(input: str, out: str, *, progress: bool | None = None, stop: threading.Event | None = None,
          **options) -> JobResult:
    """Embed every image and caption of ``input`` into Parquet shards under ``out``.

    Options are the fields of ``EmbedConfig``. Re-running with the same ``out`` resumes. With
    ``follow=True`` it keeps embedding a folder's new files, or a Kafka topic's messages, until
    SIGTERM, Ctrl-C or ``stop`` is set (from any thread).
    """
    cfg = EmbedConfig.build(input=input, out=out, **options)
    stage_options = embedding_options(cfg)
    model_devices(stage_options)  # a GPU named in --devices that is not there stops the job here, by that flag
    engine = make_engine(cfg.engine, cfg.ray_address)
    model = gated_model(cfg, engine)
    gpu = gpu_decoding(cfg, model)
    decode = {"device": "cuda" if gpu else "cpu", "fast": cfg.fast_decode,
              "processes": cfg.decode_processes and cfg.engine == "local"}
    if gpu:
        decode["agreement"] = checked_agreement(model, gpu, cfg, engine)
    job = JobSpec(
        label="embed",
        # INPUT too: resuming another input into the same folder would mix two jobs' rows.
        signature={"job": "embed", "input": cfg.input, "model": str(model.spec),
                   "precision": cfg.precision, "runtime": cfg.runtime},
        items=job_input(cfg),
        stages=embedding_stages(model, stage_options, gpu, engine.run_once),
        to_table=lambda records: embeddings_table(records, model.dim),
        manifest={"job": "embed", "model": str(model.spec), "random_weights": model.spec.random_weights,
                  "dimension": model.dim, "precision": cfg.precision, "variant": model.describe(),
                  "decode": decode, "input": cfg.input,
                  "columns": [f.name for f in embedding_schema(model.dim)]},
    )
    return run_configured(job, cfg, engine, progress, stop=stop)


def embedding_options(cfg: EmbedConfig) -> EmbeddingOptions:
    return EmbeddingOptions(
        batch_size=cfg.batch_size, max_pixels=cfg.max_pixels, fast_decode=cfg.fast_decode,
        decode_workers=cfg.decode_workers, decode_processes=cfg.decode_processes,
        read_workers=cfg.read_workers, device=cfg.device,
        devices=tuple(cfg.devices) if cfg.devices else None, model_replicas=cfg.model_replicas,
        pipeline_stages=cfg.pipeline_stages, local_engine=cfg.engine == "local")


def gated_model(cfg: EmbedConfig, engine: Engine) -> EmbedderVariant:
    """The job's embedder as its ``--precision``/``--runtime`` variant, measured against eager
    fp32 and refused below the gate (models.gate) where the model stages run: a GPU node when
    they need one."""
    loaded = load_embedder(cfg.model, cfg.device, cfg.variant.weights_precision, cfg.allow_pickle,
                           device_here=cfg.engine == "local")
    resources = model_resources(embedding_options(cfg))
    return gated_embedder(loaded, cfg.variant, cfg.gate, cfg.batch_size,
                          partial(engine.run_once, resources=resources))


def gpu_decoding(cfg: EmbedConfig, model: LoadedEmbedder) -> GpuDecoding | None:
    """How the model workers decode JPEGs on their GPU, or None: the CPU decodes everything.
    The GPU makes centre crops only: a model that squeezes the whole image (SigLIP) decodes on
    the CPU."""
    if cfg.decode_device == "cpu" or not cfg.device.startswith("cuda"):
        return None
    if not model.preprocessor.centre_crop:
        if cfg.decode_device == "cuda":
            raise ConfigError("--decode-device", f"the GPU decoder makes centre crops; {model.spec} "
                                                 "resizes whole images: use --decode-device cpu")
        return None
    from ..decode.gpu import nvjpeg_backend

    backend = nvjpeg_backend()
    if backend is None:
        if cfg.decode_device == "cuda":
            raise ConfigError("--decode-device", "no GPU JPEG decoder can be imported here: install "
                                                 "torchvision built for this torch, or nvidia-nvimgcodec-cu12")
        return None
    pre = model.preprocessor
    return GpuDecoding(backend, pre.resize_to, pre.crop,
                       partial(crop_only, pre=pre, max_pixels=cfg.max_pixels, fast=cfg.fast_decode))


def checked_agreement(model: LoadedEmbedder, gpu: GpuDecoding, cfg: EmbedConfig, engine: Engine) -> dict:
    """GPU decoding's vectors against the CPU path's on the evaluation set, measured where the
    model runs; refused below MIN_AGREEMENT mean cosine."""
    measured = engine.run_once(partial(_agreement, model, gpu), model_resources(embedding_options(cfg)))
    if measured["mean_cosine"] < MIN_AGREEMENT:
        raise ConfigError("--decode-device", f"vectors from GPU-decoded images have mean cosine "
                                             f"{measured['mean_cosine']} to the CPU path's (< {MIN_AGREEMENT}) "
                                             "on the evaluation set; use --decode-device cpu")
    return measured


def _agreement(model: LoadedEmbedder, gpu: GpuDecoding) -> dict:
    return agreement(gpu.on(model.device), model.make_embedder().embed_images)


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
