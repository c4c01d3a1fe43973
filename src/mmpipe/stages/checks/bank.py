"""Source ``bank``: every frame's perceptual hash (or, for ``hash: clip``, its CLIP image vector,
left on the record by the clip stage) against the category's bank of known images. A frame
within the category's distance, or at least its similarity, of an entry scores 1."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from ...bank import Bank, BankError, Matcher, VectorMatcher, hash_image, open_bank, read_manifest
from ...bank.hashing import HASHES
from ...policy import Category, Policy
from ...records import Decoded
from ...stage import Stage
from ..moderation import has_frames, with_moderation
from .source import ModerationOptions, Source, categories_of

# Hamming distances at which a hash matches a bank entry: PDQ's is Meta's recommended 31 of 256.
MAX_DISTANCE = {"pdq": 31, "phash": 10}
# Cosine similarity at which a frame's CLIP image vector matches a bank entry's (hash: clip).
# CLIP keeps re-encoded and resized copies of an image close to 1 and photos that only share a
# subject lower, so 0.9 leans to copies; it is a starting point, not a figure measured here (the
# tests' CLIP is tiny and random): check your model's copies (bank_match shows each similarity).
MIN_SIMILARITY = 0.9


class BankCategory(Category):
    model_config = ConfigDict(extra="forbid")
    scores_pixels: ClassVar[bool] = True

    source: Literal["bank"]
    bank: str | None = None  # the folder made by 'mmpipe bank add/import'
    hash: Literal["pdq", "phash", "clip"] = "pdq"  # clip: the bank's CLIP vectors, by cosine
    max_distance: int | None = Field(None, ge=0, le=256)  # pdq, phash; None: MAX_DISTANCE[hash]
    min_similarity: float | None = Field(None, gt=-1, le=1)  # clip; None: MIN_SIMILARITY

    @model_validator(mode="after")
    def _matching(self) -> "BankCategory":
        if self.bank is None:
            raise ValueError("source 'bank' needs bank: FOLDER (made by 'mmpipe bank add')")
        if self.hash == "clip" and self.max_distance is not None:
            raise ValueError("max_distance applies to hash pdq and phash; hash 'clip' matches by min_similarity")
        if self.hash != "clip" and self.min_similarity is not None:
            raise ValueError(f"min_similarity applies to hash 'clip'; hash {self.hash!r} matches by max_distance")
        if self.hash != "clip" and self.distance >= 8 * HASHES[self.hash]:
            raise ValueError(f"max_distance must be below {8 * HASHES[self.hash]}, the bits of a {self.hash} hash")
        return self

    @property
    def distance(self) -> int:
        return MAX_DISTANCE[self.hash] if self.max_distance is None else self.max_distance

    @property
    def similarity(self) -> float:
        return MIN_SIMILARITY if self.min_similarity is None else self.min_similarity


@dataclass(frozen=True)
class OpenBank:
    """A bank category with its bank read and its matcher built."""

    name: str
    hash: str
    limit: float  # max_distance of a hash, min_similarity of clip vectors
    bank: Bank
    rows: np.ndarray  # bank rows that have this hash (or vector)
    matcher: Matcher | VectorMatcher

    def nearest(self, hashes: list[dict], vectors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
        """Each frame's matching bank row (-1: none) and distance or similarity, and the best
        frame: a frame without a match is never better than one with."""
        if self.hash == "clip":
            index, similarity = self.matcher.nearest(vectors, at_least=self.limit)
            return index, similarity, int(np.argmax(similarity))
        queries = np.frombuffer(b"".join(h[self.hash] for h in hashes), np.uint8).reshape(len(hashes), -1)
        index, distance = self.matcher.nearest(queries, within=int(self.limit))
        return index, distance, int(np.argmin(distance))


def open_banks(policy: Policy) -> list[OpenBank]:
    """Read here, before the job starts, so that a missing bank stops it with one line."""
    found = []
    for c in categories_of(policy, "bank"):
        bank = open_bank(c.bank)
        if c.hash == "clip":
            rows, vectors = bank.vectors()
            found.append(OpenBank(c.name, c.hash, c.similarity, bank, rows, VectorMatcher(vectors)))
        else:
            rows, hashes = bank.hashes(c.hash)
            found.append(OpenBank(c.name, c.hash, c.distance, bank, rows, Matcher(hashes)))
    return found


def clip_bank_model(policy: Policy) -> str | None:
    """The CLIP model of the vectors the policy's ``hash: clip`` categories match against, from
    the banks' manifests: the job embeds frames with it. One job runs one CLIP model, so banks
    of different models cannot meet in one policy."""
    models = {}
    for c in categories_of(policy, "bank"):
        if c.hash != "clip":
            continue
        model = (read_manifest(c.bank).get("clip") or {}).get("model")
        if model is None:
            raise BankError(f"{c.bank}: no CLIP vectors, which category {c.name} (hash: clip) matches "
                            "against; add images with 'mmpipe bank add BANK FILES --clip-model SPEC'")
        models.setdefault(model, c.name)
    if len(models) > 1:
        raise BankError("hash: clip categories match vectors of different CLIP models ("
                        + ", ".join(f"{name}: {model}" for model, name in models.items())
                        + "); one job embeds frames with one model")
    return next(iter(models), None)


class BankBatch:
    def __init__(self, banks: list[OpenBank]):
        self.banks = banks
        self.hashed = any(c.hash != "clip" for c in banks)

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        # Every record comes back without the CLIP vectors, which only this stage reads.
        return [self.match(r) if has_frames(r)
                else with_moderation(r, r.moderation.with_changes(vectors=None)) for r in batch]

    def match(self, r: Decoded) -> Decoded:
        m = r.moderation
        hashes = [hash_image(f) for f in m.frames] if self.hashed else []
        scores, reasons, matches = {}, {}, []
        for c in self.banks:
            index, value, frame = c.nearest(hashes, m.vectors)
            hit = index >= 0
            scores[c.name] = hit.astype(np.float32)
            if hit.any():
                entry = c.bank.entry(int(c.rows[index[frame]]))
                measure, shown = (("similarity", round(float(value[frame]), 4)) if c.hash == "clip"
                                  else ("distance", int(value[frame])))
                matches.append({"category": c.name, **entry, "hash": c.hash, measure: shown,
                                "frame": frame, "time_s": m.timestamps[frame]})
                label = f" ({entry['label']})" if entry["label"] else ""
                reasons[c.name] = (f"bank entry {entry['id']}{label} at {c.hash} {measure} {shown}",)
        return with_moderation(r, m.with_frame_scores(scores).with_changes(
            matches={**m.matches, **reasons}, vectors=None,
            bank_match=json.dumps(matches) if matches else m.bank_match))


def bank_stage(policy: Policy, opts: ModerationOptions, clip) -> Stage | None:
    if not categories_of(policy, "bank"):
        return None
    banks = open_banks(policy)
    return Stage("bank", lambda: BankBatch(banks), batch_size=opts.batch_size)


SOURCE = Source(BankCategory, stage=bank_stage)
