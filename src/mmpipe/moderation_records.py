"""What moderation carries for an item between its stages, typed.

``Moderation`` is made by the decode stage (what the item is, its sampled frames, each source's
model input per frame) and grows as the item passes the model stages (scores, OCR text, vectors,
matches); the decision stage adds its ``Outcome``. Records are frozen: a stage returns a new one
(``with_changes``) and never touches its input, so a batch that fails can be retried item by
item from the very same records, and one record may stand in a batch twice (padding).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class Segment:
    """A run of video frames at or over a category's review threshold."""

    start: float
    end: float
    category: str
    score: float


@dataclass(frozen=True)
class Outcome:
    """What the policy made of an item's scores: the row the sink writes."""

    scores: Mapping[str, float | None]  # None: the category does not apply to this media type
    action: str  # allow | review | block
    flagged: bool
    reasons: tuple[str, ...] = ()
    segments: tuple[Segment, ...] = ()  # videos only
    uncertain: tuple[str, ...] = ()  # categories in their [review, block) band: for the judge
    worst_frame: int = 0
    thumbnail: bytes | None = None  # a small JPEG of the worst frame
    frames: int | None = None  # how many frames were checked
    ocr_text: str | None = None
    judge: str | None = None  # the judge's verdict, JSON


@dataclass(frozen=True)
class Moderation:
    media_type: str  # "image" | "video" | "text"
    frames: tuple[np.ndarray, ...] = ()  # RGB uint8 (H, W, 3); an image is one frame at t=0
    timestamps: tuple[float, ...] = ()  # seconds, one per frame
    frames_capped: bool = False  # --max-frames cut the video short
    duration_s: float | None = None
    text_truncated: bool = False
    # Each source's model input for every frame, stacked (made in the decode pool); the source's
    # stage drops its own once it has scored them.
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    frame_scores: Mapping[str, np.ndarray] = field(default_factory=dict)  # category -> per frame
    text_scores: Mapping[str, float] = field(default_factory=dict)  # category -> the item's text
    ocr: tuple[str, ...] | None = None  # the text read in each frame
    matches: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # category -> reasons
    vectors: np.ndarray | None = None  # each frame's CLIP image vector, for clip bank categories
    bank_match: str | None = None  # JSON: the nearest entry of each matching bank category
    outcome: Outcome | None = None  # set by the decision stage

    def with_changes(self, **changes) -> Moderation:
        return dataclasses.replace(self, **changes)

    def with_frame_scores(self, scores: Mapping[str, np.ndarray]) -> Moderation:
        return self.with_changes(frame_scores={**self.frame_scores, **scores})

    def without_input(self, name: str) -> Moderation:
        return self.with_changes(inputs={k: v for k, v in self.inputs.items() if k != name})
