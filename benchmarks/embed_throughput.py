"""Embedding throughput, side by side in one run: a naive loop vs ``mmpipe.embed`` vs the bare model.

Same model (``random:ViT-B-32``, fp32, identical weights), same N real-photo JPEGs (made once by
``mmpipe.sample_data`` into ``bench_data/``, which is git-ignored):

  (a) naive loop: PIL open → transformers' ``CLIPImageProcessorPil`` → ``get_image_features`` at
      batch 1 under ``torch.inference_mode()``, one image after the other;
  (b) ``mmpipe.embed`` on the folder: the whole job (read, decode, preprocess, embed, write
      Parquet) without model setup (``stats.wall_s``), and with it (the whole call);
  (c) the model's forward alone on pre-decoded tensors, at (b)'s batch size: the ceiling.

``--runtime compile`` runs (b) as ``mmpipe embed --runtime compile`` (fp32 still, the same
weights compiled during the model worker's setup) and times (c) on the same compiled model, with
the eager forward beside it; (a) stays the naive eager loop.

Then the peak RSS of ``mmpipe embed`` as a subprocess on N and on 10·N images (the N files listed
10 times in a CSV manifest with distinct ids): it should stay flat.

    python benchmarks/embed_throughput.py            # N=500, batch 16 (many minutes on a laptop CPU)
    python benchmarks/embed_throughput.py --quick    # N=40, a smoke check
    python benchmarks/embed_throughput.py --runtime compile --skip-rss
    python benchmarks/embed_throughput.py --device cuda --precision fp16 --batch-size 256 \
        --skip-rss --n 4000     # a GPU: also the GPU's busy share during (b); JPEGs decoded there
        # add --decode-device cpu (decoded by the CPU's processes), --model-replicas 2 (two model
        # threads on their own streams), --decode-threads (decoding in threads of the job's process)

On a GPU every mode runs there at ``--precision`` ((a) too, still one image at a time), and (c)
times forward passes over batches already on the GPU: the ceiling the job can approach.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import mmpipe
from mmpipe.models import load_embedder
from mmpipe.models.gate import gated_variant
from mmpipe.models.towers import projected
from mmpipe.models.variants import Variant
from mmpipe.sample_data import make_sample_images

MODEL = "random:ViT-B-32"
ROOT = Path(__file__).resolve().parent.parent
# Runs a command and prints the peak RSS (KiB on Linux) of it and its children, as the last line.
PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="Number of JPEGs (default 500).")
    ap.add_argument("--batch-size", type=int, default=16, help="Batch size of (b) and (c).")
    ap.add_argument("--size", default="640x480", help="WxH of the JPEGs (default 640x480).")
    ap.add_argument("--data", type=Path, default=ROOT / "bench_data", help="Cache folder.")
    ap.add_argument("--skip-rss", action="store_true", help="Skip the peak-RSS runs.")
    ap.add_argument("--quick", action="store_true", help="N=40: a smoke check, not a measurement.")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu).")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16 (GPU) for every mode.")
    ap.add_argument("--decode-workers", type=int, default=None,
                    help="(b)'s decode workers (default: the job's, one per usable core).")
    ap.add_argument("--runtime", default="eager", help="(b)'s and (c)'s runtime: eager or compile.")
    ap.add_argument("--model-replicas", type=int, default=1, help="(b)'s model workers sharing the weights.")
    ap.add_argument("--decode-threads", action="store_true",
                    help="(b) decodes in threads of its process, not in worker processes (the default).")
    ap.add_argument("--decode-device", default="auto", help="(b)'s --decode-device: auto, cpu or cuda.")
    args = ap.parse_args()
    n = 40 if args.quick else args.n
    w, h = (int(v) for v in args.size.lower().split("x"))
    bs = args.batch_size

    import torch

    t = time.perf_counter()
    folder = make_sample_images(args.data / f"jpeg-{w}x{h}-n{n}", n=n, size=(w, h), captions=False,
                                broken=False, png_share=0)
    files = sorted(folder.glob("*.jpg"))
    assert len(files) == n, f"expected {n} JPEGs in {folder}, found {len(files)}"
    print(f"data: {n} JPEGs {w}x{h} in {folder} ({time.perf_counter() - t:.1f} s to make or find)")
    gpu = args.device.startswith("cuda")
    where = torch.cuda.get_device_name(args.device) if gpu else platform.processor() or platform.machine()
    print(f"model: {MODEL} {args.precision} on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {where}")

    # One set of weights for (a) and (c); mmpipe.embed builds the same ones (seeded) for (b).
    embedder = load_embedder(MODEL, args.device, args.precision).make_embedder()
    model, place = embedder.model, dict(device=embedder.device, dtype=embedder.dtype)
    with torch.inference_mode():  # warm up kernels and allocator for every mode alike
        for _ in range(3):
            model.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224, **place))
            model.get_image_features(pixel_values=torch.zeros(bs, 3, 224, 224, **place))

    rows = []
    a_rate, pixels = naive_loop(model, files, place)
    rows.append(("(a) naive loop: PIL + CLIPImageProcessorPil + forward, batch 1", a_rate, n / a_rate))

    out = args.data / "out-throughput"
    t = time.perf_counter()
    workers = {"decode_workers": args.decode_workers} if args.decode_workers else {}
    with GpuBusy(args.device if gpu else None) as busy:
        result = mmpipe.embed(str(folder), str(out), model=MODEL, batch_size=bs, overwrite=True,
                              progress=False, device=args.device, precision=args.precision,
                              runtime=args.runtime, model_replicas=args.model_replicas,
                              decode_processes=not args.decode_threads, decode_device=args.decode_device,
                              **workers)
    whole = time.perf_counter() - t
    assert (result.ok, result.errors) == (n, 0), (result.ok, result.errors, result.top_errors)
    b_rate = n / result.stats.wall_s
    decode = result.manifest["decode"]
    options = (f", {args.model_replicas} replicas" if args.model_replicas > 1 else "") + (
        ", decode threads" if args.decode_threads else "") + (
        ", JPEGs decoded on the GPU" if decode["device"] == "cuda" else "")
    rows.append((f"(b) mmpipe.embed, batch {bs}{options}, job without model setup", b_rate, result.stats.wall_s))
    rows.append((f"    mmpipe.embed, whole call with {result.stats.setup_s:.1f} s model setup",
                 n / whole, whole))
    shutil.rmtree(out, ignore_errors=True)

    c_rate = forward_only(model, pixels, bs, place)
    rows.append((f"(c) model forward only, batch {bs}, pre-decoded tensors", c_rate, n / c_rate))
    if args.runtime != "eager":
        rows[-1] = (f"    eager forward only, batch {bs}", c_rate, n / c_rate)
        variant = Variant(args.precision, args.runtime)
        clip = gated_variant(load_embedder(MODEL, args.device, variant.weights_precision), variant)
        runtime_model = replace(clip, image_batch=bs).make_embedder().model  # compiled at bs
        c_rate = forward_only(runtime_model, pixels, bs, place)
        rows.append((f"(c) {args.runtime} forward only, batch {bs}", c_rate, n / c_rate))
    del pixels

    print()
    print(f"{'mode':<68} {'items/s':>8} {'seconds':>8}")
    for name, rate, seconds in rows:
        print(f"{name:<68} {rate:>8.2f} {seconds:>8.1f}")
    print(f"(b) bottleneck stage: {result.stats.bottleneck}; busy share {result.stats.busy_summary()}; "
          f"the feeding process's CPU {result.stats.cpu_ms_per_item:.3f} ms/item")
    if "agreement" in decode:
        print(f"(b) GPU decoding against CPU decoding on the evaluation set: {decode['agreement']}")
    if gpu:
        print(f"(b) GPU busy {busy.mean():.0f} % over the whole call, setup included (NVML utilisation, "
              "sampled every 50 ms)")

    ratios = f"b/a = {b_rate / a_rate:.2f}x   b/c = {b_rate / c_rate:.2f}x"
    if not args.skip_rss:
        print()
        small, _ = peak_rss(folder, args.data / "out-rss-n", bs, n)
        manifest = manifest_times_ten(folder, files, args.data)
        big, _ = peak_rss(manifest, args.data / "out-rss-10n", bs, 10 * n)
        ratios += f"   peak RSS 10·N/N = {big / small:.2f}"
    print()
    print(f"ratios (N={n}, batch {bs}): {ratios}")


def naive_loop(model, files: list[Path], place: dict):
    """(a); returns items/s and the pixel tensors it made, for (c)."""
    import torch
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil()  # CLIP's defaults: shortest edge 224, centre crop 224
    pixels = []
    t = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            with Image.open(path) as img:
                x = processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"]
            projected(model.get_image_features(pixel_values=x.to(**place))).cpu()  # waits for it
            pixels.append(x)
    return len(files) / (time.perf_counter() - t), pixels


def forward_only(model, pixels: list, bs: int, place: dict) -> float:
    """(c): the forward passes alone, on tensors already decoded, preprocessed and (on a GPU)
    copied there."""
    import torch

    # Whole batches only: a compiled model would compile again for a shorter last one.
    batches = [torch.cat(pixels[i: i + bs]).to(**place) for i in range(0, len(pixels) - bs + 1, bs)]
    with torch.inference_mode():  # untimed: a compiled model compiles again for these tensors
        model.get_image_features(pixel_values=batches[0])
    t = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            out = projected(model.get_image_features(pixel_values=x))
        out.cpu()  # waits for the queued GPU work
    return len(batches) * bs / (time.perf_counter() - t)


class GpuBusy:
    """The GPU's utilisation (NVML: the share of time a kernel was running) sampled in a thread
    while the block runs; ``device`` None: nothing sampled."""

    def __init__(self, device: str | None):
        self.device, self.samples, self.stop = device, [], None

    def __enter__(self) -> "GpuBusy":
        import threading

        if self.device is not None:
            import torch

            self.stop = threading.Event()

            def sample():
                while not self.stop.wait(0.05):
                    self.samples.append(torch.cuda.utilization(self.device))

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.stop is not None:
            self.stop.set()
            self.thread.join()

    def mean(self) -> float:
        return sum(self.samples) / max(len(self.samples), 1)


def manifest_times_ten(folder: Path, files: list[Path], data: Path) -> Path:
    """A CSV listing the N files 10 times under distinct ids (paths relative to the CSV)."""
    path = data / f"{folder.name}-x10.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image"])
        for copy in range(10):
            for p in files:
                writer.writerow([f"{copy}/{p.name}", p.relative_to(data).as_posix()])
    return path


def peak_rss(source: Path, out: Path, bs: int, count: int) -> tuple[float, float]:
    """Run ``mmpipe embed`` in a fresh process; print and return its peak RSS (MiB) and items/s."""
    cmd = [sys.executable, "-m", "mmpipe.cli", "embed", str(source), "--out", str(out), "--model", MODEL,
           "--batch-size", str(bs), "--overwrite", "--no-progress"]
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"mmpipe embed failed ({proc.returncode}):\n{proc.stderr}")
    peak_mib = int(proc.stdout.strip().splitlines()[-1]) / 1024
    stats = json.loads((out / "stats.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    print(f"peak RSS of `mmpipe embed` on {count:>6} images: {peak_mib:8.1f} MiB "
          f"({stats['items_per_s']:.2f} items/s without setup, {seconds:.0f} s in all)")
    return peak_mib, stats["items_per_s"]


if __name__ == "__main__":
    main()
