"""Moderation's shared stages (OCR, the text stage, the decision, the judge) and the helpers the
sources' own stages use (``mmpipe.stages.checks``).

Every stage gets a batch of ``Decoded`` records carrying a ``Moderation`` and returns new ones:
frame scores per category (open_nsfw, zero-shot CLIP, banks, and text categories on each
frame's OCR text), the item's text scores, OCR texts, words matched, CLIP vectors. The decision
stage turns those into an ``Outcome`` and drops the frames, so that the sink buffers only small
rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import numpy as np

from ..moderation_records import Moderation, Outcome
from ..policy import Decision, Policy, aggregate, apply_verdict, decide, uncertain
from ..records import Decoded
from .media import jpeg

THUMB_SIDE = 160
VISUAL = ("image", "video")
# (model input of every frame of the batch) -> (scores per category, vectors per frame or None)
FrameScorer = Callable[[np.ndarray], tuple[dict[str, np.ndarray], np.ndarray | None]]


def with_moderation(r: Decoded, m: Moderation) -> Decoded:
    return dataclasses.replace(r, moderation=m)


def has_frames(r: Decoded) -> bool:
    return r.moderation.media_type in VISUAL and bool(r.moderation.frames)


def score_frames(batch: Sequence[Decoded], name: str, score: FrameScorer) -> list[Decoded]:
    """Run ``score`` once over the inputs ``name`` of every frame in the batch; each record comes
    back with its slice of the scores (and vectors), without that input. The records given keep
    theirs, so that a failed batch can be retried item by item."""
    visual = [i for i, r in enumerate(batch) if has_frames(r)]
    if not visual:
        return list(batch)
    scores, vectors = score(np.concatenate([batch[i].moderation.inputs[name] for i in visual]))
    out, start = list(batch), 0
    for i in visual:
        m = batch[i].moderation
        frames = slice(start, start + len(m.frames))
        m = m.without_input(name).with_frame_scores({k: v[frames] for k, v in scores.items()})
        out[i] = with_moderation(batch[i], m if vectors is None else m.with_changes(vectors=vectors[frames]))
        start += len(m.frames)
    return out


class OcrBatch:
    """Text in every frame, so that text categories can judge what an image or video shows."""

    def __init__(self, threads: int | None):
        from ..models.ocr import OcrReader

        self.reader = OcrReader(threads=threads)

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        return [with_moderation(r, r.moderation.with_changes(
                    ocr=tuple(self.reader.read_text(f) for f in r.moderation.frames)))
                if has_frames(r) else r for r in batch]


class TextBatch:
    """The text sources' scorers over item texts and OCR texts, all of a batch's texts at once."""

    def __init__(self, scorers: list):
        self.scorers = scorers

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        # Every text of the batch in one list: item texts first, then each frame's OCR text.
        texts, owners = [], []
        for k, r in enumerate(batch):
            if r.text:
                texts.append(r.text)
                owners.append((k, None))
            for i, seen in enumerate(r.moderation.ocr or ()):
                texts.append(seen)
                owners.append((k, i))
        found = {}
        for scorer in self.scorers:
            found.update(scorer(texts))
        frame_scores = [{name: np.zeros(len(r.moderation.frames), np.float32) for name in found}
                        for r in batch]
        text_scores: list[dict[str, float]] = [{} for _ in batch]
        matches: list[dict[str, list[str]]] = [{} for _ in batch]
        for name, per_text in found.items():
            for (k, frame), (score, hits) in zip(owners, per_text):
                if frame is None:
                    text_scores[k][name] = max(text_scores[k].get(name, 0.0), score)
                else:
                    frame_scores[k][name][frame] = max(frame_scores[k][name][frame], score)
                if hits:
                    seen = matches[k].setdefault(name, [])
                    seen.extend(h for h in hits if h not in seen)
        out = []
        for k, r in enumerate(batch):
            m = r.moderation.with_frame_scores(frame_scores[k])
            out.append(with_moderation(r, m.with_changes(
                text_scores={**m.text_scores, **text_scores[k]},
                matches={**m.matches, **{n: tuple(h) for n, h in matches[k].items()}})))
        return out


class DecideBatch:
    """Scores → item scores, segments, action and reasons; frames are dropped after this."""

    def __init__(self, policy: Policy, keep_frames: bool = False):
        self.policy = policy
        self.keep_frames = keep_frames  # the judge stage after this one still needs them

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        return [self.decide(r) for r in batch]

    def decide(self, r: Decoded) -> Decoded:
        m = r.moderation
        frame_scores = {k: np.asarray(v, np.float32) for k, v in m.frame_scores.items()}
        scores: dict[str, float | None] = {}
        segments = []
        if m.frames:
            scores, segments = aggregate(m.timestamps, frame_scores, self.policy)
            scores = {k: float(v) for k, v in scores.items()}
        for name, value in m.text_scores.items():
            scores[name] = max(scores.get(name, 0.0), value)
        applies = {c.name: m.media_type in c.media for c in self.policy.categories}
        scores = {c.name: (scores.get(c.name, 0.0) if applies[c.name] else None)
                  for c in self.policy.categories}
        decision = decide(self.policy, m.media_type, scores)
        reasons = list(decision.reasons)
        if m.frames_capped:
            reasons.append(f"only the first {len(m.frames)} frames were checked (--max-frames)")
        for name, hits in m.matches.items():
            if applies.get(name):
                reasons.append(f"{name}: matched {', '.join(repr(h) for h in hits[:5])}")
        outcome = Outcome(
            scores=scores, action=decision.action, flagged=decision.flagged, reasons=tuple(reasons),
            segments=tuple(segments) if m.media_type == "video" else (),
            # A block stands: the judge only settles items the models left for review.
            uncertain=tuple(uncertain(self.policy, m.media_type, scores))
            if decision.action != "block" else ())
        if m.frames:
            worst = _worst_frame(frame_scores, self.policy, len(m.frames))
            outcome = dataclasses.replace(
                outcome, worst_frame=worst, thumbnail=jpeg(m.frames[worst], max_side=THUMB_SIDE),
                frames=len(m.frames), ocr_text=_ocr_text(m.ocr, m.timestamps, m.media_type))
        return with_moderation(r, m.with_changes(
            outcome=outcome, frame_scores={}, text_scores={}, matches={},
            frames=m.frames if self.keep_frames else ()))


def _worst_frame(frame_scores: dict[str, np.ndarray], policy: Policy, n: int) -> int:
    """The frame closest to (or furthest past) a block threshold, in any category."""
    worst = np.zeros(n, np.float32)
    for c in policy.categories:
        values = frame_scores.get(c.name)
        if values is not None and len(values) == n:
            worst = np.maximum(worst, values / max(c.block, 1e-6))
    return int(np.argmax(worst)) if n else 0


def _ocr_text(ocr: tuple[str, ...] | None, timestamps: Sequence[float], media_type: str) -> str | None:
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
        todo = [k for k, r in enumerate(batch) if r.moderation.outcome.uncertain]
        requests = []
        for k in todo:
            r, m = batch[k], batch[k].moderation
            requests.append(self.request(
                text=r.text or m.outcome.ocr_text,
                images=[jpeg(f) for f in _frames_for_judge(m, self.max_frames)],
                context={"id": r.id, "media_type": m.media_type, "scores": dict(m.outcome.scores),
                         "uncertain": list(m.outcome.uncertain)}))
        outcomes = {k: r.moderation.outcome for k, r in enumerate(batch)}
        for k, verdict in zip(todo, self.judge.judge_many(requests) if requests else []):
            o = outcomes[k]
            before = Decision(action=o.action, flagged=o.flagged, reasons=list(o.reasons))
            after = apply_verdict(before, {"action": verdict.action, "reason": verdict.reason})
            outcomes[k] = dataclasses.replace(
                o, action=after.action, flagged=after.flagged, reasons=tuple(after.reasons),
                judge=json.dumps(dataclasses.asdict(verdict), ensure_ascii=False))
        return [with_moderation(r, r.moderation.with_changes(outcome=outcomes[k], frames=()))
                for k, r in enumerate(batch)]


def _frames_for_judge(m: Moderation, n: int) -> list[np.ndarray]:
    if not m.frames:
        return []
    order = sorted(range(len(m.frames)), key=lambda i: abs(i - m.outcome.worst_frame))
    return [m.frames[i] for i in sorted(order[:n])]
