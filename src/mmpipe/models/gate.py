"""An embedder's variant as a job or the server gets it: measured against eager fp32 on the fixed
evaluation set, refused below the accuracy gate, its figures cached beside the checkpoint's
other derived files so the next run with the same weights does not measure again."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_path
from . import eval_set
from .accuracy import Accuracy, Gate, embedding_accuracy, enforce
from .embedder import LoadedEmbedder
from .variants import EmbedderVariant, Variant

BATCH = 16  # the jobs' default batch size, so a compiled variant compiles the shape jobs use


def gated_variant(loaded: LoadedEmbedder, variant: Variant, gate: Gate = Gate()) -> EmbedderVariant:
    """``loaded`` (in ``variant.weights_precision``) wrapped as ``variant``, with its accuracy;
    raises ``AccuracyGateError`` with the failing figure when it is below ``gate``."""
    variant.check(loaded.device)
    wrapped = EmbedderVariant.wrap(loaded, variant)
    if variant.is_reference:
        return wrapped
    figures = measured(accuracy_path(wrapped.cache, variant, loaded.device), partial(_measure, wrapped))
    return replace(wrapped, accuracy=enforced(figures, variant, loaded.spec, gate))


def measured(path: Path, measure: Callable[[], dict[str, Accuracy]]) -> dict[str, Accuracy]:
    """The figures cached at ``path`` (made on this evaluation set), else ``measure()``'s, cached."""
    try:
        data = json.loads(path.read_text())
        if data.pop("eval_set", None) == eval_set.VERSION:
            return {tower: Accuracy.from_dict(figures) for tower, figures in data.items()}
    except (OSError, ValueError):
        pass
    figures = measure()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"eval_set": eval_set.VERSION,
                                   **{tower: a.to_dict() for tower, a in figures.items()}}))
    return figures


def enforced(figures: dict[str, Accuracy], variant: Variant, spec, gate: Gate) -> dict[str, dict]:
    """``figures`` as a manifest records them; raises ``AccuracyGateError`` below ``gate``."""
    for tower, accuracy in figures.items():
        enforce(f"{variant} ({tower} embeddings of {spec})", accuracy, gate)
    return {tower: a.to_dict() for tower, a in figures.items()}


def accuracy_path(cache: Path, variant: Variant, device: str) -> Path:
    where = device.replace(":", "")  # bf16 on a GPU and on a CPU round differently
    return cache / f"accuracy-{variant.precision}-{variant.runtime}-{where}.json"


def gated_embedder(loaded: LoadedEmbedder, variant: Variant, gate: Gate, batch_size: int,
                   run_once: Callable[[Callable[[], EmbedderVariant]], EmbedderVariant]) -> EmbedderVariant:
    """``gated_variant`` measured by ``run_once`` where the model stages run (a GPU node when
    they need one), its compiled shape the stages' ``batch_size``."""
    if variant.is_reference:  # nothing to measure, so no need to go where the model runs
        return EmbedderVariant.wrap(loaded, variant)
    return replace(run_once(partial(gated_variant, loaded, variant, gate)), image_batch=batch_size)


def _measure(wrapped: EmbedderVariant) -> dict[str, Accuracy]:
    pre = wrapped.preprocessor
    pixels = np.stack([pre.image(img) for img in eval_set.evaluation_images()])
    tokens = [pre.text(c) for c in eval_set.evaluation_captions()]
    reference = replace(wrapped, precision="fp32", variant=Variant()).make_embedder()
    want = _embed(reference, pixels, tokens)
    del reference
    got = _embed(wrapped.make_embedder(), pixels, tokens)
    return {tower: embedding_accuracy(want[tower], got[tower]) for tower in want}


def _embed(embedder, pixels: np.ndarray, tokens: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {"image": np.concatenate([embedder.embed_images(pixels[i: i + BATCH])
                                     for i in range(0, len(pixels), BATCH)]),
            "text": np.concatenate([embedder.embed_texts(tokens[i: i + BATCH])
                                    for i in range(0, len(tokens), BATCH)])}
