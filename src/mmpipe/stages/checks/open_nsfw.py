"""Source ``open_nsfw``: Yahoo's NSFW image classifier on every frame."""

from __future__ import annotations

from typing import ClassVar, Literal, Sequence

import numpy as np
from pydantic import ConfigDict

from ...policy import Category, Policy
from ...records import Decoded
from ...stage import Resources, Stage
from ..moderation import score_frames
from .source import ModerationOptions, Source, categories_of


class OpenNsfwCategory(Category):
    model_config = ConfigDict(extra="forbid")
    scores_pixels: ClassVar[bool] = True

    source: Literal["open_nsfw"]


class NsfwBatch:
    """open_nsfw over every frame of the batch's images and videos, in model-sized chunks."""

    def __init__(self, policy: Policy, threads: int | None, precision: str = "fp32"):
        from ...models.open_nsfw import NsfwScorer
        from ...models.open_nsfw_int8 import nsfw_model

        path, _ = nsfw_model(precision, policy.thresholds("open_nsfw"))
        self.scorer = NsfwScorer(threads=threads, model_path=path)
        self.names = [c.name for c in categories_of(policy, "open_nsfw")]

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        return score_frames(batch, "open_nsfw", self.score)

    def score(self, pixels: np.ndarray) -> tuple[dict[str, np.ndarray], None]:
        return dict.fromkeys(self.names, self.scorer.score(pixels)), None


def nsfw_stage(policy: Policy, opts: ModerationOptions, clip) -> Stage | None:
    if not categories_of(policy, "open_nsfw"):
        return None
    return Stage("open_nsfw", lambda: NsfwBatch(policy, opts.model_threads, opts.nsfw_precision),
                 batch_size=opts.batch_size, resources=Resources(num_cpus=opts.model_threads))


def nsfw_input(policy: Policy, clip):
    if not categories_of(policy, "open_nsfw"):
        return None
    from ...models.open_nsfw import preprocess

    return preprocess


SOURCE = Source(OpenNsfwCategory, stage=nsfw_stage, frame_input=nsfw_input)
