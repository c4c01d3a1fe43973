"""The review queue and the HTML report on a realistic table; the page rendered in Chromium."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from mmpipe.jobs.moderate import moderation_schema
from mmpipe.report import write_report, write_review_queue

CATEGORIES = [("sexual", 0.4, 0.8), ("harassment", 0.6, 0.9)]
SCRIPT = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def thumb(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (160, 120), colour).save(buf, "JPEG")
    return buf.getvalue()


def row(id, action, sexual=None, harassment=None, media="image", **extra):
    base = {"id": id, "uri": f"file:///data/{id}", "media_type": media, "text": None,
            "score_sexual": sexual, "score_harassment": harassment, "flagged": action not in (None, "allow"),
            "action": action, "reasons": [], "segments": [], "ocr_text": None, "judge": None,
            "error": None, "thumbnail": thumb((200, 40, 40)) if media in ("image", "video") else None,
            "width": 640, "height": 360, "duration_s": None, "frames": 1, "text_truncated": False}
    return {**base, **extra}


@pytest.fixture
def table() -> pa.Table:
    rows = [
        row("cat.jpg", "allow", 0.05, 0.01),
        row("meme.jpg", "block", 0.02, 0.99, reasons=["harassment 0.99 >= block 0.90"],
            ocr_text="you are a stupid idiot"),
        row("beach.jpg", "review", 0.55, 0.0, reasons=["sexual 0.55 >= review 0.40"]),
        row("edge.jpg", "review", 0.1, 0.85, reasons=["harassment 0.85 >= review 0.60"],
            judge=json.dumps({"action": None, "status": "degenerate"})),
        row("clip.mp4", "block", 0.01, 0.97, media="video", duration_s=8.0, frames=8,
            segments=[{"start": 3.0, "end": 5.0, "category": "harassment", "score": 0.97}],
            reasons=["harassment 0.97 >= block 0.90"], ocr_text="[00:03] you are a stupid idiot"),
        row("comment-1", "allow", None, 0.04, media="text", text="have a lovely day"),
        row(f"evil{SCRIPT}.jpg", "review", 0.45, 0.1, ocr_text=SCRIPT, reasons=["sexual 0.45 >= review 0.40"]),
        row("broken.png", None, media=None, error="decode: corrupt image", thumbnail=None),
    ]
    return pa.Table.from_pylist(rows, schema=moderation_schema(["sexual", "harassment"]))


def test_review_queue_is_the_review_items_worst_first(table, tmp_path):
    path = tmp_path / "review.jsonl"
    assert write_review_queue(table, CATEGORIES, path) == 3
    queue = [json.loads(line) for line in path.read_text().splitlines()]
    # edge: 0.85/0.9 = 0.94; beach: 0.55/0.8 = 0.69; evil: 0.45/0.8 = 0.56
    assert [q["id"] for q in queue] == ["edge.jpg", "beach.jpg", f"evil{SCRIPT}.jpg"]
    assert queue[0]["judge"] == {"action": None, "status": "degenerate"}
    assert queue[1]["scores"] == {"sexual": pytest.approx(0.55), "harassment": 0.0}
    assert all("thumbnail" not in q for q in queue)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.scripts, self.svgs, self.text = [], 0, 0, []

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        self.svgs += tag == "svg"
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained_escaped_and_complete(table, tmp_path):
    path = write_report(table, CATEGORIES, tmp_path / "report.html", summary={"policy_file": "default"})
    html = path.read_text()
    page = _Collect()
    page.feed(html)
    assert page.scripts == 0 and SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert page.refs and all(r.startswith("data:image/jpeg;base64,") for r in page.refs)
    assert page.svgs == 2  # one histogram per category
    text = " ".join(page.text)
    for needle in ("review 0.40", "block 0.80", "review 0.60", "block 0.90", "00:03–00:05 harassment 0.97",
                   "decode: corrupt image", "you are a stupid idiot", "policy: default"):
        assert needle in text, needle
    # Worst first: blocks, then reviews, then allows.
    order = [html.index(k) for k in ("meme.jpg", "clip.mp4", "edge.jpg", "beach.jpg", "cat.jpg")]
    assert order[2:] == sorted(order[2:]) and max(order[:2]) < order[2]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(table, tmp_path):
    path = write_report(table, CATEGORIES, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1280,1600", path.as_uri()],
                   capture_output=True, timeout=90, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (1600, 1280) and pixels.std() > 20
    # The header band is dark and the block badges red: the page was laid out, not left blank.
    assert pixels[:40].mean() < 100
    assert ((pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)).sum() > 200
