"""Per-frame scores → item scores and flagged time segments (video).

Frame i stands for the time [t_i, t_{i+1}); the last frame for one median interval (1 s when
there is a single frame). A segment is a run of frames at or over the category's review
threshold; runs closer than ``segment_gap_s`` are merged, so a caption missed by OCR in one frame
does not split the window in two.
"""

from __future__ import annotations

import numpy as np

from ..moderation_records import Segment
from .schema import Policy


def aggregate(timestamps: list[float], frame_scores: dict[str, np.ndarray],
              policy: Policy) -> tuple[dict[str, float], list[Segment]]:
    cats = {c.name: c for c in policy.categories}
    agg = policy.aggregation
    scores: dict[str, float] = {}
    segments: list[Segment] = []
    t = np.asarray(timestamps, np.float64)
    step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    ends = np.append(t[1:], t[-1] + step) if len(t) else t
    for name, values in frame_scores.items():
        category = cats.get(name)
        values = np.asarray(values, np.float32)
        if category is None or len(values) == 0:
            continue
        if agg.method == "mean_topk":
            top = np.sort(values)[-agg.top_k:]
            scores[name] = float(top.mean())
        else:
            scores[name] = float(values.max())
        if len(values) > 1 and len(values) == len(t):
            segments += _runs(t, ends, values, category.review, agg.segment_gap_s, name)
    segments.sort(key=lambda s: (-s.score, s.start, s.category))
    return scores, segments


def _runs(starts: np.ndarray, ends: np.ndarray, values: np.ndarray, threshold: float, gap: float,
          name: str) -> list[Segment]:
    runs: list[list] = []  # [start, end, score]
    for s, e, v in zip(starts, ends, values):
        if v < threshold:
            continue
        if runs and s - runs[-1][1] <= gap + 1e-9:
            runs[-1][1], runs[-1][2] = e, max(runs[-1][2], float(v))
        else:
            runs.append([float(s), float(e), float(v)])
    return [Segment(round(a, 3), round(b, 3), name, v) for a, b, v in runs]
