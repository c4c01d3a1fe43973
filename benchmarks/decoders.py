"""JPEG decoder + resize for CLIP preprocessing, side by side in one run: speed on one core and
how far each lands from the reference crop.

Every candidate turns JPEG bytes into the same (3, 224, 224) uint8 centre crop that CLIP's
preprocessing makes (short side resized to 224 with PIL BICUBIC, antialiased, then centre-cropped):

  1   exact: Pillow full decode (``decode_image``) + ``Preprocessor.image``: the reference;
  2   exact-box: Pillow full decode + PIL BICUBIC resize of only the crop's region (``box=``,
      ``Preprocessor.image(exact=False)``);
      the same filter taps, but Pillow places output pixel x at box_left + (x + 0.5) * scale
      rather than (left + x + 0.5) * scale: where those doubles differ in their last bits (640x480:
      scale 640/298) a few fixed-point weights round differently and rare values move by 1 or 2;
  3   Pillow ``draft()`` (DCT scaling) to short side >= 2x224 (mmpipe's fast decode before), + 2's resize;
  4   Pillow ``draft()`` to short side >= 224, + 2's resize: mmpipe's fast decode (the default);
  4b  4 with a bare ``Image.open``/``draft``/``convert``: no pixel cap, no EXIF rotation, like 5;
  4c  4 (``decode_image``'s care kept), then 7b's ``cv2.resize`` INTER_CUBIC instead of PIL's;
  5   simplejpeg scaled decode to short side >= 224 (+ a fastdct/fastupsample variant), + 2's resize;
  6   PyTurboJPEG, the largest scaling factor keeping short side >= 224, + 2's resize;
  7   OpenCV ``IMREAD_REDUCED_COLOR_2/4/8`` (the largest keeping short side >= 224), then
      ``cv2.resize`` INTER_AREA or INTER_CUBIC to the reference's size and its centre crop, or 2's
      PIL resize.

For each: CPU milliseconds per image on one core (single process, single thread,
``cv2.setNumThreads(1)``; the median of the repeats, every candidate timed in each repeat, on bytes
already in memory; wall/CPU near 1 says the machine was otherwise idle), speed against 1 and
against 3, and accuracy against 1: the mean and largest absolute pixel difference over all crops,
and the mean and lowest cosine between image embeddings of a random-weights CLIP ViT-B/32
(``random:ViT-B-32``) over the first ``--cos-n`` images. Random weights make that cosine only a
proxy for what a trained model would see. Each candidate is also fed a JPEG with EXIF orientation
6 (rotated 90 degrees): the EXIF column says whether its output matches the reference's
(rotation applied) or not.

Three sets of photo JPEGs made by ``mmpipe.sample_data`` into ``bench_data/`` (git-ignored; some
grayscale): 1000 at 640x480, 200 at 1600x1200 and 50 at 4032x3024 (a phone photo's size). They
are upscaled from small originals, so they are smoother than camera photos: less entropy-coded
data per pixel, which flatters DCT scaling (it saves the IDCT and colour work, not the Huffman
decoding).

simplejpeg and PyTurboJPEG are not mmpipe's dependencies: their rows appear when they are
installed (``pip install simplejpeg PyTurboJPEG``).

    python benchmarks/decoders.py            # about 10 minutes on 2 CPU cores
    python benchmarks/decoders.py --quick    # N = 40, 10, 4: a smoke check, not a measurement
    python benchmarks/decoders.py --turbojpeg-lib /opt/libjpeg-turbo/lib64/libturbojpeg.so
        # PyTurboJPEG 2.x needs libjpeg-turbo >= 3.0; Debian 12's libturbojpeg0 is 2.1.5
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import PIL
from PIL import Image, features

from mmpipe.decode.image import decode_image
from mmpipe.models import load_embedder
from mmpipe.sample_data import make_sample_images, sample_photos

MODEL = "random:ViT-B-32"
ORIENTATION = 0x0112  # the EXIF tag
SIDE = 224  # ViT-B/32's short side after resizing and its centre crop
ROOT = Path(__file__).resolve().parent.parent
SETS = ((640, 480, 1000), (1600, 1200, 200), (4032, 3024, 50))  # width, height, N
QUICK_N = (40, 10, 4)
CV2_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
               (2, cv2.IMREAD_REDUCED_COLOR_2))

Size = tuple[int, int]


@dataclass(frozen=True)
class Candidate:
    name: str
    # bytes → (a PIL image or an HxWx3 array, the full image's (width, height) as displayed)
    decode: Callable[[bytes], tuple[object, Size]]
    # → (3, SIDE, SIDE) uint8
    finish: Callable[[object, Size], np.ndarray]
    exif: str = ""  # "applied" or "ignored", filled in by exif_check

    def __call__(self, data: bytes) -> np.ndarray:
        return self.finish(*self.decode(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs=3, metavar=("N640", "N1600", "N4032"),
                    default=[n for _, _, n in SETS], help="JPEGs per set (default 1000 200 50).")
    ap.add_argument("--repeats", type=int, default=3, help="Timed passes per candidate (median).")
    ap.add_argument("--cos-n", type=int, default=200, help="Images per set embedded for the cosine.")
    ap.add_argument("--data", type=Path, default=ROOT / "bench_data", help="Cache folder.")
    ap.add_argument("--turbojpeg-lib", help="Path of libturbojpeg (>= 3.0) if not found by itself.")
    ap.add_argument("--quick", action="store_true", help=f"N={QUICK_N}, 2 repeats: a smoke check.")
    args = ap.parse_args()
    counts = QUICK_N if args.quick else args.n
    repeats = 2 if args.quick else args.repeats
    cv2.setNumThreads(1)  # a per-core figure, like Pillow's and simplejpeg's

    pre = load_embedder(MODEL).preprocessor
    assert (pre.resize_to, pre.crop) == (SIDE, SIDE), (pre.resize_to, pre.crop)
    candidates, turbo_status = make_candidates(pre, args.turbojpeg_lib)
    exif_file = exif_rotated_jpeg()
    candidates = [exif_check(c, candidates[0], exif_file) for c in candidates]

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.processor() or cpu_model()}, {os.cpu_count()} cores "
          f"({len(os.sched_getaffinity(0))} usable); every figure on one core, one thread")
    print(f"python {platform.python_version()}, numpy {np.__version__}, Pillow {PIL.__version__} "
          f"(libjpeg-turbo {features.version_feature('libjpeg_turbo')}), simplejpeg "
          f"{simplejpeg_status()}, opencv {cv2.__version__} ({cv2_jpeg()}), PyTurboJPEG {turbo_status}")
    print(f"accuracy against 1 on {MODEL}; its weights are random, so its cosine is only a proxy")

    sets = []
    for (w, h, _), n in zip(SETS, counts):
        folder = make_sample_images(args.data / f"jpeg-{w}x{h}-n{n}", n=n, size=(w, h),
                                    captions=False, broken=False, png_share=0)
        files = sorted(folder.glob("*.jpg"))
        assert len(files) == n, f"expected {n} JPEGs in {folder}, found {len(files)}"
        sets.append((w, h, [p.read_bytes() for p in files]))
    # Every set is timed before anything is embedded: torch's worker threads, spinning after a
    # forward pass, would take a core from the decoders.
    set_ms = [timings(candidates, blobs, repeats) for _, _, blobs in sets]

    embedder = load_embedder(MODEL).make_embedder()
    for (w, h, blobs), (ms, wall_per_cpu) in zip(sets, set_ms):
        n = len(blobs)
        grey = sum(Image.open(io.BytesIO(b)).mode == "L" for b in blobs)
        acc = accuracy(candidates, blobs, embedder, min(args.cos_n, n))
        print()
        kib = np.mean([len(b) for b in blobs]) / 1024
        print(f"{w}x{h}: N={n} JPEGs ({grey} grayscale), mean {kib:.0f} KiB; CPU ms/img = median of "
              f"{repeats} (wall/CPU {wall_per_cpu:.2f}); pixel Δ over all {n}, cosine over the first "
              f"{min(args.cos_n, n)}")
        print(f"{'candidate':<48} {'decoded':>9} {'ms/img':>7} {'vs 1':>6} {'vs 3':>6} {'mean|Δ|':>8} "
              f"{'max|Δ|':>6} {'cos mean':>9} {'cos min':>9}  EXIF")
        for c, t, (decoded, mean_d, max_d, _, cos) in zip(candidates, ms, acc):
            print(f"{c.name:<48} {decoded:>9} {t:>7.3f} {ms[0] / t:>5.2f}x {ms[2] / t:>5.2f}x {mean_d:>8.3f} "
                  f"{max_d:>6d} {cos.mean():>9.6f} {cos.min():>9.6f}  {c.exif}")
        differing = acc[1][3]
        print("2 vs 1: " + ("bit-identical on every image" if not differing else
                            f"{differing} of {n * 3 * SIDE * SIDE} values differ (by at most {acc[1][2]})"))
        if not any(c.name.startswith("6 ") for c in candidates):
            print(f"6 PyTurboJPEG: no row, {turbo_status}")


def make_candidates(pre, turbojpeg_lib: str | None) -> tuple[list[Candidate], str]:
    """The candidates in the docstring's order, and PyTurboJPEG's version or why it is missing."""
    def pillow(min_side: int | None):
        return lambda data: decode_image(data, min_side=min_side)

    def pil_box(img: Image.Image, full: Size) -> np.ndarray:
        """mmpipe's own resize of the crop's region only."""
        return pre.image(img, exact=False)

    def array_box(rgb: np.ndarray, full: Size) -> np.ndarray:
        return pil_box(Image.fromarray(rgb), full)

    def simple(fast: bool):
        import simplejpeg

        def decode(data: bytes):
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)  # height first
            # Both sides >= SIDE is the short side >= SIDE; simplejpeg picks the largest reduction.
            arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=SIDE, min_width=SIDE,
                                         fastdct=fast, fastupsample=fast)
            return arr, (w, h)
        return decode

    def pillow_bare(data: bytes):
        """4 without ``decode_image``'s care (pixel cap, EXIF rotation, odd modes): what Pillow
        itself costs next to simplejpeg, which does none of that either."""
        img = Image.open(io.BytesIO(data))
        full = img.size
        img.draft(img.mode, (SIDE, SIDE))  # keeps both sides >= SIDE
        img.load()
        return (img if img.mode == "RGB" else img.convert("RGB")), full

    cands = [
        Candidate("1 exact: Pillow full + PIL bicubic + crop", decode_image, lambda img, _: pre.image(img)),
        Candidate("2 exact-box: Pillow full + PIL bicubic box=crop", decode_image, pil_box),
        Candidate("3 Pillow draft >= 2x224 (before) + box", pillow(2 * SIDE), pil_box),
        Candidate("4 Pillow draft >= 224 + box (the default)", pillow(SIDE), pil_box),
        Candidate("4b Pillow draft >= 224 bare (no EXIF) + box", pillow_bare, pil_box),
        Candidate("4c Pillow draft >= 224 + cv2 INTER_CUBIC", pillow(SIDE),
                  cv2_finish(cv2.INTER_CUBIC, bgr=False)),
    ]
    if simplejpeg_status() != "not installed":
        cands += [Candidate("5 simplejpeg >= 224 + box", simple(False), array_box),
                  Candidate("5f simplejpeg >= 224 fastdct+fastupsample + box", simple(True), array_box)]
    opencv = [
        Candidate("7a OpenCV reduced >= 224 + INTER_AREA", cv2_reduced, cv2_finish(cv2.INTER_AREA)),
        Candidate("7b OpenCV reduced >= 224 + INTER_CUBIC", cv2_reduced, cv2_finish(cv2.INTER_CUBIC)),
        Candidate("7c OpenCV reduced >= 224 + PIL box", cv2_reduced,
                  lambda bgr, full: array_box(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), full)),
    ]
    try:
        import turbojpeg
    except ImportError:
        return cands + opencv, "not installed"
    try:
        tj = turbojpeg.TurboJPEG(turbojpeg_lib)
    except (OSError, RuntimeError) as exc:
        return cands + opencv, f"{turbojpeg.__version__} not loadable: {str(exc).splitlines()[0]}"
    # Downscaling factors, the largest reduction first.
    factors = sorted((f for f in tj.scaling_factors if f[0] <= f[1]), key=lambda f: f[0] / f[1])

    def turbo(data: bytes):
        w, h, _, _ = tj.decode_header(data)
        short = min(w, h)
        # TurboJPEG's scaled size rounds up (TJSCALED).
        num, den = next((f for f in factors if -(-short * f[0] // f[1]) >= SIDE), (1, 1))
        return tj.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(num, den)), (w, h)

    return cands + [Candidate("6 PyTurboJPEG >= 224 + box", turbo, array_box)] + opencv, turbojpeg.__version__


def reference_size(w: int, h: int) -> Size:
    """The size ``Preprocessor.image`` resizes a w x h image to (short side SIDE)."""
    new_long = int(SIDE * max(w, h) / min(w, h))
    return (SIDE, new_long) if w <= h else (new_long, SIDE)


def chw(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def cv2_reduced(data: bytes) -> tuple[np.ndarray, Size]:
    with Image.open(io.BytesIO(data)) as im:  # the header only: cv2 cannot read a size alone
        w, h = im.size
    short = min(w, h)
    flag = next((f for k, f in CV2_REDUCED if -(-short // k) >= SIDE), cv2.IMREAD_COLOR)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if bgr is None:
        raise ValueError("cv2.imdecode failed")
    # imdecode applies EXIF rotation by default: the full size as displayed follows it.
    if (bgr.shape[1] >= bgr.shape[0]) != (w >= h):
        w, h = h, w
    return bgr, (w, h)


def cv2_finish(interpolation: int, bgr: bool = True) -> Callable[[object, Size], np.ndarray]:
    """Resize a BGR array (or, ``bgr=False``, an RGB array or PIL image) with ``cv2.resize``."""
    def finish(pixels, full: Size) -> np.ndarray:
        # cv2.resize takes no box: resize the whole image to the reference's size, then crop.
        nw, nh = reference_size(*full)
        small = cv2.resize(np.asarray(pixels), (nw, nh), interpolation=interpolation)
        top, left = (nh - SIDE) // 2, (nw - SIDE) // 2
        crop = small[top: top + SIDE, left: left + SIDE]
        return chw(crop[..., ::-1] if bgr else crop)  # BGR → RGB in chw's copy
    return finish


def timings(candidates: list[Candidate], blobs: list[bytes], repeats: int) -> tuple[list[float], float]:
    """Median CPU ms per image of each candidate, and wall time over CPU time for all passes.

    CPU time, not wall time: on a shared machine other processes' load then barely counts, and
    with one thread it is the per-core cost. Every repeat times all candidates, one after
    another, so drift in the machine's speed falls on all alike."""
    for c in candidates:  # warm up: caches, lazy imports, first-call allocations
        for data in blobs[:5]:
            c(data)
    runs: list[list[float]] = [[] for _ in candidates]
    wall = cpu = 0.0
    for _ in range(repeats):
        for c, run in zip(candidates, runs):
            t, t_cpu = time.perf_counter(), time.process_time()
            for data in blobs:
                c(data)
            spent = time.process_time() - t_cpu
            wall, cpu = wall + time.perf_counter() - t, cpu + spent
            run.append(spent / len(blobs) * 1e3)
    return [statistics.median(run) for run in runs], wall / cpu


def accuracy(candidates: list[Candidate], blobs: list[bytes], embedder, cos_n: int):
    """Per candidate: (decoded size of the first image, mean |Δ|, max |Δ|, number of differing
    values, cosines with the reference's embeddings) against candidate 1."""
    ref = [candidates[0](data) for data in blobs]
    ref_vecs = embed(embedder, ref[:cos_n])
    out = []
    for c in candidates:
        decoded = c.decode(blobs[0])[0]
        dw, dh = decoded.size if isinstance(decoded, Image.Image) else decoded.shape[1::-1]
        total = peak = differing = 0
        crops = []
        for data, r in zip(blobs, ref):
            crop = c(data)
            assert crop.shape == (3, SIDE, SIDE) and crop.dtype == np.uint8, (c.name, crop.shape)
            d = np.abs(crop.astype(np.int16) - r)
            total += int(d.sum())
            peak = max(peak, int(d.max()))
            differing += int(np.count_nonzero(d))
            if len(crops) < cos_n:
                crops.append(crop)
        cos = (embed(embedder, crops) * ref_vecs).sum(axis=1)
        out.append((f"{dw}x{dh}", total / (len(blobs) * r.size), peak, differing, cos))
    return out


def embed(embedder, crops: list[np.ndarray]) -> np.ndarray:
    batches = (np.stack(crops[i: i + 50]) for i in range(0, len(crops), 50))
    return np.concatenate([embedder.embed_images(b) for b in batches])


def exif_rotated_jpeg() -> bytes:
    """A 640x480 photo JPEG tagged EXIF orientation 6: displayed as 480x640."""
    _, img, _, _ = next(sample_photos(1, size=(640, 480)))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def exif_check(c: Candidate, reference: Candidate, data: bytes) -> Candidate:
    """``c`` with its EXIF column: does its crop of a rotated-tagged JPEG match the reference's?"""
    diff = np.abs(c(data).astype(np.int16) - reference(data)).mean()
    return Candidate(c.name, c.decode, c.finish, "applied" if diff < 5 else f"ignored (mean|Δ| {diff:.0f})")


def simplejpeg_status() -> str:
    try:
        import simplejpeg
    except ImportError:
        return "not installed"
    return simplejpeg.__version__


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def cv2_jpeg() -> str:
    line = next((s for s in cv2.getBuildInformation().splitlines() if s.strip().startswith("JPEG:")), "")
    return line.split(":", 1)[1].strip() if line else "JPEG build unknown"


if __name__ == "__main__":
    main()
