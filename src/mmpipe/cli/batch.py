"""The batch jobs: `mmpipe embed`, `mmpipe moderate` and `mmpipe demo`."""

from __future__ import annotations

from typing import Optional

import typer

from ..config import default
from ..extras import require
from ..jobs.config import with_config_file
from ..jobs.embed import EmbedConfig
from ..jobs.moderate import ModerateConfig
from ..models.spec import DEFAULT_CLIP
from ..models.variants import PRECISION_HELP, RUNTIME_HELP
from .common import (
    CONFIG_HELP,
    auto,
    err,
    given,
    following,
    parse_storage_options,
    print_moderation,
    print_summary,
)

FOLLOW_HELP = ("Keep following INPUT (a folder or fsspec prefix: files that appear later, and those not "
               "yet committed; or a topic, kafka://HOST:PORT[,HOST:PORT]/TOPIC?group=NAME[&consumer=NAME]), "
               "each item exactly once, until SIGTERM or Ctrl-C (which commits what is in flight).")
STORAGE_OPTION_HELP = ("KEY=VALUE (repeatable): an fsspec storage option (endpoint_url=http://…), or for a "
                       "kafka:// INPUT a librdkafka setting (security.protocol=SASL_SSL).")
KAFKA_VALUE_HELP = ("With a kafka:// INPUT: each message's value is json (an object with id, image path or "
                    "URL, image_b64, text) or raw (the image's bytes); its key is the item id.")
SHARD_SECONDS_HELP = "With --follow: commit a shard at most this many seconds after its first row."
SETTLE_HELP = ("With --follow: read a file only once its size has stayed the same for this many "
               "seconds (a file still being written is never read half-way).")
POLL_HELP = "With --follow: list INPUT again every this many seconds."
METRICS_PORT_HELP = ("With --follow: serve Prometheus metrics (lag, latency histogram, items and errors "
                     "by kind) at http://0.0.0.0:PORT/metrics; 0 picks a free port (_manifest.json "
                     "says which).")
EMIT_HELP = ("With --follow: send each item's decision (id, action, flagged, category scores, reasons, "
             "segments, error) as JSON keyed by its id to kafka://HOST:PORT[,HOST:PORT]/TOPIC once its "
             "shard is committed; at least once, so consumers dedupe by key.")


def embed(
    ctx: typer.Context,
    input: str = typer.Argument(..., help="Folder, glob, manifest (.csv/.jsonl/.parquet), .tar shards, "
                                          "or an fsspec URL (s3://…) of any of these."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder for part-*.parquet shards."),
    config: Optional[str] = typer.Option(None, help=CONFIG_HELP),
    model: str = typer.Option(default(EmbedConfig, "model"), help="hf:<repo-or-dir>, "
                              "path:<dir> (local safetensors checkpoint) or random:ViT-B-32 (benchmarks)."),
    batch_size: int = typer.Option(default(EmbedConfig, "batch_size"),
                                   help="Images (and texts) per forward pass."),
    decode_workers: Optional[int] = typer.Option(None, help="Workers reading, decoding and preprocessing "
                                                 "images (default: one per usable core)."),
    decode_processes: bool = typer.Option(default(EmbedConfig, "decode_processes"),
                                          help="Decode in worker processes that write finished "
                                               "crops into shared memory, so that this process only feeds the "
                                               "model (and a decoder crash costs one error row); "
                                               "--no-decode-processes: threads in this process."),
    read_workers: int = typer.Option(default(EmbedConfig, "read_workers"),
                                     help="Threads per decode worker reading URLs and object stores."),
    device: str = typer.Option(default(EmbedConfig, "device"), help="cpu, cuda or cuda:N."),
    precision: str = typer.Option(default(EmbedConfig, "precision"), help=PRECISION_HELP + "."),
    runtime: str = typer.Option(default(EmbedConfig, "runtime"), help=RUNTIME_HELP + "."),
    min_cosine: float = typer.Option(default(EmbedConfig, "min_cosine"),
                                     help="Accuracy gate: refuse a variant whose vectors' mean cosine "
                                          "to eager fp32 on a fixed evaluation set is lower."),
    limit: Optional[int] = typer.Option(None, help="Only the first N items of INPUT."),
    overwrite: bool = typer.Option(default(EmbedConfig, "overwrite"),
                                   help="Replace earlier output in --out instead of resuming."),
    shard_size: int = typer.Option(default(EmbedConfig, "shard_size"), help="Rows per Parquet shard."),
    follow: bool = typer.Option(default(EmbedConfig, "follow"), help=FOLLOW_HELP),
    shard_seconds: float = typer.Option(default(EmbedConfig, "shard_seconds"), help=SHARD_SECONDS_HELP),
    settle_s: float = typer.Option(default(EmbedConfig, "settle_s"), help=SETTLE_HELP),
    poll_s: float = typer.Option(default(EmbedConfig, "poll_s"), help=POLL_HELP),
    kafka_value: str = typer.Option(default(EmbedConfig, "kafka_value"), help=KAFKA_VALUE_HELP),
    metrics_port: Optional[int] = typer.Option(None, help=METRICS_PORT_HELP),
    id_column: Optional[str] = typer.Option(None, help="Manifest column with item ids."),
    image_column: Optional[str] = typer.Option(None, help="Manifest column with image paths or URLs."),
    text_column: Optional[str] = typer.Option(None, help="Manifest column with captions."),
    allow_private_urls: bool = typer.Option(default(EmbedConfig, "allow_private_urls"),
                                            help="Allow URLs to loopback/private addresses and file://."),
    max_pixels: int = typer.Option(default(EmbedConfig, "max_pixels"),
                                   help="Refuse images with more pixels (decompression bombs)."),
    max_bytes: int = typer.Option(default(EmbedConfig, "max_bytes"),
                                  help="Refuse input files larger than this."),
    fast_decode: bool = typer.Option(default(EmbedConfig, "fast_decode"),
                                     help="Let the JPEG decoder downscale large photos (faster)."),
    allow_pickle: bool = typer.Option(default(EmbedConfig, "allow_pickle"),
                                      help="Allow pickle (.bin) weights; they can run code."),
    storage_option: list[str] = typer.Option([], help=STORAGE_OPTION_HELP),
    pipeline_stages: int = typer.Option(default(EmbedConfig, "pipeline_stages"),
                                        help="Split the image tower into K parts balanced by measured "
                                             "layer time, one worker each, streaming micro-batches."),
    model_replicas: int = typer.Option(default(EmbedConfig, "model_replicas"),
                                       help="Model workers per device sharing one copy of the weights; "
                                            "on a GPU each has its own CUDA stream and pinned buffer, so one's "
                                            "copies overlap another's forward pass."),
    devices: Optional[str] = typer.Option(None, help="GPUs for the model workers, e.g. cuda:0,cuda:2 "
                                          "(default with --device cuda: every visible GPU, one worker "
                                          "each times --model-replicas, fed by one decode pool)."),
    decode_device: str = typer.Option(default(EmbedConfig, "decode_device"),
                                      help="cpu, cuda (JPEGs decoded with nvJPEG on the model's GPU; "
                                           "other formats and files it cannot take on the CPU) or auto "
                                           "(cuda when the model is on CUDA and a GPU JPEG decoder is "
                                           "installed)."),
    price_per_hour: Optional[float] = typer.Option(None, help="What the machine costs, USD an hour: "
                                                   "stats.json and the summary give the cost per million items."),
    engine: str = typer.Option(default(EmbedConfig, "engine"),
                               help="local (threads in this process) or ray (a Ray cluster)."),
    ray_address: Optional[str] = typer.Option(None, help="With --engine ray: auto, ray://HOST:10001, or "
                                              "none to join a running cluster or start a local one."),
    progress: Optional[bool] = typer.Option(None, help="Progress bar (default: on a terminal)."),
) -> None:
    """Embed images and captions with CLIP into Parquet shards (resumable)."""
    from ..jobs.embed import embed as run

    options = dict(input=input, out=out, model=model, batch_size=batch_size, decode_workers=decode_workers,
                 decode_processes=decode_processes, read_workers=read_workers, device=device,
                 precision=precision, runtime=runtime,
                 min_cosine=min_cosine, limit=limit,
                 overwrite=overwrite, shard_size=shard_size, id_column=id_column,
                 image_column=image_column, text_column=text_column,
                 allow_private_urls=allow_private_urls, max_pixels=max_pixels, max_bytes=max_bytes,
                 fast_decode=fast_decode, allow_pickle=allow_pickle, pipeline_stages=pipeline_stages,
                 model_replicas=model_replicas, engine=engine, ray_address=ray_address,
                 devices=devices, decode_device=decode_device, price_per_hour=price_per_hour,
                 follow=follow, shard_seconds=shard_seconds, settle_s=settle_s, poll_s=poll_s, kafka_value=kafka_value,
                 metrics_port=metrics_port,
                 storage_options=parse_storage_options(storage_option))
    options = with_config_file(EmbedConfig, config, auto(options), given(ctx))
    with following(bool(options.get("follow"))):
        result = run(progress=progress, **options)
    print_summary("embedded", result)


def moderate(
    ctx: typer.Context,
    input: str = typer.Argument(..., help="Folder (images, videos, .txt texts), glob, manifest "
                                          "(.csv/.jsonl/.parquet), .tar shards, or an fsspec URL."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder: part-*.parquet, review.jsonl, report.html."),
    config: Optional[str] = typer.Option(None, help=CONFIG_HELP),
    policy: Optional[str] = typer.Option(None, help="Policy YAML (categories, thresholds, word lists, "
                                         "escalation). Default: the policy shipped with mmpipe."),
    clip_model: Optional[str] = typer.Option(None, help="CLIP checkpoint for zero-shot (source: clip) "
                                             "categories, e.g. path:DIR."),
    fps: float = typer.Option(default(ModerateConfig, "fps"), help="Video frames sampled per second."),
    max_frames: int = typer.Option(default(ModerateConfig, "max_frames"),
                                   help="At most this many frames per video (longer videos are capped)."),
    max_side: int = typer.Option(default(ModerateConfig, "max_side"),
                                 help="Frames are scaled down to this long side before the models."),
    ocr: bool = typer.Option(default(ModerateConfig, "ocr"),
                             help="Read text in images and video frames (PP-OCR) and moderate it."),
    ocr_workers: int = typer.Option(default(ModerateConfig, "ocr_workers"),
                                    help="OCR readers in parallel (OCR is the slowest model)."),
    escalate: Optional[bool] = typer.Option(None, help="Send uncertain items to the policy's LLM judge "
                                            "(default: as the policy says)."),
    judge_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL of the judge (…/v1)."),
    batch_size: int = typer.Option(default(ModerateConfig, "batch_size"),
                                   help="Items per open_nsfw / CLIP batch."),
    nsfw_precision: str = typer.Option(default(ModerateConfig, "nsfw_precision"),
                                       help="open_nsfw precision: fp32, or int8 (quantised "
                                            "by onnxruntime, cached, refused if its decisions at the "
                                            "policy's thresholds flip on more than 0.5% of a fixed "
                                            "evaluation set)."),
    decode_workers: Optional[int] = typer.Option(None, help="Workers reading and decoding images, videos "
                                                 "and texts (default: one per usable core)."),
    decode_processes: bool = typer.Option(default(ModerateConfig, "decode_processes"),
                                          help="Decode in worker processes, so that this process "
                                               "only feeds the models (and a decoder crash costs one error "
                                               "row); --no-decode-processes: threads in this process."),
    read_workers: int = typer.Option(default(ModerateConfig, "read_workers"),
                                     help="Threads per decode worker reading URLs and object stores."),
    model_threads: int = typer.Option(default(ModerateConfig, "model_threads"),
                                      help="Threads per model (ONNX Runtime intra-op)."),
    price_per_hour: Optional[float] = typer.Option(None, help="What the machine costs, USD an hour: "
                                                   "stats.json and the summary give the cost per million items."),
    limit: Optional[int] = typer.Option(None, help="Only the first N items of INPUT."),
    overwrite: bool = typer.Option(default(ModerateConfig, "overwrite"),
                                   help="Replace earlier output in --out instead of resuming."),
    shard_size: int = typer.Option(default(ModerateConfig, "shard_size"), help="Rows per Parquet shard."),
    follow: bool = typer.Option(default(ModerateConfig, "follow"), help=FOLLOW_HELP),
    shard_seconds: float = typer.Option(default(ModerateConfig, "shard_seconds"), help=SHARD_SECONDS_HELP),
    settle_s: float = typer.Option(default(ModerateConfig, "settle_s"), help=SETTLE_HELP),
    poll_s: float = typer.Option(default(ModerateConfig, "poll_s"), help=POLL_HELP),
    kafka_value: str = typer.Option(default(ModerateConfig, "kafka_value"), help=KAFKA_VALUE_HELP),
    metrics_port: Optional[int] = typer.Option(None, help=METRICS_PORT_HELP),
    emit: Optional[str] = typer.Option(None, help=EMIT_HELP),
    id_column: Optional[str] = typer.Option(None, help="Manifest column with item ids."),
    image_column: Optional[str] = typer.Option(None, help="Manifest column with image/video paths or URLs."),
    text_column: Optional[str] = typer.Option(None, help="Manifest column with texts."),
    allow_private_urls: bool = typer.Option(default(ModerateConfig, "allow_private_urls"),
                                            help="Allow URLs to loopback/private addresses and file://."),
    max_pixels: int = typer.Option(default(ModerateConfig, "max_pixels"),
                                   help="Refuse images/frames with more pixels."),
    max_bytes: int = typer.Option(default(ModerateConfig, "max_bytes"),
                                  help="Refuse input files larger than this."),
    storage_option: list[str] = typer.Option([], help=STORAGE_OPTION_HELP),
    engine: str = typer.Option(default(ModerateConfig, "engine"),
                               help="local (threads in this process) or ray (a Ray cluster)."),
    ray_address: Optional[str] = typer.Option(None, help="With --engine ray: auto, ray://HOST:10001, or "
                                              "none to join a running cluster or start a local one."),
    progress: Optional[bool] = typer.Option(None, help="Progress bar (default: on a terminal)."),
) -> None:
    """Moderate images, videos and texts with a policy: scores, allow/review/block, report."""
    require("mmpipe moderate", "moderate")
    from ..jobs.moderate import moderate as run

    options = dict(input=input, out=out, policy=policy, clip_model=clip_model, fps=fps, max_frames=max_frames,
                 max_side=max_side, ocr=ocr, ocr_workers=ocr_workers, escalate=escalate,
                 judge_url=judge_url, nsfw_precision=nsfw_precision,
                 batch_size=batch_size, decode_workers=decode_workers, decode_processes=decode_processes,
                 read_workers=read_workers,
                 model_threads=model_threads, price_per_hour=price_per_hour, limit=limit, overwrite=overwrite,
                 shard_size=shard_size, id_column=id_column, image_column=image_column,
                 text_column=text_column, allow_private_urls=allow_private_urls,
                 max_pixels=max_pixels, max_bytes=max_bytes, engine=engine, ray_address=ray_address,
                 follow=follow, shard_seconds=shard_seconds, settle_s=settle_s, poll_s=poll_s, kafka_value=kafka_value,
                 metrics_port=metrics_port, emit=emit,
                 storage_options=parse_storage_options(storage_option))
    options = with_config_file(ModerateConfig, config, auto(options), given(ctx))
    with following(bool(options.get("follow"))):
        result = run(progress=progress, **options)
    print_summary("moderated", result)
    print_moderation(result)


def demo(
    out: str = typer.Option("demo_out", "--out", "-o", help="Folder for the sample set and the outputs."),
    n: int = typer.Option(120, "--n", min=1, help="How many sample photos to make."),
    model: str = typer.Option(DEFAULT_CLIP,
                              help="CLIP model for the embedding step; the default falls back to "
                                   "random:ViT-B-32 when it cannot be loaded (offline)."),
    moderation: bool = typer.Option(True, help="Run the moderation step (real offline models)."),
    overwrite: bool = typer.Option(False, help="Replace earlier output instead of resuming."),
    progress: Optional[bool] = typer.Option(None, help="Progress bar (default: on a terminal)."),
) -> None:
    """Make a sample set (photos, text images, videos, comments), moderate it, embed the photos."""
    require("mmpipe demo", "moderate", "samples")
    from ..demo import describe_output, run_demo

    result = run_demo(out, n=n, model=model, progress=progress, overwrite=overwrite,
                      moderation=moderation, notify=lambda line: err.print(line, markup=False))
    if result.moderation is not None:
        print_summary("moderated", result.moderation)
        print_moderation(result.moderation)
    print_summary("embedded", result.job)
    for line in describe_output(result):
        err.print(line, markup=False)
