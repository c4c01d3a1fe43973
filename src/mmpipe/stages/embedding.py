"""The embedding stage list: reading and decoding, then an embedder (any family), whole or split
into pipeline parts, built from ``EmbeddingOptions`` (the embed job and the server map their
own configs onto them)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, TypeVar

from ..decode.image import DEFAULT_MAX_PIXELS
from ..models import LoadedEmbedder
from ..models.embedder import check_device
from ..stage import ArrayField, DeviceSetups, Resources, Stage
from .common import decode_stage
from .embedding_batches import EmbedBatch, ImagePartBatch, TextTowerBatch, preprocess
from .gpu_images import GpuDecoding

T = TypeVar("T")
# Runs a function once where the model stages run (``Engine.run_once``): here by default.
RunOnce = Callable[[Callable[[], T], Resources], T]


def run_here(fn: Callable[[], T], resources: Resources) -> T:
    return fn()


@dataclass(frozen=True)
class EmbeddingOptions:
    batch_size: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    # JPEG DCT-domain downscaling while decoding, and resizing only the crop (see
    # embedding_batches.image_crop); off for bit-exact reference preprocessing.
    fast_decode: bool = True
    decode_workers: int = 1
    decode_processes: bool = False
    read_workers: int = 8
    device: str = "cpu"
    # The GPUs of the local engine's model workers (with device cuda and none named: all visible).
    devices: tuple[str, ...] | None = None
    # Model workers per device sharing one copy of the weights (see models.device_feed).
    model_replicas: int = 1
    # Split the image tower into this many consecutive parts, one worker (device) each.
    pipeline_stages: int = 1
    local_engine: bool = True  # the model workers run in this process (not on Ray actors)


def model_devices(options: EmbeddingOptions) -> list[str]:
    """The devices of the model workers: ``devices``, every visible GPU for a local cuda, else
    the one device (on Ray, each actor's own)."""
    if options.devices:
        for device in options.devices:
            check_device(device, flag="--devices")
        return list(options.devices)
    if options.device == "cuda" and options.local_engine:
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [options.device]


def model_resources(options: EmbeddingOptions) -> Resources:
    """A model worker's share of a device: with N replicas each takes 1/N of a GPU (on Ray, N
    actors on each GPU, each with its own weights; in this process they share one copy)."""
    return Resources(num_cpus=1, num_gpus=1 / options.model_replicas if options.device.startswith("cuda") else 0)


def embedding_stages(loaded: LoadedEmbedder, options: EmbeddingOptions, gpu: GpuDecoding | None = None,
                     run_once: RunOnce = run_here) -> list[Stage]:
    """Reading and decoding in worker processes (or threads), then the model. Decode batches
    are the model's: a worker process fills one slab per batch, which the model reads as it
    lies. With ``gpu``, JPEGs the GPU can take travel as bytes and are decoded there."""
    pre = loaded.preprocessor
    return [
        decode_stage(partial(preprocess, pre=pre, max_pixels=options.max_pixels, fast=options.fast_decode,
                             gpu_jpegs=gpu is not None),
                     workers=options.decode_workers, read_workers=options.read_workers,
                     batch_size=options.batch_size, in_processes=options.decode_processes,
                     shared=ArrayField("pixels", (3, pre.crop, pre.crop))),
        *model_stages(loaded, options, gpu, run_once),
    ]


def model_stages(loaded: LoadedEmbedder, options: EmbeddingOptions, gpu: GpuDecoding | None = None,
                 run_once: RunOnce = run_here) -> list[Stage]:
    """One stage with the whole model, ``model_replicas`` workers on each device (every GPU of
    the node with device cuda) or, with ``pipeline_stages`` K, the text tower then the image
    tower in K parts, each part a worker of its own owning only its layers. Parts work on
    consecutive micro-batches (the batch size) at once, like a bucket chain."""
    device = model_resources(options)
    if options.pipeline_stages == 1:
        devices = model_devices(options)
        return [Stage("embed", DeviceSetups(partial(EmbedBatch, loaded, gpu), devices),
                      batch_size=options.batch_size, concurrency=len(devices) * options.model_replicas,
                      resources=device)]
    from ..models.pipeline import split_vision

    # Measured once, on the kind of device the parts will run on, so that every worker gets the
    # same plain ranges.
    parts = run_once(partial(split_vision, loaded, options.pipeline_stages, options.batch_size), device)
    return [Stage("embed-text", partial(TextTowerBatch, loaded), batch_size=options.batch_size,
                  resources=device),
            *(Stage(f"embed-vision-{i}", partial(ImagePartBatch, loaded, layers),
                    batch_size=options.batch_size, resources=device) for i, layers in enumerate(parts))]
