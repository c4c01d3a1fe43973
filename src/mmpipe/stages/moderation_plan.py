"""What a moderation policy needs run: the policy as a job or the server configures it, its CLIP
model, and its stage list (a model runs only if a category needs it)."""

from __future__ import annotations

from functools import partial

from ..config import validate
from ..errors import ConfigError
from ..stage import Resources, Stage
from .checks import SOURCES, ModerationOptions, ModerationPolicy, categories_of, load_moderation_policy
from .checks.bank import clip_bank_model
from .common import decode_stage
from .media import MediaOptions, decode_media
from .moderation import DecideBatch, JudgeBatch, OcrBatch, TextBatch


def effective_policy(path: str | None, escalate: bool | None = None,
                     judge_url: str | None = None) -> ModerationPolicy:
    """The policy file with the command line's escalation flags applied (a judge URL alone turns
    escalation on), validated again so a bad --judge-url stops the job before it starts."""
    policy = load_moderation_policy(path)
    changes = {}
    if judge_url:
        changes.update(url=judge_url, enabled=True)
    if escalate is not None:
        changes["enabled"] = escalate
    if not changes:
        return policy
    data = policy.model_dump()
    data["escalation"].update(changes)
    return validate(ModerationPolicy, data, flag_of=lambda loc: "--judge-url", plain=True)


def load_policy_clip(policy: ModerationPolicy, clip_model: str | None, *, device: str = "cpu",
                     allow_pickle: bool = False, device_here: bool = True):
    """The one CLIP model of the policy's zero-shot categories and of its hash: clip bank
    categories (whose banks record the model of their vectors): ``clip_model`` (--clip-model),
    or else the banks'."""
    from ..bank import model_key
    from ..models import ModelSpec, load_embedder

    banked = clip_bank_model(policy)
    if not categories_of(policy, "clip") and banked is None:
        return None
    if clip_model is None and banked is None:
        raise ConfigError("--clip-model", "the policy has zero-shot (source: clip) categories "
                          f"({', '.join(c.name for c in categories_of(policy, 'clip'))}); "
                          "pass a CLIP checkpoint, e.g. --clip-model path:DIR")
    spec = ModelSpec.parse(clip_model or banked, "--clip-model")
    if banked is not None and model_key(spec) != banked:
        raise ConfigError("--clip-model", f"{spec} is not {banked}, the model of the bank vectors "
                          "that the policy's hash: clip categories match; pass that, or leave "
                          "--clip-model out to use it")
    return load_embedder(spec, device, "fp32", allow_pickle, device_here=device_here)


def moderation_stages(policy: ModerationPolicy, opts: ModerationOptions, clip=None) -> list[Stage]:
    """Decode, then each source's stage in registry order (the text sources share OCR and the
    text stage, where the first of them stands), then the decision (and the judge)."""
    inputs = {s.name: f for s in SOURCES if s.frame_input and (f := s.frame_input(policy, clip))}
    media = MediaOptions(fps=opts.fps, max_frames=opts.max_frames, max_side=opts.max_side,
                         max_pixels=opts.max_pixels, model_inputs=inputs)
    # Frames come back pickled (their sizes and counts vary), not through shared-memory slabs.
    stages = [decode_stage(partial(decode_media, opts=media), workers=opts.decode_workers,
                           read_workers=opts.read_workers, batch_size=opts.batch_size,
                           in_processes=opts.decode_processes and opts.engine_local)]
    texts = [s for s in SOURCES if s.text_scorer is not None]
    first_text = texts[0] if texts else None
    for source in SOURCES:
        if source is first_text:
            stages += _text_stages(policy, opts, texts)
        elif source.stage is not None and (stage := source.stage(policy, opts, clip)) is not None:
            stages.append(stage)
    judge = policy.escalation.enabled
    stages.append(Stage("decide", lambda: DecideBatch(policy, keep_frames=judge), batch_size=16))
    if judge:
        stages.append(Stage("judge", lambda: JudgeBatch(policy), batch_size=policy.escalation.concurrency * 2,
                            resources=Resources(num_cpus=0.25)))
    return stages


def _text_stages(policy: ModerationPolicy, opts: ModerationOptions, texts: list) -> list[Stage]:
    """OCR (when a text category applies to images or video) and the text sources' scorers."""
    categories = categories_of(policy, *(s.name for s in texts))
    if not categories:
        return []
    stages = []
    if opts.ocr and any(set(c.media) & {"image", "video"} for c in categories):
        stages.append(Stage("ocr", lambda: OcrBatch(opts.model_threads), batch_size=1,
                            concurrency=opts.ocr_workers, resources=Resources(num_cpus=opts.model_threads)))
    stages.append(Stage("text", lambda: TextBatch(
        [scorer for s in texts if (scorer := s.text_scorer(policy)) is not None]), batch_size=64))
    return stages
