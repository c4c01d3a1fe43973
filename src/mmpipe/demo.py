"""``mmpipe demo``: a sample set (photos, images with rendered text, short videos, comments) →
``mmpipe.moderate`` with the real offline models → report.html; then the photos →
``mmpipe.embed`` → embedding shards, with a guide to both.

Works offline: moderation's models ship in their packages. When the default CLIP model cannot be
loaded (no model hub reachable) the embedding step says so in one line and falls back to
``random:ViT-B-32``, which the summary and the manifest label as random.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ModelLoadError
from .jobs.embed import embed
from .jobs.moderate import REPORT, moderate
from .jobs.runner import JobResult
from .models import DEFAULT_CLIP
from .sample_data import sample_folder_params
from .sample_moderation import make_moderation_samples
from .sinks import OutputDir
from .sinks.output_dir import MANIFEST, STATS

FALLBACK_MODEL = "random:ViT-B-32"
SAMPLES = "samples"
MODERATION = "moderation"
EMBEDDINGS = "embeddings"


@dataclass
class DemoResult:
    job: JobResult
    images: Path  # the sample photos
    made_images: bool  # False when an earlier run had made them already
    model: str  # the model that ran
    fell_back: bool  # True when ``model`` is the fallback
    moderation: JobResult | None = None


def run_demo(out: str | Path, n: int = 120, model: str = DEFAULT_CLIP, progress: bool | None = None,
             *, overwrite: bool = False, fallback: str | None = None, moderation: bool = True,
             notify: Callable[[str], None] | None = None) -> DemoResult:
    """Make the sample set with ``n`` photos under ``out/samples`` (once), moderate all of it into
    ``out/moderation`` (unless ``moderation`` is False) and embed the photos into
    ``out/embeddings`` (both resume, unless ``overwrite``).

    If ``model`` cannot be loaded (``ModelLoadError``), ``fallback`` runs instead, after one line
    to ``notify`` (stderr by default). ``fallback`` defaults to ``random:ViT-B-32`` for the
    default model and to none (the error propagates) for any other.
    """
    notify = notify or (lambda line: print(line, file=sys.stderr))
    if fallback is None and model == DEFAULT_CLIP:
        fallback = FALLBACK_MODEL
    out = Path(out)
    images = out / SAMPLES / "photos"
    before = sample_folder_params(images)
    manifest = make_moderation_samples(out / SAMPLES, n_photos=n)
    made = sample_folder_params(images) != before
    what = (f"{n} photos (+2 broken files), images with rendered text, 3 short videos and comments, "
            f"listed in {manifest}")
    notify(f"made {what}" if made else f"using the sample set already there: {what}")
    moderated = None
    if moderation:
        moderated = moderate(str(manifest), str(out / MODERATION), overwrite=overwrite, progress=progress)

    target = str(out / EMBEDDINGS)
    try:
        job = embed(str(images), target, model=model, overwrite=overwrite, progress=progress)
        ran, fell_back = model, False
    except ModelLoadError as exc:
        if not fallback:
            raise
        which = "the default model" if model == DEFAULT_CLIP else "the model"
        reason = str(exc).split("; ")[0]
        label = " (random weights: the embeddings are not meaningful)" if fallback.startswith("random:") else ""
        notify(f"could not load {which} {model}: {reason}; falling back to {fallback}{label}")
        job = embed(str(images), target, model=fallback, overwrite=overwrite, progress=progress)
        ran, fell_back = fallback, True
    return DemoResult(job=job, images=images, made_images=made, model=ran, fell_back=fell_back,
                      moderation=moderated)


def describe_output(result: DemoResult) -> list[str]:
    """Lines saying where the output is and how to read it."""
    folder = OutputDir(result.job.out)
    shards = [p.name for p in folder.shards()]
    rows = result.job.manifest.get("counts", {}).get("rows", 0)
    if len(shards) <= 2:
        shard_names = ", ".join(shards) or "(no shards)"
    else:
        shard_names = f"{shards[0]} … {shards[-1]}"
    width = max(len(shard_names), len(MANIFEST), len(STATS))
    lines = []
    if result.moderation is not None:
        mod = result.moderation.out
        lines += [f"moderation in {mod}/: part-*.parquet (scores, action, reasons, segments, OCR text), "
                  "review.jsonl (the review queue, worst first)",
                  f"  open the report: {mod / REPORT}"]
    return lines + [
        f"embeddings in {folder.path}/",
        f"  {shard_names:<{width}}  {rows} rows in {len(shards)} shard{'s' * (len(shards) != 1)}: "
        "id, uri, text, image_embedding, text_embedding, width, height, error",
        f"  {MANIFEST:<{width}}  model {result.model}, random_weights, dimension, row/ok/error counts",
        f"  {STATS:<{width}}  items/s, model setup time, per-stage busy share, bottleneck stage",
        "read it in Python:",
        "  import mmpipe",
        f"  table = mmpipe.read_output({str(folder.path)!r})  # a pyarrow.Table, one row per image",
    ]
