"""The moderation job: items → read → decode (image / video frames / text) → open_nsfw → OCR →
text classifiers → zero-shot CLIP → decision (→ judge) → Parquet shards, review queue, report."""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Literal, Sequence

import pyarrow as pa
from pydantic import Field, model_validator

from ..engine import make_engine
from ..errors import ConfigError, OutputDirError
from ..extras import require
from ..policy import Policy
from ..records import Decoded, Item, Record
from ..sinks import OutputDir
from ..sources.kafka_url import parse_kafka_url
from ..sources.options import MEDIA_KINDS
from ..stages.checks import ModerationOptions, ModerationPolicy, categories_of
from ..stages.moderation_plan import effective_policy, load_policy_clip, moderation_stages
from .config import JobConfig
from .runner import JobResult, JobSpec
from .start import job_input, run_configured

if TYPE_CHECKING:
    from ..sinks.kafka_emit import DecisionEmitter

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
    # kafka://HOST:PORT/TOPIC: each committed row's decision as JSON there (sinks.kafka_emit).
    emit: str | None = None

    @model_validator(mode="after")
    def _emit_fits(self):
        if self.emit is not None:
            if not self.follow:
                raise ConfigError("--emit", "sends a follower's decisions as its shards commit; "
                                            "add --follow")
            parse_kafka_url(self.emit, "--emit")
            require("--emit kafka://", "kafka")
        return self


def moderate(input: str, out: str, *, progress: bool | None = None, stop: threading.Event | None = None,
             **options) -> JobResult:
    """Moderate every image, video and text of ``input`` into ``out`` (shards, review.jsonl,
    report.html). Options are the fields of ``ModerateConfig``; re-running resumes; with
    ``follow=True`` it keeps moderating a folder's new files, or a Kafka topic's messages, until
    SIGTERM, Ctrl-C or ``stop`` is set (from any thread)."""
    cfg = ModerateConfig.build(input=input, out=out, **options)
    engine = make_engine(cfg.engine, cfg.ray_address)
    policy = effective_policy(cfg.policy, cfg.escalate, cfg.judge_url)
    clip = load_policy_clip(policy, cfg.clip_model, device=cfg.device, allow_pickle=cfg.allow_pickle,
                            device_here=cfg.engine == "local")
    names = [c.name for c in policy.categories]
    job = JobSpec(
        label="moderate",
        signature=_signature(policy, cfg, clip),
        items=job_input(cfg, MEDIA_KINDS),
        stages=moderation_stages(policy, moderation_options(cfg), clip),
        to_table=lambda records: moderation_table(records, names),
        manifest={"job": "moderate", "policy_file": cfg.policy or "default",
                  "categories": [{"name": c.name, "source": c.source, "review": c.review,
                                  "block": c.block, "media": list(c.media)} for c in policy.categories],
                  "clip_model": str(clip.spec) if clip else None,
                  "open_nsfw": nsfw_variant(policy, cfg),
                  "columns": moderation_schema(names).names},
    )
    result = run_configured(job, cfg, engine, progress, emitter=decision_emitter(cfg), stop=stop)
    write_reports(result, policy)
    return result


def decision_emitter(cfg: ModerateConfig) -> DecisionEmitter | None:
    if cfg.emit is None:
        return None
    from ..sinks.kafka_emit import DecisionEmitter  # the kafka extra's, imported only when used

    return DecisionEmitter(parse_kafka_url(cfg.emit, "--emit"))


def _signature(policy: ModerationPolicy, cfg: ModerateConfig, clip) -> dict:
    """What makes rows comparable: a resume with another policy or sampling is refused; where the
    judge runs (URL, timeouts) may change between runs."""
    escalation = policy.escalation
    return {"job": "moderate", "input": cfg.input,
            "policy": signed_policy(policy),
            "judge": {"enabled": escalation.enabled, "model": escalation.model,
                      "prompt": escalation.prompt} if escalation.enabled else None,
            "clip_model": str(clip.spec) if clip else None, "ocr": cfg.ocr, "fps": cfg.fps,
            "max_frames": cfg.max_frames, "max_side": cfg.max_side,
            "nsfw_precision": cfg.nsfw_precision}


# Every category's dump held these fields when one class had every source's fields: a folder
# written then resumes only if its signature still reads the same.
FORMER_CATEGORY_FIELDS = {"words": [], "word_lists": [], "patterns": [], "prompts": None,
                          "temperature": 100.0, "bank": None, "hash": "pdq", "max_distance": None,
                          "min_similarity": None}


def signed_policy(policy: ModerationPolicy) -> dict:
    """The policy as a job's signature records it (the judge's settings apart)."""
    data = policy.model_dump(mode="json", exclude={"escalation"})
    data["categories"] = [{**FORMER_CATEGORY_FIELDS, **c} for c in data["categories"]]
    return data


def nsfw_variant(policy: ModerationPolicy, cfg: ModerateConfig) -> dict | None:
    """The open_nsfw variant the job runs and its measured accuracy; an INT8 one is built (or
    found cached) and gated here, before any item is read."""
    if not categories_of(policy, "open_nsfw"):
        return None
    from ..models.open_nsfw_int8 import nsfw_model

    return nsfw_model(cfg.nsfw_precision, policy.thresholds("open_nsfw"))[1]


def moderation_options(cfg: ModerateConfig) -> ModerationOptions:
    return ModerationOptions(
        batch_size=cfg.batch_size, model_threads=cfg.model_threads, fps=cfg.fps,
        max_frames=cfg.max_frames, max_side=cfg.max_side, max_pixels=cfg.max_pixels, ocr=cfg.ocr,
        ocr_workers=cfg.ocr_workers, nsfw_precision=cfg.nsfw_precision,
        decode_workers=cfg.decode_workers, decode_processes=cfg.decode_processes,
        read_workers=cfg.read_workers, engine_local=cfg.engine == "local")


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
    return pa.Table.from_pylist([_row(r, categories) for r in records],
                                schema=moderation_schema(categories))


def _row(r: Record, categories: Sequence[str]) -> dict:
    decoded = isinstance(r, Decoded)
    m = r.moderation if decoded else None  # None: an error row
    o = m.outcome if m is not None else None
    return {
        "id": r.id, "uri": r.uri, "media_type": m.media_type if m else None, "text": r.text,
        **{f"score_{name}": o.scores.get(name) if o else None for name in categories},
        "flagged": o.flagged if o else None, "action": o.action if o else None,
        "reasons": list(o.reasons) if o else [],
        "segments": [{"start": s.start, "end": s.end, "category": s.category, "score": s.score}
                     for s in (o.segments if o else ())],
        "ocr_text": o.ocr_text if o else None, "judge": o.judge if o else None, "error": r.error,
        "thumbnail": o.thumbnail if o else None, "width": r.width if decoded else None,
        "height": r.height if decoded else None, "duration_s": m.duration_s if m else None,
        "frames": o.frames if o else None,
        # An item that failed before decoding still says whether its source cut its text.
        "text_truncated": m.text_truncated if m else isinstance(r, Item) and r.text_truncated,
        "bank_match": m.bank_match if m else None,
    }


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
