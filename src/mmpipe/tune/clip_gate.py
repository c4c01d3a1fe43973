"""A CLIP variant as a job or the server gets it: measured against eager fp32 on the fixed
evaluation set, refused below the accuracy gate, its figures cached beside the checkpoint's
other derived files so the next run with the same weights does not measure again."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from ..models.clip import LoadedClip
from ..models.variants import ClipVariant, Variant
from . import eval_set
from .accuracy import Accuracy, Gate, embedding_accuracy, enforce
from .cache import atomic_path

BATCH = 16  # the jobs' default batch size, so a compiled variant compiles the shape jobs use


def gated_variant(clip: LoadedClip, variant: Variant, gate: Gate = Gate()) -> ClipVariant:
    """``clip`` (loaded in ``variant.weights_precision``) wrapped as ``variant``, with its
    accuracy; raises ``AccuracyGateError`` with the failing figure when it is below ``gate``."""
    variant.check(clip.device)
    wrapped = ClipVariant.wrap(clip, variant)
    if variant.is_reference:
        return wrapped
    figures = _cached(wrapped) or _measure(wrapped)
    for tower, accuracy in figures.items():
        enforce(f"{variant} ({tower} embeddings of {clip.spec})", accuracy, gate)
    return replace(wrapped, accuracy={tower: a.to_dict() for tower, a in figures.items()})


def _measure(clip: ClipVariant) -> dict[str, Accuracy]:
    pre = clip.preprocessor
    pixels = np.stack([pre.image(img) for img in eval_set.evaluation_images()])
    tokens = [pre.text(c) for c in eval_set.evaluation_captions()]
    reference = replace(clip, precision="fp32", variant=Variant()).make_embedder()
    want = _embed(reference, pixels, tokens)
    del reference
    got = _embed(clip.make_embedder(), pixels, tokens)
    figures = {tower: embedding_accuracy(want[tower], got[tower]) for tower in want}
    with atomic_path(_path(clip)) as tmp:
        tmp.write_text(json.dumps({"eval_set": eval_set.VERSION,
                                   **{tower: a.to_dict() for tower, a in figures.items()}}))
    return figures


def _embed(embedder, pixels: np.ndarray, tokens: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {"image": np.concatenate([embedder.embed_images(pixels[i: i + BATCH])
                                     for i in range(0, len(pixels), BATCH)]),
            "text": np.concatenate([embedder.embed_texts(tokens[i: i + BATCH])
                                    for i in range(0, len(tokens), BATCH)])}


def _cached(clip: ClipVariant) -> dict[str, Accuracy] | None:
    try:
        data = json.loads(_path(clip).read_text())
    except (OSError, ValueError):
        return None
    if data.pop("eval_set", None) != eval_set.VERSION:
        return None
    return {tower: Accuracy.from_dict(figures) for tower, figures in data.items()}


def _path(clip: ClipVariant):
    where = clip.device.replace(":", "")  # bf16 on a GPU and on a CPU round differently
    return clip.cache / f"accuracy-{clip.variant.precision}-{clip.variant.runtime}-{where}.json"
