"""Moderation's model stages and the decision stage, built from a policy.

Every stage works on a batch of ``Decoded`` records and adds to ``record.outputs``:

- ``frame_scores[category]``: one score per frame (NSFW, zero-shot CLIP, and text categories
  on each frame's OCR text);
- ``text_scores[category]``: the score of the item's own text (a text item, or a caption);
- ``ocr``: the text read in each frame; ``matches[category]``: the words a list matched;
- ``vectors:clip``: each frame's CLIP image vector, for the bank stage's clip categories.

The decision stage turns those into per-category item scores, segments, an action and reasons,
and drops the frames so that the sink buffers only small rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from ..policy import Decision, Policy, WordMatcher, aggregate, apply_verdict, decide, uncertain
from ..records import Decoded
from .media import jpeg

THUMB_SIDE = 160
VISUAL = ("image", "video")
# Not a category name (those have no colon), so it cannot meet one in score dicts.
FRAME_VECTORS = "vectors:clip"


def categories_of(policy: Policy, *sources: str) -> list:
    return [c for c in policy.categories if c.source in sources]


def _visual(batch: Sequence[Decoded]) -> list[Decoded]:
    return [r for r in batch if r.media_type in VISUAL and r.frames]


def _score_frames(batch: Sequence[Decoded], key: str, score) -> None:
    """Run ``score`` once over the prepared inputs ``key`` of every frame in the batch; give each
    record its slice as ``frame_scores`` (and of ``FRAME_VECTORS``, when ``score`` returns them,
    as ``outputs[FRAME_VECTORS]``). Inputs are dropped only after success, because a failed
    batch is retried item by item."""
    records = _visual(batch)
    if not records:
        return
    scores = score(np.concatenate([r.outputs[key] for r in records]))
    vectors = scores.pop(FRAME_VECTORS, None)
    start = 0
    for r in records:
        del r.outputs[key]
        frames = slice(start, start + len(r.frames))
        frame_scores = r.outputs.setdefault("frame_scores", {})
        for name, values in scores.items():
            frame_scores[name] = values[frames]
        if vectors is not None:
            r.outputs[FRAME_VECTORS] = vectors[frames]
        start += len(r.frames)


class NsfwBatch:
    """open_nsfw over every frame of the batch's images and videos, in model-sized chunks."""

    def __init__(self, policy: Policy, threads: int | None, precision: str = "fp32"):
        from ..models.open_nsfw import NsfwScorer, nsfw_model

        path, _ = nsfw_model(precision, policy.thresholds("open_nsfw"))
        self.scorer = NsfwScorer(threads=threads, model_path=path)
        self.names = [c.name for c in categories_of(policy, "open_nsfw")]

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        _score_frames(batch, "input:open_nsfw",
                      lambda x: dict.fromkeys(self.names, self.scorer.score(x)))
        return list(batch)


class OcrBatch:
    """Text in every frame, so that text categories can judge what an image or video shows."""

    def __init__(self, threads: int | None):
        from ..models.ocr import OcrReader

        self.reader = OcrReader(threads=threads)

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        for r in _visual(batch):
            r.outputs["ocr"] = [self.reader.read_text(frame) for frame in r.frames]
        return list(batch)


class TextBatch:
    """Offensive-language classifier and word lists over item texts and OCR texts, batched."""

    def __init__(self, policy: Policy):
        self.profanity = categories_of(policy, "profanity")
        self.words = {c.name: WordMatcher(policy.words_of(c), c.patterns)
                      for c in categories_of(policy, "words")}
        self.scorer = None
        if self.profanity:
            from ..models.profanity import ProfanityScorer

            self.scorer = ProfanityScorer()

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        # Every text of the batch in one list: item texts first, then each frame's OCR text.
        texts, owners = [], []
        for r in batch:
            if r.text:
                texts.append(r.text)
                owners.append((r, None))
            for i, seen in enumerate(r.outputs.get("ocr") or ()):
                texts.append(seen)
                owners.append((r, i))
        probs = self.scorer.score(texts) if self.scorer and texts else np.zeros(len(texts))
        for r in batch:
            frames = len(r.frames or ())
            for c in self.profanity:
                r.outputs.setdefault("frame_scores", {})[c.name] = np.zeros(frames, np.float32)
            for name in self.words:
                r.outputs.setdefault("frame_scores", {})[name] = np.zeros(frames, np.float32)
        for text, (r, frame), p in zip(texts, owners, probs):
            found = {name: m.find(text) for name, m in self.words.items()}
            for c in self.profanity:
                _record_text_score(r, c.name, frame, float(p))
            for name, hits in found.items():
                if hits:
                    _record_text_score(r, name, frame, 1.0)
                    matches = r.outputs.setdefault("matches", {}).setdefault(name, [])
                    matches.extend(h for h in hits if h not in matches)
        return list(batch)


def _record_text_score(r: Decoded, name: str, frame: int | None, score: float) -> None:
    if frame is None:
        scores = r.outputs.setdefault("text_scores", {})
        scores[name] = max(scores.get(name, 0.0), score)
    else:
        r.outputs["frame_scores"][name][frame] = max(r.outputs["frame_scores"][name][frame], score)


class ClipBatch:
    """Every frame through the CLIP image tower once: categories defined by CLIP prompts are
    scored here, and with ``keep_vectors`` the vectors stay on the record for the bank stage's
    clip categories."""

    def __init__(self, policy: Policy, clip, keep_vectors: bool = False):
        from ..models.zero_shot import ZeroShotClip

        cats = categories_of(policy, "clip")
        self.embedder = clip.make_embedder()
        self.zero_shot = ZeroShotClip(self.embedder, clip.preprocessor,
                                      {c.name: (c.prompts.positive, c.prompts.negative) for c in cats},
                                      temperature={c.name: c.temperature for c in cats})
        self.keep_vectors = keep_vectors

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        _score_frames(batch, "input:clip", self.score)
        return list(batch)

    def score(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        vectors = self.embedder.embed_images(pixels)
        scores = self.zero_shot.score_vectors(vectors)
        return {**scores, FRAME_VECTORS: vectors} if self.keep_vectors else scores


class DecideBatch:
    """Scores → item scores, segments, action and reasons; frames are dropped after this."""

    def __init__(self, policy: Policy, keep_frames: bool = False):
        self.policy = policy
        self.keep_frames = keep_frames  # the judge stage after this one still needs them

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        return [self.decide(r) for r in batch]

    def decide(self, r: Decoded) -> Decoded:
        out = r.outputs
        frame_scores = {k: np.asarray(v, np.float32) for k, v in out.pop("frame_scores", {}).items()}
        scores: dict[str, float | None] = {}
        segments = []
        if r.frames:
            scores, segments = aggregate(r.timestamps, frame_scores, self.policy)
            scores = {k: float(v) for k, v in scores.items()}
        for name, value in out.pop("text_scores", {}).items():
            scores[name] = max(scores.get(name, 0.0), value)
        applies = {c.name: r.media_type in c.media for c in self.policy.categories}
        scores = {c.name: (scores.get(c.name, 0.0) if applies[c.name] else None)
                  for c in self.policy.categories}
        decision = decide(self.policy, r.media_type, scores)
        reasons = list(decision.reasons)
        if out.pop("frames_capped", False):
            reasons.append(f"only the first {len(r.frames)} frames were checked (--max-frames)")
        for name, hits in out.pop("matches", {}).items():
            if applies.get(name):
                reasons.append(f"{name}: matched {', '.join(repr(h) for h in hits[:5])}")
        out.update(scores=scores, action=decision.action, flagged=decision.flagged, reasons=reasons,
                   segments=segments if r.media_type == "video" else [],
                   # A block stands: the judge only settles items the models left for review.
                   uncertain=uncertain(self.policy, r.media_type, scores)
                   if decision.action != "block" else [])
        if r.frames:
            worst = _worst_frame(frame_scores, self.policy, len(r.frames))
            out["worst_frame"] = worst
            out["thumbnail"] = jpeg(r.frames[worst], max_side=THUMB_SIDE)
            out["frames"] = len(r.frames)
            out["ocr_text"] = _ocr_text(out.get("ocr"), r.timestamps, r.media_type)
        if not self.keep_frames:
            r.frames = None
        return r


def _worst_frame(frame_scores: dict[str, np.ndarray], policy: Policy, n: int) -> int:
    """The frame closest to (or furthest past) a block threshold, in any category."""
    worst = np.zeros(n, np.float32)
    for c in policy.categories:
        values = frame_scores.get(c.name)
        if values is not None and len(values) == n:
            worst = np.maximum(worst, values / max(c.block, 1e-6))
    return int(np.argmax(worst)) if n else 0


def _ocr_text(ocr: list[str] | None, timestamps: list[float] | None, media_type: str) -> str | None:
    if not ocr or not any(ocr):
        return None
    if media_type != "video":
        return "\n".join(t for t in ocr if t)
    # Consecutive frames usually show the same caption: list each text once, where it starts.
    lines, last = [], None
    for t, text in zip(timestamps, ocr):
        if text and text != last:
            lines.append(f"[{int(t) // 60:02d}:{int(t) % 60:02d}] {text}")
        last = text
    return "\n".join(lines)


class JudgeBatch:
    """Escalate the uncertain items of a batch to an LLM judge, a few at a time."""

    def __init__(self, policy: Policy):
        from ..judge import Judge, JudgeConfig, JudgeRequest

        esc = policy.escalation
        self.max_frames = esc.max_frames
        self.request = JudgeRequest
        api_key = os.environ.get(esc.api_key_env) if esc.api_key_env else None
        settings = esc.model_dump(exclude={"enabled", "api_key_env", "categories"})
        self.judge = Judge(JudgeConfig(**settings, api_key=api_key))

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        todo = [r for r in batch if r.outputs.get("uncertain")]
        requests = [self.request(text=r.text or r.outputs.get("ocr_text"),
                                 images=[jpeg(f) for f in _frames_for_judge(r, self.max_frames)],
                                 context={"id": r.id, "media_type": r.media_type,
                                          "scores": r.outputs["scores"],
                                          "uncertain": r.outputs["uncertain"]})
                    for r in todo]
        for r, verdict in zip(todo, self.judge.judge_many(requests) if requests else []):
            out = r.outputs
            before = Decision(action=out["action"], flagged=out["flagged"], reasons=out["reasons"])
            after = apply_verdict(before, {"action": verdict.action, "reason": verdict.reason})
            out.update(action=after.action, flagged=after.flagged, reasons=after.reasons,
                       judge=json.dumps(dataclasses.asdict(verdict), ensure_ascii=False))
        for r in batch:
            r.frames = None
        return list(batch)


def _frames_for_judge(r: Decoded, n: int) -> list[np.ndarray]:
    if not r.frames:
        return []
    worst = r.outputs.get("worst_frame", 0)
    order = sorted(range(len(r.frames)), key=lambda i: abs(i - worst))
    return [r.frames[i] for i in sorted(order[:n])]

