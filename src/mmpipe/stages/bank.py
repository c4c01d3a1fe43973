"""Moderation's hash-bank stage: every frame's perceptual hash (or, for ``hash: clip``, its CLIP
image vector, left on the record by the clip stage) against the banks of the policy's
``source: bank`` categories. A frame within the category's distance, or at least its
similarity, of an entry scores 1."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..bank import Bank, BankError, Matcher, VectorMatcher, hash_image, open_bank, read_manifest
from ..policy import Policy
from ..records import Decoded
from .moderation import FRAME_VECTORS, _visual, categories_of


@dataclass(frozen=True)
class BankCategory:
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


def bank_categories(policy: Policy) -> list[BankCategory]:
    """Read here, before the job starts, so that a missing bank stops it with one line."""
    found = []
    for c in categories_of(policy, "bank"):
        bank = open_bank(c.bank)
        if c.hash == "clip":
            rows, vectors = bank.vectors()
            found.append(BankCategory(c.name, c.hash, c.similarity, bank, rows, VectorMatcher(vectors)))
        else:
            rows, hashes = bank.hashes(c.hash)
            found.append(BankCategory(c.name, c.hash, c.distance, bank, rows, Matcher(hashes)))
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
    def __init__(self, categories: list[BankCategory]):
        self.categories = categories
        self.hashed = any(c.hash != "clip" for c in categories)

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        for r in _visual(batch):
            hashes = [hash_image(f) for f in r.frames] if self.hashed else []
            matches = []
            for c in self.categories:
                index, value, frame = c.nearest(hashes, r.outputs.get(FRAME_VECTORS))
                hit = index >= 0
                r.outputs.setdefault("frame_scores", {})[c.name] = hit.astype(np.float32)
                if hit.any():
                    entry = c.bank.entry(int(c.rows[index[frame]]))
                    measure, shown = (("similarity", round(float(value[frame]), 4)) if c.hash == "clip"
                                      else ("distance", int(value[frame])))
                    matches.append({"category": c.name, **entry, "hash": c.hash, measure: shown,
                                    "frame": frame, "time_s": r.timestamps[frame]})
                    label = f" ({entry['label']})" if entry["label"] else ""
                    r.outputs.setdefault("matches", {})[c.name] = [
                        f"bank entry {entry['id']}{label} at {c.hash} {measure} {shown}"]
            if matches:
                r.outputs["bank_match"] = json.dumps(matches)
        # Dropped only after the whole batch succeeded: a failed batch is retried item by item.
        for r in batch:
            r.outputs.pop(FRAME_VECTORS, None)
        return list(batch)
