"""How one configuration of each task is measured: real ``mmpipe.embed`` / ``mmpipe.moderate``
runs on sample data (items/s from their stats.json, per-batch latency of the swept model stage),
or a real ``mmpipe serve`` process under ``mmpipe.loadtest.run_load`` at a fixed offered rate.
Peak memory is the measured process's resident set, sampled while it runs."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import threading
from pathlib import Path

import psutil

from ..errors import ConfigError
from ..config import usable_cores
from ..models.accuracy import Accuracy, Gate
from .sweep import Gated, Measurement, Task, TuneOptions, parse_variants

_SAMPLE_EVERY_S = 0.02
_CPU_VARIANTS = ["fp32 eager", "bf16 eager", "int8 eager", "fp32 onnx", "int8 onnx"]
# A serve trial's static shape buckets: 1, 2, 4 … up to its max_batch_size.
POWERS_OF_2 = "powers of 2"
_GPU_VARIANTS = ["fp32 eager", "bf16 eager", "fp16 eager", "fp16 compile"]


class PeakRss:
    """The highest resident set size of ``pid`` (and its children) while the block runs."""

    def __init__(self, pid: int | None = None):
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(_SAMPLE_EVERY_S):
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                return

    @property
    def mib(self) -> float:
        return round(self.peak / 2**20, 1)

    def __enter__(self) -> "PeakRss":
        if self.process.pid == os.getpid():
            _release_freed_memory()
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _release_freed_memory() -> None:
    """Hand what earlier trials freed back to the OS, so that a trial's peak is mostly its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _job_measurement(out: Path, stage: str, peak: PeakRss) -> Measurement:
    stats = json.loads((out / "stats.json").read_text())
    swept = next(s for s in stats["stages"] if s["name"] == stage)
    return Measurement(stats["items_per_s"], swept["batch_p50_ms"], swept["batch_p99_ms"], peak.mib)


def embed_task(opts: TuneOptions, work: Path) -> Task:
    from ..jobs.embed import embed
    from ..models.embedder import load_embedder
    from ..models.variants import Variant
    from ..sample_data import make_sample_images
    from ..models.gate import gated_variant

    samples = make_sample_images(work / "samples", n=opts.items, broken=False)
    base = {"model": opts.model, "device": opts.device, "min_cosine": opts.min_cosine}
    gate = Gate(min_mean_cosine=opts.min_cosine)

    def check(variant: dict) -> Gated:
        v = Variant(**variant)
        v.check(opts.device)
        clip = load_embedder(opts.model, opts.device, v.weights_precision)
        # Measured with no bar so that a refused variant's figures are recorded too.
        figures = gated_variant(clip, v, Gate(min_mean_cosine=-1)).accuracy or {}
        towers = [Accuracy.from_dict(f) for f in figures.values()]
        accuracy = {"mean_cosine": round(min((a.mean_cosine for a in towers), default=1.0), 6),
                    "min_cosine": round(min((a.min_cosine for a in towers), default=1.0), 6)}
        failure = next((f"{tower}: {why}" for tower, a in zip(figures, towers) if (why := a.failure(gate))), None)
        return Gated(accuracy, failure)

    def measure(config: dict) -> Measurement:
        out = work / "run"
        with PeakRss() as peak:
            embed(str(samples), str(out), overwrite=True, progress=False, **base, **config)
        return _job_measurement(out, "embed", peak)

    measure({})  # warm-up, not recorded: the first run in a process pays for imports and caches
    cores = usable_cores()  # the default number of decode workers
    extras = [{"decode_workers": n} for n in sorted({max(1, cores // 2), 2 * cores})]
    extras.append({"decode_processes": False})  # threads: no process start, but decoding holds the GIL
    if opts.device.startswith("cuda"):  # feeding the GPU: two replicas; JPEGs decoded by the CPU
        extras += [{"model_replicas": 2}, {"decode_device": "cpu"}]
    return Task("embed", _variants(opts), "batch_size", _sizes(opts, [4, 8, 16, 32, 64, 128]),
                extras, check, measure, lambda config: {**base, **config})


def _sizes(opts: TuneOptions, default: list[int]) -> list[int]:
    """The batch sizes to try; a batch larger than the sample set would only measure the sample."""
    return [b for b in opts.batch_sizes or default if b <= opts.items] or [opts.items]


def _variants(opts: TuneOptions) -> list[dict]:
    from ..models.variants import Variant

    names = opts.variants or (_GPU_VARIANTS if opts.device.startswith("cuda") else _CPU_VARIANTS)
    variants = parse_variants(names)
    if opts.variants is None:  # the defaults: only what runs on this device
        variants = [v for v in variants if _runs(Variant(**v), opts.device)]
    return variants


def _runs(variant, device: str) -> bool:
    try:
        variant.check(device)
    except ConfigError:
        return False
    return True


def moderate_task(opts: TuneOptions, work: Path) -> Task:
    from ..jobs.moderate import moderate
    from ..models.open_nsfw_int8 import load_int8
    from ..policy import load_policy
    from ..sample_moderation import make_moderation_samples

    manifest = make_moderation_samples(work / "samples", n_photos=opts.items)
    thresholds = load_policy(None).thresholds("open_nsfw")

    def check(variant: dict) -> Gated:
        if variant["nsfw_precision"] == "fp32":
            return Gated({"flips": 0})
        # Built with no bar so that a refused variant's figures are recorded too.
        figures = load_int8(thresholds, Gate(max_flip_share=1)).accuracy(thresholds)
        return Gated(figures.to_dict(), figures.failure(Gate()))

    def measure(config: dict) -> Measurement:
        out = work / "run"
        with PeakRss() as peak:
            moderate(str(manifest), str(out), overwrite=True, progress=False, **config)
        return _job_measurement(out, "open_nsfw", peak)

    measure({})  # warm-up, as for embed
    return Task("moderate", [{"nsfw_precision": p} for p in ("fp32", "int8")], "batch_size",
                _sizes(opts, [4, 8, 16, 32, 64]),
                [{"model_threads": 2}, {"ocr_workers": 1}, {"ocr_workers": 3}, {"decode_workers": 1},
                 {"decode_workers": 4}], check, measure, dict)


def serve_task(opts: TuneOptions, work: Path) -> Task:
    from ..loadtest import run_load
    from ..serve.process import serve_process

    def measure(config: dict) -> Measurement:
        with serve_process(serve_yaml(opts, config), work) as (url, proc), PeakRss(proc.pid) as peak:
            result = run_load(url, "embeddings", opts.rate, opts.seconds, warmup_s=1.0, timeout_s=30,
                              progress=False)
        if result.non_200_share > 0.01:
            raise RuntimeError(f"{result.non_200_share:.0%} of requests failed: {result.statuses}")
        return Measurement(round(result.throughput, 3), result.ok_latency.p50_ms,
                           result.ok_latency.p99_ms, peak.mib)

    sizes = opts.batch_sizes or [1, 4, 16, 32]
    extras = [{"replicas": 2}, {"max_wait_ms": 1.0}, {"max_wait_ms": 20.0}, {"buckets": POWERS_OF_2}]
    return Task("serve", [{}], "max_batch_size", sizes, extras,
                lambda variant: Gated({}), measure, lambda config: serve_yaml(opts, config))


def serve_yaml(opts: TuneOptions, config: dict) -> dict:
    """A whole ``mmpipe serve --config`` file serving ``opts.model`` embeddings as ``config``."""
    batching = dict(config)
    if batching.get("buckets") == POWERS_OF_2:  # static shapes up to the largest batch
        size = batching.get("max_batch_size", 32)
        batching["buckets"] = [1 << i for i in range(size.bit_length()) if 1 << i < size] + [size]
    return {"embeddings": {"model": opts.model, "device": opts.device, **batching}}


TASKS = {"embed": embed_task, "moderate": moderate_task, "serve": serve_task}


def scratch(out: Path) -> Path:
    """Where samples and trial outputs go: inside --out, so a rerun reuses the samples."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    return work

