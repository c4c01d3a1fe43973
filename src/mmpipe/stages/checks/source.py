"""What a policy source is to the rest of moderation: one registry entry (``Source``) naming its
category schema, how it scores, and what it reads of a frame; and the options its stage gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, get_args

import numpy as np

from ...decode.image import DEFAULT_MAX_PIXELS
from ...policy import Category, Policy
from ...stage import Stage


@dataclass(frozen=True)
class ModerationOptions:
    """How moderation's stages run, whoever runs them (a job, the server)."""

    batch_size: int = 16
    model_threads: int = 1
    fps: float = 1.0
    max_frames: int = 64
    max_side: int = 640
    max_pixels: int = DEFAULT_MAX_PIXELS
    ocr: bool = True
    ocr_workers: int = 2
    nsfw_precision: str = "fp32"
    decode_workers: int = 1
    decode_processes: bool = False
    read_workers: int = 8
    engine_local: bool = True  # decode processes are the local engine's (Ray has its own)


class TextScorer(Protocol):
    """Scores texts for some categories: category -> one (score, words matched) per text."""

    def __call__(self, texts: Sequence[str]) -> dict[str, list[tuple[float, list[str]]]]: ...


FrameInput = Callable[[np.ndarray], np.ndarray]  # frame (H, W, 3) uint8 -> its model input


@dataclass(frozen=True)
class Source:
    """One policy source. A source scores frames in a stage of its own (``stage``), or texts in
    the shared text stage, which reads item texts and every frame's OCR text (``text_scorer``).
    Each factory returns None when the policy gives it nothing to do."""

    schema: type[Category]
    # (policy, options, clip model or None) -> its stage over frames.
    stage: Callable[[Policy, ModerationOptions, Any], Stage | None] | None = None
    # (policy, clip model or None) -> what its stage reads of each frame, made in the decode pool.
    frame_input: Callable[[Policy, Any], FrameInput | None] | None = None
    # policy -> its scorer inside the shared text stage.
    text_scorer: Callable[[Policy], TextScorer | None] | None = None

    @property
    def name(self) -> str:
        return get_args(self.schema.model_fields["source"].annotation)[0]


def categories_of(policy: Policy, *sources: str) -> list:
    return [c for c in policy.categories if c.source in sources]
