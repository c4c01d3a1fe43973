"""The moderation job: items → read → decode (image / video frames / text) → open_nsfw → OCR →
text classifiers → zero-shot CLIP → decision (→ judge) → Parquet shards, review queue, report."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field, ValidationError

from ..engine import make_engine
from ..errors import ConfigError, OutputDirError
from ..policy import Policy, load_policy
from ..records import Record
from ..sinks import OutputDir
from ..sources import open_source
from ..sources.options import MEDIA_KINDS
from ..stage import Resources, Stage
from ..stages.common import decode_stage
from ..stages.media import MediaOptions, decode_media
from ..stages.moderation import (ClipBatch, DecideBatch, JudgeBatch, NsfwBatch, OcrBatch, TextBatch,
                                 categories_of)
from .config import JobConfig
from .runner import JobResult, JobSpec, run_job

REVIEW = "review.jsonl"
REPORT = "report.html"


class ModerateConfig(JobConfig):
    """Every option of ``mmpipe moderate``; field names are the CLI flags with dashes."""

    policy: str | None = None  # None: the default policy shipped with mmpipe
    # Needed by policy categories with source: clip; hash: clip bank categories use their bank's.
    clip_model: str | None = None
    batch_size: int = Field(16, ge=1, le=1024)
    model_threads: int = Field(1, ge=1, le=256)
    fps: float = Field(1.0, gt=0, le=60)
    max_frames: int = Field(64, ge=1, le=10_000)
    max_side: int = Field(640, ge=32, le=8192)
    ocr: bool = True
    # OCR is the slowest model; a second single-threaded reader uses a core that one leaves idle.
    ocr_workers: int = Field(2, ge=1, le=64)
    escalate: bool | None = None  # None: as the policy says
    judge_url: str | None = None
    # int8: open_nsfw quantised by onnxruntime, used only if it passes the accuracy gate.
    nsfw_precision: Literal["fp32", "int8"] = "fp32"


def moderate(input: str, out: str, *, progress: bool | None = None, **options) -> JobResult:
    """Moderate every image, video and text of ``input`` into ``out`` (shards, review.jsonl,
    report.html). Options are the fields of ``ModerateConfig``; re-running resumes."""
    cfg = ModerateConfig.build(input=input, out=out, **options)
    engine = make_engine(cfg.engine, cfg.ray_address)
    policy = effective_policy(cfg)
    clip = load_policy_clip(cfg, policy)
    names = [c.name for c in policy.categories]
    job = JobSpec(
        label="moderate",
        signature=_signature(policy, cfg, clip),
        items=open_source(cfg.input, cfg.source_options(MEDIA_KINDS)),
        stages=moderation_stages(policy, cfg, clip),
        to_table=lambda records: moderation_table(records, names),
        manifest={"job": "moderate", "policy_file": cfg.policy or "default",
                  "categories": [{"name": c.name, "source": c.source, "review": c.review,
                                  "block": c.block, "media": list(c.media)} for c in policy.categories],
                  "clip_model": str(clip.spec) if clip else None,
                  "open_nsfw": nsfw_variant(policy, cfg),
                  "columns": moderation_schema(names).names},
    )
    result = run_job(job, Path(cfg.out), shard_size=cfg.shard_size, limit=cfg.limit,
                     overwrite=cfg.overwrite, progress=progress, engine=engine,
                     price_per_hour=cfg.price_per_hour)
    write_reports(result, policy)
    return result


def effective_policy(cfg: ModerateConfig) -> Policy:
    """The policy file with the command line's escalation flags applied (a judge URL alone turns
    escalation on), validated again so a bad --judge-url stops the job before it starts."""
    policy = load_policy(cfg.policy)
    changes = {}
    if cfg.judge_url:
        changes.update(url=cfg.judge_url, enabled=True)
    if cfg.escalate is not None:
        changes["enabled"] = cfg.escalate
    if not changes:
        return policy
    data = policy.model_dump()
    data["escalation"].update(changes)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("--judge-url", exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


def _signature(policy: Policy, cfg: ModerateConfig, clip) -> dict:
    """What makes rows comparable: a resume with another policy or sampling is refused; where the
    judge runs (URL, timeouts) may change between runs."""
    escalation = policy.escalation
    return {"job": "moderate", "input": cfg.input,
            "policy": policy.model_dump(mode="json", exclude={"escalation"}),
            "judge": {"enabled": escalation.enabled, "model": escalation.model,
                      "prompt": escalation.prompt} if escalation.enabled else None,
            "clip_model": str(clip.spec) if clip else None, "ocr": cfg.ocr, "fps": cfg.fps,
            "max_frames": cfg.max_frames, "max_side": cfg.max_side,
            "nsfw_precision": cfg.nsfw_precision}


def nsfw_variant(policy: Policy, cfg: ModerateConfig) -> dict | None:
    """The open_nsfw variant the job runs and its measured accuracy; an INT8 one is built (or
    found cached) and gated here, before any item is read."""
    if not categories_of(policy, "open_nsfw"):
        return None
    from ..models.open_nsfw import nsfw_model

    return nsfw_model(cfg.nsfw_precision, policy.thresholds("open_nsfw"))[1]


def load_policy_clip(cfg: ModerateConfig, policy: Policy):
    """The one CLIP model of the policy's zero-shot categories and of its hash: clip bank
    categories (whose banks record the model of their vectors): --clip-model, or else the banks'."""
    from ..bank import model_key
    from ..models import ModelSpec, load_embedder
    from ..stages.bank import clip_bank_model

    banked = clip_bank_model(policy)
    if not categories_of(policy, "clip") and banked is None:
        return None
    if cfg.clip_model is None and banked is None:
        raise ConfigError("--clip-model", "the policy has zero-shot (source: clip) categories "
                          f"({', '.join(c.name for c in categories_of(policy, 'clip'))}); "
                          "pass a CLIP checkpoint, e.g. --clip-model path:DIR")
    spec = ModelSpec.parse(cfg.clip_model or banked, "--clip-model")
    if banked is not None and model_key(spec) != banked:
        raise ConfigError("--clip-model", f"{spec} is not {banked}, the model of the bank vectors "
                          "that the policy's hash: clip categories match; pass that, or leave "
                          "--clip-model out to use it")
    return load_embedder(spec, cfg.device, "fp32", cfg.allow_pickle, device_here=cfg.engine == "local")


def clip_input(frame: np.ndarray, pre) -> np.ndarray:
    """A frame as the CLIP image tower's uint8 crop, made in the decode pool with the embed
    job's fast resize (of the crop only)."""
    return pre.image(Image.fromarray(frame), exact=False)


def moderation_stages(policy: Policy, cfg: ModerateConfig, clip=None) -> list[Stage]:
    """The stage list for ``policy``: a model runs only if a category needs it."""
    inputs = {}
    nsfw = bool(categories_of(policy, "open_nsfw"))
    if nsfw:
        from ..models.open_nsfw import preprocess as nsfw_input

        inputs["open_nsfw"] = nsfw_input
    if clip is not None:
        inputs["clip"] = partial(clip_input, pre=clip.preprocessor)
    media = MediaOptions(fps=cfg.fps, max_frames=cfg.max_frames, max_side=cfg.max_side,
                         max_pixels=cfg.max_pixels, model_inputs=inputs)
    model = Resources(num_cpus=cfg.model_threads)
    # Frames come back pickled (their sizes and counts vary), not through shared-memory slabs.
    stages = [decode_stage(partial(decode_media, opts=media), workers=cfg.decode_workers,
                           read_workers=cfg.read_workers, batch_size=cfg.batch_size,
                           in_processes=cfg.decode_processes and cfg.engine == "local")]
    if nsfw:
        stages.append(Stage("open_nsfw", lambda: NsfwBatch(policy, cfg.model_threads, cfg.nsfw_precision),
                            batch_size=cfg.batch_size, resources=model))
    text_sources = categories_of(policy, "profanity", "words")
    if cfg.ocr and any(set(c.media) & {"image", "video"} for c in text_sources):
        stages.append(Stage("ocr", lambda: OcrBatch(cfg.model_threads), batch_size=1,
                            concurrency=cfg.ocr_workers, resources=model))
    if text_sources:
        stages.append(Stage("text", lambda: TextBatch(policy), batch_size=64))
    if clip is not None:
        vectors = any(c.hash == "clip" for c in categories_of(policy, "bank"))
        stages.append(Stage("clip", lambda: ClipBatch(policy, clip, keep_vectors=vectors),
                            batch_size=cfg.batch_size, resources=model))
    if categories_of(policy, "bank"):
        from ..stages.bank import BankBatch, bank_categories

        banks = bank_categories(policy)
        stages.append(Stage("bank", lambda: BankBatch(banks), batch_size=cfg.batch_size))
    judge = policy.escalation.enabled
    stages.append(Stage("decide", lambda: DecideBatch(policy, keep_frames=judge), batch_size=16))
    if judge:
        stages.append(Stage("judge", lambda: JudgeBatch(policy), batch_size=policy.escalation.concurrency * 2,
                            resources=Resources(num_cpus=0.25)))
    return stages


SEGMENT = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("category", pa.string()),
                     ("score", pa.float32())])


def moderation_schema(categories: Sequence[str]) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()), ("uri", pa.string()), ("media_type", pa.string()), ("text", pa.string()),
        *[(f"score_{name}", pa.float32()) for name in categories],
        ("flagged", pa.bool_()), ("action", pa.string()), ("reasons", pa.list_(pa.string())),
        ("segments", pa.list_(SEGMENT)), ("ocr_text", pa.string()), ("judge", pa.string()),
        ("error", pa.string()), ("thumbnail", pa.binary()), ("width", pa.int32()),
        ("height", pa.int32()), ("duration_s", pa.float64()), ("frames", pa.int32()),
        ("text_truncated", pa.bool_()),
        ("bank_match", pa.string()),  # JSON: the nearest bank entry of each matching bank category
    ])


def moderation_table(records: Sequence[Record], categories: Sequence[str]) -> pa.Table:
    rows = []
    for r in records:
        out = getattr(r, "outputs", None) or {}
        ok = r.error is None
        scores = out.get("scores", {})
        rows.append({
            "id": r.id, "uri": r.uri, "media_type": getattr(r, "media_type", None) if ok else None,
            "text": r.text,
            **{f"score_{name}": scores.get(name) for name in categories},
            "flagged": out.get("flagged") if ok else None, "action": out.get("action") if ok else None,
            "reasons": out.get("reasons", []) if ok else [],
            "segments": [{"start": s.start, "end": s.end, "category": s.category, "score": s.score}
                         for s in out.get("segments", [])],
            "ocr_text": out.get("ocr_text"), "judge": out.get("judge"), "error": r.error,
            "thumbnail": out.get("thumbnail"), "width": getattr(r, "width", None),
            "height": getattr(r, "height", None), "duration_s": out.get("duration_s"),
            "frames": out.get("frames"),
            "text_truncated": bool(out.get("text_truncated") or getattr(r, "text_truncated", False)),
            "bank_match": out.get("bank_match"),
        })
    return pa.Table.from_pylist(rows, schema=moderation_schema(categories))


def write_reports(result: JobResult, policy: Policy) -> None:
    """review.jsonl and report.html over every committed row, so a resumed job's are complete."""
    from ..report import write_report, write_review_queue

    out = OutputDir(result.out)
    try:
        table = out.read_table()
    except OutputDirError:  # no shards: an empty input
        table = moderation_schema([c.name for c in policy.categories]).empty_table()
    thresholds = [(c.name, c.review, c.block) for c in policy.categories]
    result.manifest["review_items"] = write_review_queue(table, thresholds, out.path / REVIEW)
    actions = Counter(a for a in table["action"].to_pylist())
    result.manifest["actions"] = {k: v for k, v in actions.items() if k}
    write_report(table, thresholds, out.path / REPORT, summary=result.manifest)
