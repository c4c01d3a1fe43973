"""Engines side by side in one run: the local engine vs the Ray engine vs a plain Ray Data script.

Same N real-photo JPEGs (``mmpipe.sample_data``, cached in ``bench_data/``), same model
(``random:ViT-B-32``, fp32, the same seeded weights), same batch size, all writing Parquet:

  local  ``mmpipe.embed(..., engine="local")``: threads in one process;
  ray    ``mmpipe.embed(..., engine="ray")``: the same stages on a local Ray cluster;
  plain  the Ray Data batch-inference script its docs teach: ``read_images`` →
         ``map_batches`` (preprocess) → ``map_batches`` with a model class (actor pool) →
         ``write_parquet``.

Each mode runs in a fresh process (the Ray ones start a local cluster of the machine's CPUs
there; the clock starts after ``ray.init``). Items/s is over the whole job, model loading
included, as a user sees it; peak memory is the largest sum of PSS over the process and all its
descendants (Ray's raylet, workers and object store included), sampled every 0.2 s.
Targets: ray / plain >= 1.0, local / plain >= 1.2.

    .venv/bin/python benchmarks/engines.py              # N=500 640x480, batch 16 (~5 min here)
    .venv/bin/python benchmarks/engines.py --quick      # N=48, a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
MODEL = "random:ViT-B-32"
MODES = ("local", "ray", "plain")


def child(mode: str, folder: Path, out: Path, bs: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    if mode != "local":
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    t = time.perf_counter()
    if mode == "plain":
        items = plain_ray_data(folder, out, bs)
    else:
        import mmpipe

        result = mmpipe.embed(str(folder), str(out), model=MODEL, batch_size=bs, engine=mode,
                              progress=False)
        assert result.errors == 0, result.top_errors
        items = result.ok
    print(json.dumps({"items": items, "seconds": time.perf_counter() - t}))


def plain_ray_data(folder: Path, out: Path, bs: int) -> int:
    """What the Ray Data docs teach for offline batch inference, with CLIP as the model."""
    import numpy as np
    import pyarrow.parquet as pq
    import ray
    import torch
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from mmpipe.models import load_embedder

    processor = CLIPImageProcessorPil()

    def preprocess(batch: dict) -> dict:
        pixels = processor(images=list(batch["image"]), return_tensors="np")["pixel_values"]
        return {"path": batch["path"], "pixels": pixels}

    class Embedder:
        def __init__(self):
            self.model = load_embedder(MODEL).make_embedder().model  # the same seeded weights

        def __call__(self, batch: dict) -> dict:
            with torch.inference_mode():
                out = self.model.get_image_features(pixel_values=torch.from_numpy(batch["pixels"]))
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            feats = torch.nn.functional.normalize(feats, dim=-1)
            return {"path": batch["path"], "image_embedding": list(feats.numpy().astype(np.float32))}

    ds = ray.data.read_images(str(folder), mode="RGB", include_paths=True)
    ds = ds.map_batches(preprocess, batch_size=bs)
    ds = ds.map_batches(Embedder, batch_size=bs, compute=ray.data.ActorPoolStrategy(size=1))
    ds.write_parquet(str(out))
    return sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("*.parquet"))


def measure(mode: str, folder: Path, out: Path, bs: int) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, str(folder), str(out), str(bs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.wait(0.2):
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                return
            peak = max(peak, total)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{mode} failed ({proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_pss_mib"] = peak / 2**20
    result["items_per_s"] = result["items"] / result["seconds"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="Number of JPEGs (default 500).")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--data", type=Path, default=ROOT / "bench_data", help="Cache folder.")
    ap.add_argument("--quick", action="store_true", help="N=48: a smoke check, not a measurement.")
    ap.add_argument("--modes", default=",".join(MODES), help="Which of local,ray,plain to run.")
    args = ap.parse_args()
    n = 48 if args.quick else args.n

    from mmpipe.sample_data import make_sample_images

    folder = make_sample_images(args.data / f"jpeg-640x480-n{n}", n=n, size=(640, 480), captions=False,
                                broken=False, png_share=0)
    print(f"data: {n} JPEGs 640x480 in {folder}; model {MODEL} fp32, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs", flush=True)
    results = {}
    for mode in args.modes.split(","):
        results[mode] = r = measure(mode, folder, args.data / f"out-engines-{mode}", args.batch_size)
        assert r["items"] == n, (mode, r)
        print(f"  {mode:<6} {r['items_per_s']:7.2f} items/s  {r['seconds']:6.1f} s  "
              f"peak PSS {r['peak_pss_mib']:7.0f} MiB", flush=True)
    if set(results) != set(MODES):
        return
    plain = results["plain"]["items_per_s"]
    print(f"ray / plain = {results['ray']['items_per_s'] / plain:.2f}x (target >= 1.0); "
          f"local / plain = {results['local']['items_per_s'] / plain:.2f}x (target >= 1.2)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
