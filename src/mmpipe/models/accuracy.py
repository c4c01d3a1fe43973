"""How far a faster variant of a model strays from fp32, and the gate it must pass to be used.

Embedders are compared by the cosine similarity of their vectors to fp32's on the same inputs,
classifiers by the absolute difference of their scores and by how many decisions (score above
the threshold or not) flip. A variant below the gate is refused with the figure that failed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import MmpipeError


class AccuracyGateError(MmpipeError):
    """A variant measured below the accuracy gate; the message names the figure that failed."""


class Gate(BaseModel):
    """The bar a variant must clear against fp32 (defaults: the project's published gate)."""

    model_config = ConfigDict(extra="forbid")

    min_mean_cosine: float = Field(0.99, ge=-1, le=1)
    max_flip_share: float = Field(0.005, ge=0, le=1)


@dataclass(frozen=True)
class Accuracy:
    """A variant against fp32 on one fixed evaluation set. Embedders fill the cosine figures,
    classifiers the score figures."""

    n: int
    mean_cosine: float | None = None
    min_cosine: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    flips: int | None = None

    @property
    def flip_share(self) -> float | None:
        return None if self.flips is None else self.flips / max(self.n, 1)

    def failure(self, gate: Gate) -> str | None:
        """Why this variant fails ``gate``, or None when it passes."""
        if self.mean_cosine is not None and self.mean_cosine < gate.min_mean_cosine:
            return (f"mean cosine to fp32 {self.mean_cosine:.4f} < {gate.min_mean_cosine} "
                    f"(min {self.min_cosine:.4f}, n={self.n})")
        share = self.flip_share
        if share is not None and share > gate.max_flip_share:
            return (f"{self.flips} of {self.n} decisions flip vs fp32 ({share:.2%} > "
                    f"{gate.max_flip_share:.2%}; max score difference {self.max_abs_diff:.4f})")
        return None

    def to_dict(self) -> dict:
        return {k: v for k, v in {**asdict(self), "flip_share": self.flip_share}.items() if v is not None}

    @classmethod
    def from_dict(cls, figures: dict) -> "Accuracy":
        """Back from ``to_dict`` (``flip_share`` is derived, so it is dropped)."""
        return cls(**{k: v for k, v in figures.items() if k != "flip_share"})


def embedding_accuracy(reference: np.ndarray, variant: np.ndarray) -> Accuracy:
    """Row-wise cosine similarity of ``variant``'s vectors to ``reference``'s (fp32)."""
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True).clip(1e-12)
    got = variant / np.linalg.norm(variant, axis=1, keepdims=True).clip(1e-12)
    cos = (ref.astype(np.float64) * got.astype(np.float64)).sum(axis=1)
    return Accuracy(n=len(cos), mean_cosine=float(cos.mean()), min_cosine=float(cos.min()))


def score_accuracy(reference: np.ndarray, variant: np.ndarray,
                   threshold: float | Sequence[float]) -> Accuracy:
    """Score differences to ``reference`` (fp32) and decisions at ``threshold`` that flip. With
    several thresholds (a policy's review and block) an item flips when it lands on another side
    of any of them, and counts once."""
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(variant, np.float64))
    cuts = np.sort(np.atleast_1d(np.asarray(threshold, np.float64)))
    # searchsorted(side="right") counts the thresholds at or below a score: the decision's level.
    flips = int((np.searchsorted(cuts, reference, side="right")
                 != np.searchsorted(cuts, variant, side="right")).sum())
    return Accuracy(n=len(diff), max_abs_diff=float(diff.max(initial=0.0)),
                    mean_abs_diff=float(diff.mean()) if len(diff) else 0.0, flips=flips)


def enforce(name: str, accuracy: Accuracy, gate: Gate) -> None:
    """Refuse ``name`` when it measured below ``gate``."""
    reason = accuracy.failure(gate)
    if reason:
        raise AccuracyGateError(f"{name} refused by the accuracy gate: {reason}")
