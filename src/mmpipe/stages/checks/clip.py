"""Source ``clip``: zero-shot categories, a frame's CLIP image vector against the category's
positive and negative prompts. The same stage keeps each frame's vector for the ``bank``
source's ``hash: clip`` categories."""

from __future__ import annotations

from functools import partial
from typing import ClassVar, Literal, Sequence

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...policy import Category, Policy
from ...records import Decoded
from ...stage import Resources, Stage
from ..moderation import score_frames
from .source import ModerationOptions, Source, categories_of


class Prompts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)


class ClipCategory(Category):
    model_config = ConfigDict(extra="forbid")
    scores_pixels: ClassVar[bool] = True

    source: Literal["clip"]
    prompts: Prompts | None = None
    temperature: float = Field(100.0, gt=0)

    @model_validator(mode="after")
    def _prompted(self) -> "ClipCategory":
        if self.prompts is None:
            raise ValueError("source 'clip' needs prompts: {positive: [...], negative: [...]}")
        return self


class ClipBatch:
    """Every frame through the CLIP image tower once: categories defined by CLIP prompts are
    scored here, and with ``keep_vectors`` the vectors stay on the record for the bank stage's
    clip categories."""

    def __init__(self, policy: Policy, clip, keep_vectors: bool = False):
        from ...models.zero_shot import ZeroShotClip

        cats = categories_of(policy, "clip")
        self.embedder = clip.make_embedder()
        self.zero_shot = ZeroShotClip(self.embedder, clip.preprocessor,
                                      {c.name: (c.prompts.positive, c.prompts.negative) for c in cats},
                                      temperature={c.name: c.temperature for c in cats})
        self.keep_vectors = keep_vectors

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        return score_frames(batch, "clip", self.score)

    def score(self, pixels: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        vectors = self.embedder.embed_images(pixels)
        return self.zero_shot.score_vectors(vectors), vectors if self.keep_vectors else None


def clip_stage(policy: Policy, opts: ModerationOptions, clip) -> Stage | None:
    """Whenever the job has a CLIP model: for zero-shot categories, or for clip bank ones."""
    if clip is None:
        return None
    vectors = any(c.hash == "clip" for c in categories_of(policy, "bank"))
    return Stage("clip", lambda: ClipBatch(policy, clip, keep_vectors=vectors),
                 batch_size=opts.batch_size, resources=Resources(num_cpus=opts.model_threads))


def clip_input(frame: np.ndarray, pre) -> np.ndarray:
    """A frame as the CLIP image tower's uint8 crop, made in the decode pool with the embed
    job's fast resize (of the crop only)."""
    return pre.image(Image.fromarray(frame), exact=False)


def clip_frame_input(policy: Policy, clip):
    return None if clip is None else partial(clip_input, pre=clip.preprocessor)


SOURCE = Source(ClipCategory, stage=clip_stage, frame_input=clip_frame_input)
