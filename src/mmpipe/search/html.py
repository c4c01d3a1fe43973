"""results.html: a self-contained page of search hits with thumbnails, openable from anywhere.

Thumbnails of files this machine can read (local paths, s3:// and other fsspec URLs) are
embedded as data: JPEGs; http(s) images are linked for the browser to load; an item that cannot
be read shows its URI instead of failing the page.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Sequence

import numpy as np

from ..decode.image import decode_image
from ..stages.media import jpeg
from ..atomic import atomic_path
from .query import Hit

THUMB_SIDE = 200
# A thumbnail is not worth reading more than this of a file.
MAX_THUMB_BYTES = 64 * 1024 * 1024

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:20px}
header .facts{opacity:.75;font-size:13px}main{padding:18px 28px;display:grid;
grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:14px}
.hit{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 2px #0002}
.hit img,.hit .noimg{width:100%;height:180px;object-fit:contain;background:#e9ebef;border-radius:4px}
.hit .noimg{display:flex;align-items:center;justify-content:center;color:#889;font-size:12px}
.rank{font-weight:600}.score{float:right;color:#445}.id{word-break:break-all;font-size:12px}
.uri{color:#778;font-size:11px;word-break:break-all}.text{font-size:12px;margin-top:4px}
"""


def write_results(hits: Sequence[Hit], path: str | Path, query: str, facts: str) -> Path:
    path = Path(path)
    cards = "".join(_card(h) for h in hits) or "<p>No results.</p>"
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width'><title>{escape(query)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{escape(query)}</h1>"
            f"<div class=facts>{escape(facts)}</div></header><main>{cards}</main></body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _card(hit: Hit) -> str:
    src = _thumbnail_src(hit.uri)
    img = f"<img alt='' src='{escape(src)}'>" if src else "<div class=noimg>no preview</div>"
    size = f" · {hit.width}×{hit.height}" if hit.width and hit.height else ""
    text = f"<div class=text>{escape(hit.text[:300])}</div>" if hit.text else ""
    return (f"<div class=hit>{img}<div><span class=rank>#{hit.rank}</span>"
            f"<span class=score>{hit.score:.3f}</span></div><div class=id>{escape(hit.id)}</div>"
            f"<div class=uri>{escape(hit.uri or '')}{size}</div>{text}</div>")


def _thumbnail_src(uri: str | None) -> str | None:
    if not uri or uri.lower().endswith(".tar"):  # a tar member's URI is its whole shard
        return None
    if uri.startswith(("http://", "https://")):
        return uri
    import fsspec

    try:
        with fsspec.open(uri, "rb") as fh:
            data = fh.read(MAX_THUMB_BYTES + 1)
        if len(data) > MAX_THUMB_BYTES:
            return None
        img, _ = decode_image(data, min_side=THUMB_SIDE)
    except (OSError, ValueError):
        return None  # a moved or unreadable file: the card still shows its id and URI
    return "data:image/jpeg;base64," + base64.b64encode(jpeg(np.asarray(img), THUMB_SIDE)).decode()
