"""review.jsonl: the items a person must look at, worst first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ..atomic import atomic_path

Thresholds = Sequence[tuple[str, float, float]]  # (category, review, block)


def severity(row: dict, categories: Thresholds) -> float:
    """How far past its block threshold the item's worst category is (1.0 = at block)."""
    return max((row.get(f"score_{name}") or 0.0) / max(block, 1e-6)
               for name, _review, block in categories) if categories else 0.0


def write_review_queue(table: pa.Table, categories: Thresholds, path: str | Path) -> int:
    path = Path(path)
    rows = [r for r in table.drop_columns([c for c in ("thumbnail",) if c in table.column_names])
            .filter(pc.equal(table["action"], "review")).to_pylist()]
    rows.sort(key=lambda r: (-severity(r, categories), r["id"]))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({
                "id": r["id"], "uri": r["uri"], "media_type": r["media_type"], "action": r["action"],
                "scores": {name: r.get(f"score_{name}") for name, _, _ in categories
                           if r.get(f"score_{name}") is not None},
                "reasons": r["reasons"], "segments": r["segments"], "ocr_text": r["ocr_text"],
                "judge": json.loads(r["judge"]) if r.get("judge") else None,
                "text": (r["text"] or "")[:500] or None,
            }, ensure_ascii=False) + "\n")
    return len(rows)
