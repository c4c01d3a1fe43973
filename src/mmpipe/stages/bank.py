"""Moderation's hash-bank stage: every frame's perceptual hash against the banks of the policy's
``source: bank`` categories. A frame within the category's distance of an entry scores 1."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..bank import Bank, Matcher, hash_image, open_bank
from ..policy import Policy
from ..records import Decoded
from .moderation import _visual, categories_of


@dataclass(frozen=True)
class BankCategory:
    name: str
    hash: str
    distance: int
    bank: Bank
    rows: np.ndarray  # bank rows that have this hash
    matcher: Matcher


def bank_categories(policy: Policy) -> list[BankCategory]:
    """Read here, before the job starts, so that a missing bank stops it with one line."""
    found = []
    for c in categories_of(policy, "bank"):
        bank = open_bank(c.bank)
        rows, hashes = bank.hashes(c.hash)
        found.append(BankCategory(c.name, c.hash, c.distance, bank, rows, Matcher(hashes)))
    return found


class BankBatch:
    def __init__(self, categories: list[BankCategory]):
        self.categories = categories

    def __call__(self, batch: Sequence[Decoded]) -> list[Decoded]:
        for r in _visual(batch):
            hashes = [hash_image(f) for f in r.frames]
            matches = []
            for c in self.categories:
                queries = np.frombuffer(b"".join(h[c.hash] for h in hashes), np.uint8)
                index, distance = c.matcher.nearest(queries.reshape(len(hashes), -1), within=c.distance)
                hit = index >= 0
                r.outputs.setdefault("frame_scores", {})[c.name] = hit.astype(np.float32)
                if hit.any():
                    frame = int(np.argmin(distance))  # frames without a match are furthest
                    entry = c.bank.entry(int(c.rows[index[frame]]))
                    d = int(distance[frame])
                    matches.append({"category": c.name, **entry, "hash": c.hash, "distance": d,
                                    "frame": frame, "time_s": r.timestamps[frame]})
                    label = f" ({entry['label']})" if entry["label"] else ""
                    r.outputs.setdefault("matches", {})[c.name] = [
                        f"bank entry {entry['id']}{label} at {c.hash} distance {d}"]
            if matches:
                r.outputs["bank_match"] = json.dumps(matches)
        return list(batch)
