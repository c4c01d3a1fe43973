"""The command line: parses flags, calls the library, prints one summary. Nothing else."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console
# typer vendors its own click; its exception classes are only reachable here.
from typer._click.core import ParameterSource
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from .config import default
from .errors import MmpipeError
from .extras import missing_extra, require
from .jobs.config import with_config_file
from .jobs.embed import EmbedConfig
from .jobs.moderate import ModerateConfig
from .jobs.runner import JobResult
from .models.spec import DEFAULT_CLIP
from .models.variants import PRECISION_HELP, RUNTIME_HELP
from .serve.config import Embeddings, Moderation, ServeConfig
from .serve.route_config import RouteConfig
from .tune.sweep import TuneOptions

# What each task of `mmpipe tune` runs needs, beyond the tune extra.
TUNE_EXTRAS = {"moderate": ("moderate",), "serve": ("serve",)}

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multimodal inference at scale: embed and moderate images and text.")
err = Console(stderr=True, highlight=False, soft_wrap=True)
CONFIG_HELP = ("YAML mapping of this command's options (names with underscores, e.g. batch_size: 32), "
               "such as the best.yaml of 'mmpipe tune'; flags given here win over it.")


@app.callback()
def _root() -> None:
    """Multimodal inference at scale: embed and moderate images and text."""


@app.command()
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
    storage_option: list[str] = typer.Option([], help="fsspec storage option KEY=VALUE (repeatable), "
                                             "e.g. endpoint_url=http://…"),
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
    from .jobs.embed import embed as run

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
                 storage_options=parse_storage_options(storage_option))
    result = run(progress=progress, **with_config_file(EmbedConfig, config, auto(options), given(ctx)))
    print_summary("embedded", result)


@app.command()
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
    id_column: Optional[str] = typer.Option(None, help="Manifest column with item ids."),
    image_column: Optional[str] = typer.Option(None, help="Manifest column with image/video paths or URLs."),
    text_column: Optional[str] = typer.Option(None, help="Manifest column with texts."),
    allow_private_urls: bool = typer.Option(default(ModerateConfig, "allow_private_urls"),
                                            help="Allow URLs to loopback/private addresses and file://."),
    max_pixels: int = typer.Option(default(ModerateConfig, "max_pixels"),
                                   help="Refuse images/frames with more pixels."),
    max_bytes: int = typer.Option(default(ModerateConfig, "max_bytes"),
                                  help="Refuse input files larger than this."),
    storage_option: list[str] = typer.Option([], help="fsspec storage option KEY=VALUE (repeatable)."),
    engine: str = typer.Option(default(ModerateConfig, "engine"),
                               help="local (threads in this process) or ray (a Ray cluster)."),
    ray_address: Optional[str] = typer.Option(None, help="With --engine ray: auto, ray://HOST:10001, or "
                                              "none to join a running cluster or start a local one."),
    progress: Optional[bool] = typer.Option(None, help="Progress bar (default: on a terminal)."),
) -> None:
    """Moderate images, videos and texts with a policy: scores, allow/review/block, report."""
    require("mmpipe moderate", "moderate")
    from .jobs.moderate import moderate as run

    options = dict(input=input, out=out, policy=policy, clip_model=clip_model, fps=fps, max_frames=max_frames,
                 max_side=max_side, ocr=ocr, ocr_workers=ocr_workers, escalate=escalate,
                 judge_url=judge_url, nsfw_precision=nsfw_precision,
                 batch_size=batch_size, decode_workers=decode_workers, decode_processes=decode_processes,
                 read_workers=read_workers,
                 model_threads=model_threads, price_per_hour=price_per_hour, limit=limit, overwrite=overwrite,
                 shard_size=shard_size, id_column=id_column, image_column=image_column,
                 text_column=text_column, allow_private_urls=allow_private_urls,
                 max_pixels=max_pixels, max_bytes=max_bytes, engine=engine, ray_address=ray_address,
                 storage_options=parse_storage_options(storage_option))
    result = run(progress=progress, **with_config_file(ModerateConfig, config, auto(options), given(ctx)))
    print_summary("moderated", result)
    print_moderation(result)


@app.command()
def serve(
    config: Optional[str] = typer.Option(None, help="Serve config YAML (models, batching, replicas, limits)."),
    host: Optional[str] = typer.Option(None, help="Address to listen on "
                                                  f"(default: {default(ServeConfig, 'host')})."),
    port: Optional[int] = typer.Option(None, help=f"Port (default: {default(ServeConfig, 'port')})."),
    policy: Optional[str] = typer.Option(None, help="Moderation policy YAML (default: the shipped policy)."),
    embedding_model: Optional[str] = typer.Option(
        None, help="CLIP model for /v1/embeddings: path:DIR, hf:REPO or random:ViT-B-32 (default: none)."),
    search_index: Optional[str] = typer.Option(
        None, help="Index folder (made by 'mmpipe index') for /v1/search; its model also serves "
                   "/v1/embeddings unless --embedding-model names one (default: none)."),
    max_batch_size: Optional[int] = typer.Option(None, help="Largest dynamic batch (default: "
                                                 f"{default(Moderation, 'max_batch_size')}, embeddings "
                                                 f"{default(Embeddings, 'max_batch_size')})."),
    max_wait_ms: Optional[float] = typer.Option(None, help="How long a request waits for others "
                                                f"(default: {default(Moderation, 'max_wait_ms'):g})."),
    replicas: Optional[int] = typer.Option(None, help="Workers sharing one copy of the weights "
                                           f"(default: {default(Moderation, 'replicas')})."),
    max_inflight_per_replica: Optional[int] = typer.Option(
        None, help="Requests one batch may hold (1: one at a time) (default: no limit)."),
) -> None:
    """Serve /v1/moderations and /v1/embeddings (OpenAI schema), and /v1/search, with the batch
    jobs' models."""
    require("mmpipe serve", "serve")
    import uvicorn

    from .serve.app import create_app
    from .serve.config import load_serve_config

    cfg = load_serve_config(config, host=host, port=port, policy=policy, embedding_model=embedding_model,
                            search_index=search_index, max_batch_size=max_batch_size,
                            max_wait_ms=max_wait_ms, replicas=replicas,
                            max_inflight_per_replica=max_inflight_per_replica)
    err.print("loading models…", markup=False)
    app_ = create_app(cfg)
    routes = "/v1/moderations" + (", /v1/embeddings" if cfg.embeddings or cfg.search else "") \
        + (", /v1/search" if cfg.search else "")
    err.print(f"serving {routes} on http://{cfg.host}:{cfg.port} (metrics: /metrics)", markup=False)
    uvicorn.run(app_, host=cfg.host, port=cfg.port, log_level="warning")


@app.command()
def loadtest(
    url: str = typer.Argument(..., help="Server base URL, e.g. http://127.0.0.1:8000 (…/v1 works too)."),
    endpoint: str = typer.Option("moderations", help="moderations or embeddings."),
    rate: float = typer.Option(10.0, help="Offered load in requests/s (Poisson arrivals)."),
    duration: float = typer.Option(10.0, help="Seconds of measured arrivals at each rate."),
    sweep: Optional[str] = typer.Option(None, help="Rates to run in turn, e.g. 5,10,20 (overrides --rate)."),
    json_path: str = typer.Option("loadtest.json", "--json", help="Where to write the results."),
    plot_path: str = typer.Option("loadtest.png", "--plot", help="Where to write the latency-vs-load plot (PNG)."),
    timeout: float = typer.Option(30.0, help="Seconds a request may take, from its scheduled send time."),
    warmup: float = typer.Option(0.0, help="Seconds of load sent first and left out of the results."),
    seed: int = typer.Option(0, help="Seed of the arrival times."),
    model: Optional[str] = typer.Option(None, help="model field of every request (default: the server's)."),
    input_file: Optional[str] = typer.Option(None, help="Payloads: request bodies (.jsonl) or one text per "
                                             "line (default: built-in texts)."),
    batch: int = typer.Option(1, help="Texts per request."),
    progress: Optional[bool] = typer.Option(None, help="Progress bar (default: on a terminal)."),
) -> None:
    """Open-loop load test of a server: Poisson arrivals at fixed rates; throughput, latency, errors."""
    require("mmpipe loadtest", "serve")
    from . import loadtest as lt

    rates = lt.parse_rates(sweep) if sweep is not None else [rate]
    payloads = lt.load_payloads(input_file) if input_file else None
    results = lt.run_sweep(url, endpoint, rates, duration, payloads=payloads, model=model, batch=batch,
                           timeout_s=timeout, warmup_s=warmup, seed=seed, progress=progress)
    Console().print(lt.summary_table(results))
    for line in lt.problems(results):
        err.print(f"warning: {line}", style="yellow", markup=False)
    err.print(f"results: {lt.write_json(results, json_path)}, plot: {lt.plot(results, plot_path)}",
              markup=False)


@app.command()
def tune(
    model: str = typer.Option(..., help="The model to tune: a CLIP spec for embed and serve "
                              "(path:DIR, hf:REPO, random:ViT-B-32); for moderate, any label (its models "
                              "come from the policy)."),
    task: str = typer.Option(..., help="embed, moderate or serve."),
    budget_minutes: float = typer.Option(default(TuneOptions, "budget_minutes"),
                                         help="Stop starting trials after this long."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Results folder (default: ./tune-TASK)."),
    items: int = typer.Option(default(TuneOptions, "items"), help="Sample items each job trial runs on."),
    device: str = typer.Option(default(TuneOptions, "device"), help="cpu, cuda or cuda:N."),
    min_cosine: float = typer.Option(default(TuneOptions, "min_cosine"),
                                     help="Embedding accuracy gate (mean cosine to eager fp32)."),
    rate: float = typer.Option(default(TuneOptions, "rate"),
                               help="serve: offered requests/s (Poisson) in every trial."),
    price_per_hour: Optional[float] = typer.Option(None, help="What the machine costs, USD an hour: each "
                                                   "trial gets its cost per million items, and the cheapest wins."),
    progress: Optional[bool] = typer.Option(None, help="A line per trial on stderr (default: on)."),
) -> None:
    """Sweep batch size, precision/runtime, workers, threads and replicas; write tune.json/csv, a
    Pareto plot and best.yaml (for embed/moderate/serve --config)."""
    require("mmpipe tune", "tune", *TUNE_EXTRAS.get(task, ()))
    from .tune.run import tune as run

    result = run(model, task, budget_minutes=budget_minutes, out=out, items=items, device=device,
                 min_cosine=min_cosine, rate=rate, price_per_hour=price_per_hour, progress=progress)
    err.print(f"results: {result.out}; "
              + (f"best: {result.files['best']}" if result.best else "no configuration passed"), markup=False)


@app.command()
def route(
    config: str = typer.Option(..., help="Route config YAML: backends in order of preference, "
                                         "spill threshold, probes."),
    host: Optional[str] = typer.Option(None, help="Address to listen on "
                                                  f"(default: {default(RouteConfig, 'host')})."),
    port: Optional[int] = typer.Option(None, help=f"Port (default: {default(RouteConfig, 'port')})."),
) -> None:
    """Route OpenAI-style requests over several mmpipe servers: preferred first, spill when busy, fail over."""
    require("mmpipe route", "serve")
    import uvicorn

    from .serve.route_config import load_route_config
    from .serve.router import create_router_app

    cfg = load_route_config(config, host=host, port=port)
    err.print(f"routing to {', '.join(b.name for b in cfg.backends)} on http://{cfg.host}:{cfg.port} "
              "(state: /routes)", markup=False)
    uvicorn.run(create_router_app(cfg), host=cfg.host, port=cfg.port, log_level="warning")


@app.command()
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
    from .demo import describe_output, run_demo

    result = run_demo(out, n=n, model=model, progress=progress, overwrite=overwrite,
                      moderation=moderation, notify=lambda line: err.print(line, markup=False))
    if result.moderation is not None:
        print_summary("moderated", result.moderation)
        print_moderation(result.moderation)
    print_summary("embedded", result.job)
    for line in describe_output(result):
        err.print(line, markup=False)


def auto(options: dict) -> dict:
    """``options`` without the flags left at None, whose config default is worked out then
    (the cores of the machine the job runs on)."""
    return {k: v for k, v in options.items() if not (k == "decode_workers" and v is None)}


def given(ctx: typer.Context) -> set[str]:
    """The job options set on the command line, which win over a --config file's."""
    names = {n for n in ctx.params if ctx.get_parameter_source(n) is not ParameterSource.DEFAULT}
    return names | ({"storage_options"} if "storage_option" in names else set())


@app.command()
def index(
    out_dirs: list[str] = typer.Argument(..., help="Output folders of 'mmpipe embed' (one or more)."),
    to: str = typer.Option(..., "--to", help="Index folder (made if missing; synced if it exists)."),
    ann_min_rows: int = typer.Option(25_000, min=1, help="Build an ANN (IVF-PQ) index once the table "
                                     "has this many rows; below it every search scans exactly."),
    progress: Optional[bool] = typer.Option(None, help="Progress bar (default: on a terminal)."),
) -> None:
    """Index embedding shards into a LanceDB table for 'mmpipe search'. Re-running adds only new
    shards (and replaces rewritten ones)."""
    require("mmpipe index", "search")
    from rich.progress import Progress

    from .search import build_index

    with Progress(console=err, disable=not (err.is_terminal if progress is None else progress),
                  transient=True) as bar:
        task = bar.add_task("indexing", total=None)
        report = build_index(out_dirs, to, ann_min_rows,
                             on_step=lambda what, done, total: bar.update(task, description=what,
                                                                          completed=done, total=total))
    ann = (f"; ANN index {report.ann['type']} with {report.ann['partitions']} partitions"
           if report.ann else "; no ANN index (exact search)")
    err.print(f"{report.path}: {report.rows} rows ({report.added_rows} added from "
              f"{report.added_shards} new shards, {report.replaced_shards} shards replaced, "
              f"{report.removed_shards} removed, {report.skipped_rows} rows without an image "
              f"vector skipped){ann}", markup=False)


@app.command()
def search(
    index_dir: str = typer.Argument(..., help="Index folder made by 'mmpipe index'."),
    query: Optional[str] = typer.Argument(None, help="Text to search images for."),
    image: Optional[str] = typer.Option(None, help="Image file to search similar images for "
                                        "(with QUERY too: images close to both)."),
    k: int = typer.Option(20, "-k", "--k", min=1, max=10_000, help="Results to return."),
    html: Optional[str] = typer.Option(None, help="Also write the results as an HTML page with thumbnails."),
    json_out: bool = typer.Option(False, "--json", help="Print results as JSON lines instead of a table."),
    model: Optional[str] = typer.Option(None, help="The index's model from another place (e.g. path:DIR "
                                        "on this machine); checked to reproduce the index's vectors. "
                                        "Default: the spec recorded in the index."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    allow_pickle: bool = typer.Option(False, help="Allow pickle (.bin) weights; they can run code."),
) -> None:
    """Search an index by text (text→image) or by an example image (image→image)."""
    require("mmpipe search", "search")
    import json
    from dataclasses import asdict
    from pathlib import Path

    from rich.table import Table

    from .errors import ConfigError
    from .search import Searcher, write_results

    if not query and image is None:
        raise ConfigError("QUERY", "give a text query, --image FILE, or both")
    data = None
    if image is not None:
        try:
            data = Path(image).read_bytes()
        except OSError as exc:
            raise ConfigError("--image", f"cannot read {image!r}: {exc.strerror or exc}") from None
    searcher = Searcher(index_dir, model, device, allow_pickle)
    hits = searcher.search(searcher.query_vector(query, data), k)
    if searcher.meta.random_weights:
        err.print("[yellow]the index holds random-weight vectors (benchmark only): results are not meaningful[/]")
    if json_out:
        for h in hits:
            print(json.dumps(asdict(h), ensure_ascii=False))
    else:
        table = Table("#", "score", "id", "uri", "text")
        for h in hits:
            table.add_row(str(h.rank), f"{h.score:.3f}", h.id, h.uri or "", (h.text or "")[:60])
        Console(highlight=False).print(table)
    if html:
        label = " + ".join(x for x in (repr(query) if query else None, image) if x)
        write_results(hits, html, label, f"{len(hits)} results from {index_dir} "
                                         f"({searcher.meta.rows} rows, model {searcher.spec})")
        err.print(f"results: {html}", markup=False)


bank_app = typer.Typer(no_args_is_help=True, help="Banks of perceptual hashes (PDQ, pHash) and CLIP vectors "
                                                  "of known media, for policy categories with source: bank.")
app.add_typer(bank_app, name="bank")


@bank_app.command("add")
def bank_add(
    bank: str = typer.Argument(..., help="Bank folder (made if missing)."),
    files: list[str] = typer.Argument(..., help="Image files to hash into the bank."),
    label: Optional[str] = typer.Option(None, help="Label of these entries, reported with a match."),
    clip_model: Optional[str] = typer.Option(None, help="Also store each file's CLIP image vector from "
                                             "this checkpoint, for hash: clip categories (one model a bank)."),
) -> None:
    """Hash image files (PDQ and pHash) into a bank; adding a file again replaces its entry."""
    require("mmpipe bank add", "moderate")
    from .bank import add_files

    clip = None
    if clip_model is not None:
        from .models import ModelSpec, load_embedder

        clip = load_embedder(ModelSpec.parse(clip_model, "--clip-model"))
    print_bank(add_files(bank, files, label, clip=clip))


@bank_app.command("import")
def bank_import(
    bank: str = typer.Argument(..., help="Bank folder (made if missing)."),
    csv_file: str = typer.Argument(..., help="CSV with a header: pdq (64 hex digits) and/or phash "
                                             "(16), optional id, label, source."),
) -> None:
    """Import shared hashes (e.g. PDQ hex from ThreatExchange) into a bank."""
    require("mmpipe bank import", "moderate")
    from .bank import import_csv

    print_bank(import_csv(bank, csv_file))


@bank_app.command("info")
def bank_info(bank: str = typer.Argument(..., help="Bank folder.")) -> None:
    """How many entries, hashes and labels a bank holds."""
    require("mmpipe bank info", "moderate")
    from .bank import open_bank

    print_bank(open_bank(bank))


def print_bank(bank) -> None:
    info = bank.info()
    labels = ", ".join(f"{n} {label}" for label, n in info["labels"].items())
    clip = info.get("clip")
    vectors = f", {clip['vectors']} CLIP vectors ({clip['model']})" if clip else ""
    err.print(f"{bank.path}: {info['entries']} entries, {info['hashes']['pdq']} PDQ and "
              f"{info['hashes']['phash']} pHash hashes{vectors}; labels: {labels or 'none'}", markup=False)


def parse_storage_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, not {pair!r}", param_hint="'--storage-option'")
        options[key] = value
    return options


def print_summary(verb: str, result: JobResult) -> None:
    random = " [yellow](random weights: benchmark only, not meaningful)[/]" if result.manifest.get("random_weights") else ""
    err.print(f"{verb} {result.ok + result.errors} items: {result.ok} ok, {result.errors} errors, "
              f"{result.items_per_s:.1f} items/s"
              + (f", {result.skipped} already done" if result.skipped else "")
              + (f", {result.duplicates} duplicate ids ignored" if result.duplicates else "")
              + f" → {result.out}{random}")
    if result.cost:
        err.print(f"cost: ${result.cost['usd_per_million_items']:,.4g} per million items at "
                  f"${result.cost['price_per_hour']:g}/h (the whole run, model setup included)", markup=False)
    for reason, count in result.top_errors:
        err.print(f"  {count} × {reason}")


def print_moderation(result: JobResult) -> None:
    actions = result.manifest.get("actions", {})
    err.print("actions: " + ", ".join(f"{actions.get(a, 0)} {a}" for a in ("allow", "review", "block"))
              + f"; review queue: {result.out / 'review.jsonl'}", markup=False)
    err.print(f"report: {result.out / 'report.html'}", markup=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and config errors are one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="mmpipe", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("mmpipe: aborted")
        sys.exit(130)
    except NoArgsIsHelpError:
        sys.exit(2)  # click has already printed the help
    except UsageError as exc:
        hint = f" (see 'mmpipe {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
        err.print(f"mmpipe: error: {exc.format_message()}{hint}", markup=False)
        sys.exit(2)
    except MmpipeError as exc:
        err.print(f"mmpipe: error: {exc}", markup=False)
        sys.exit(2)
    except ModuleNotFoundError as exc:  # an extra's module reached by a path no check foresaw
        args = sys.argv[1:] if argv is None else argv
        missing = missing_extra(exc, " ".join(["mmpipe", *[a for a in args if not a.startswith("-")][:1]]))
        if missing is None:
            raise
        err.print(f"mmpipe: error: {missing}", markup=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("mmpipe: interrupted; re-run the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
