"""report.html: one self-contained page (inline CSS, SVG and data: thumbnails, no network, no
script) that a reviewer can open from anywhere: counts, score histograms with the thresholds, the
worst items with their thumbnails, reasons and flagged video times, and the errors."""

from __future__ import annotations

import base64
from collections import Counter
from html import escape
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..atomic import atomic_path
from .review import Thresholds, severity

MAX_ITEMS = 500
MAX_ERRORS = 200
ACTION_ORDER = {"block": 0, "review": 1, "allow": 2}
COLOURS = {"block": "#c62828", "review": "#ef8f00", "allow": "#2e7d32", "error": "#616161"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header .facts{opacity:.75;font-size:13px}main{padding:18px 28px;max-width:1200px}
h2{font-size:17px;margin:26px 0 10px}.tiles{display:flex;gap:12px;flex-wrap:wrap}
.tile{background:#fff;border-radius:8px;padding:10px 16px;min-width:110px;box-shadow:0 1px 2px #0002}
.tile b{display:block;font-size:24px}.tile span{color:#667;font-size:12px;text-transform:uppercase}
.hists{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
.hist{background:#fff;border-radius:8px;padding:8px 10px;box-shadow:0 1px 2px #0002}
.hist h3{margin:0 0 4px;font-size:13px}.card{display:flex;gap:14px;background:#fff;border-radius:8px;
padding:12px;margin-bottom:10px;box-shadow:0 1px 2px #0002;border-left:5px solid #ccc}
.card img,.card .noimg{width:160px;height:120px;object-fit:contain;background:#e9ebef;border-radius:4px;flex:none}
.card .noimg{display:flex;align-items:center;justify-content:center;color:#889;font-size:12px;height:40px}
.card .body{flex:1;min-width:0}.id{font-weight:600;word-break:break-all}.uri{color:#778;font-size:12px;word-break:break-all}
.badge{display:inline-block;color:#fff;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600;margin-right:6px}
.media{color:#667;font-size:12px}.scores{margin:6px 0;display:flex;flex-wrap:wrap;gap:4px}
.score{font-size:12px;border-radius:4px;padding:1px 6px;background:#eef0f3}
.score.review{background:#ffe7c2}.score.block{background:#ffd0d0;font-weight:600}
ul{margin:4px 0;padding-left:18px}.ocr,.text{font-family:ui-monospace,monospace;font-size:12px;background:#f7f7f9;
padding:4px 6px;border-radius:4px;white-space:pre-wrap;word-break:break-word;margin:4px 0;max-height:90px;overflow:hidden}
.seg{font-size:12px}.note{color:#667}table{border-collapse:collapse;background:#fff}
td,th{padding:4px 10px;border-bottom:1px solid #e3e5ea;text-align:left;font-size:13px;word-break:break-all}
"""


def write_report(table: pa.Table, categories: Thresholds, path: str | Path,
                 title: str = "mmpipe moderation report", summary: dict | None = None) -> Path:
    path = Path(path)
    meta = table.drop_columns([c for c in ("thumbnail",) if c in table.column_names]).to_pylist()
    actions = Counter(r["action"] or "error" for r in meta)
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
             f"<meta name=viewport content='width=device-width'><title>{escape(title)}</title>"
             f"<style>{CSS}</style></head><body><header><h1>{escape(title)}</h1>"
             f"<div class=facts>{_facts(summary, len(meta))}</div></header><main>",
             "<h2>Actions</h2><div class=tiles>",
             *(f"<div class=tile style='border-top:4px solid {COLOURS[a]}'><b>{actions.get(a, 0)}</b>"
               f"<span>{a}</span></div>" for a in ("block", "review", "allow", "error")),
             "</div><h2>Flagged by category</h2><div class=tiles>",
             *(f"<div class=tile><b>{_flagged(table, name, review)}</b><span>{escape(name)}</span></div>"
               for name, review, _block in categories),
             "</div><h2>Score distributions</h2><div class=hists>",
             *(_histogram(table, name, review, block) for name, review, block in categories),
             "</div>", _items(table, meta, categories), _errors(meta), "</main></body></html>"]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(parts), encoding="utf-8")
    return path


def _facts(summary: dict | None, rows: int) -> str:
    facts = [f"{rows} items"]
    if summary:
        if summary.get("policy_file"):
            facts.append(f"policy: {summary['policy_file']}")
        if summary.get("finished_at"):
            facts.append(f"finished {summary['finished_at']}")
        if summary.get("clip_model"):
            facts.append(f"CLIP: {summary['clip_model']}")
    return escape(" · ".join(facts))


def _scores(table: pa.Table, name: str) -> np.ndarray:
    column = f"score_{name}"
    if column not in table.column_names:
        return np.empty(0)
    values = table[column].to_numpy(zero_copy_only=False)
    return values[~np.isnan(values.astype(np.float64))] if len(values) else values


def _flagged(table: pa.Table, name: str, review: float) -> int:
    return int((_scores(table, name) >= review).sum())


def _histogram(table: pa.Table, name: str, review: float, block: float) -> str:
    values = _scores(table, name)
    counts, _ = np.histogram(values, bins=10, range=(0.0, 1.0))
    w, h, pad = 240, 90, 16
    top = max(int(counts.max()) if len(counts) else 0, 1)
    bars = []
    for i, c in enumerate(counts):
        bh = (h - pad) * np.log1p(c) / np.log1p(top)  # log scale: a few flagged items stay visible
        colour = "#c62828" if i / 10 >= block else "#ef8f00" if (i + 1) / 10 > review else "#7a8aa6"
        bars.append(f"<rect x={i * w / 10 + 1:.1f} y={h - bh:.1f} width={w / 10 - 2:.1f} height={bh:.1f} "
                    f"fill='{colour}'><title>{i / 10:.1f}–{(i + 1) / 10:.1f}: {c}</title></rect>"
                    + (f"<text x={i * w / 10 + w / 20:.1f} y={h - bh - 2:.1f} font-size=9 "
                       f"text-anchor=middle fill='#445'>{c}</text>" if c else ""))
    lines = "".join(f"<line x1={x * w:.1f} x2={x * w:.1f} y1=0 y2={h} stroke='{colour}' "
                    f"stroke-dasharray='4 2' stroke-width='1.5'></line><text x='{min(x * w + 2, w - 48):.1f}' y='{9 if label == 'review' else 19}' "
                    f"font-size=9 fill='{colour}'>{label} {x:.2f}</text>"
                    for x, colour, label in ((review, "#ef8f00", "review"), (block, "#c62828", "block"))
                    if x <= 1.0)
    axis = "".join(f"<text x={i * w / 5:.1f} y={h + 11} font-size=9 fill='#667' "
                   f"text-anchor={'start' if i == 0 else 'end' if i == 5 else 'middle'}>{i / 5:.1f}</text>"
                   for i in range(6))
    return (f"<div class=hist><h3>{escape(name)} <span class=note>({len(values)} scored, log scale)</span>"
            f"</h3><svg viewBox='0 0 {w} {h + 14}' width='100%' role=img aria-label='{escape(name)} "
            f"histogram'>{''.join(bars)}{lines}{axis}</svg></div>")


def _items(table: pa.Table, meta: list[dict], categories: Thresholds) -> str:
    ranked = sorted((i for i, r in enumerate(meta) if r["action"]),
                    key=lambda i: (ACTION_ORDER.get(meta[i]["action"], 3),
                                   -severity(meta[i], categories), meta[i]["id"]))
    shown = ranked[:MAX_ITEMS]
    thumbs = table["thumbnail"] if "thumbnail" in table.column_names else None
    cards = [_card(meta[i], thumbs[i].as_py() if thumbs is not None else None, categories) for i in shown]
    more = (f"<p class=note>{len(ranked) - len(shown)} more items not shown; the Parquet shards have "
            "them all.</p>") if len(ranked) > len(shown) else ""
    return f"<h2>Items, worst first</h2>{''.join(cards)}{more}"


def _card(r: dict, thumb: bytes | None, categories: Thresholds) -> str:
    action = r["action"]
    img = (f"<img alt='' src='data:image/jpeg;base64,{base64.b64encode(thumb).decode()}'>" if thumb
           else f"<div class=noimg>{escape(r['media_type'] or '')}</div>")
    scores = []
    for name, review, block in categories:
        value = r.get(f"score_{name}")
        if value is None:
            continue
        level = "block" if value >= block else "review" if value >= review else ""
        scores.append(f"<span class='score {level}'>{escape(name)} {value:.2f}</span>")
    extra = []
    if r["reasons"]:
        extra.append("<ul>" + "".join(f"<li>{escape(x)}</li>" for x in r["reasons"]) + "</ul>")
    if r["segments"]:
        extra.append("<div class=seg>flagged at: " + ", ".join(
            f"{_clock(s['start'])}–{_clock(s['end'])} {escape(s['category'])} {s['score']:.2f}"
            for s in r["segments"][:8]) + "</div>")
    if r["ocr_text"]:
        extra.append(f"<div class=ocr title='text read in the image'>OCR: {escape(r['ocr_text'])}</div>")
    if r["text"]:
        extra.append(f"<div class=text>{escape(r['text'][:600])}</div>")
    if r.get("judge"):
        extra.append(f"<div class=note>judge: {escape(r['judge'][:400])}</div>")
    duration = f" · {r['duration_s']:.1f} s, {r['frames']} frames" if r.get("duration_s") else ""
    return (f"<div class=card style='border-left-color:{COLOURS.get(action, '#ccc')}'>{img}<div class=body>"
            f"<span class=badge style='background:{COLOURS.get(action, '#999')}'>{escape(action)}</span>"
            f"<span class=media>{escape(r['media_type'] or '')}{duration}</span>"
            f"<div class=id>{escape(r['id'])}</div><div class=uri>{escape(r['uri'] or '')}</div>"
            f"<div class=scores>{''.join(scores)}</div>{''.join(extra)}</div></div>")


def _errors(meta: list[dict]) -> str:
    errors = [r for r in meta if r["error"]]
    if not errors:
        return ""
    rows = "".join(f"<tr><td>{escape(r['id'])}</td><td>{escape(r['error'])}</td></tr>"
                   for r in errors[:MAX_ERRORS])
    more = f"<p class=note>{len(errors) - MAX_ERRORS} more errors not shown.</p>" if len(errors) > MAX_ERRORS else ""
    return (f"<h2>Errors ({len(errors)})</h2><table><tr><th>item</th><th>reason</th></tr>{rows}</table>{more}")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60:02d}:{s % 60:02d}"
