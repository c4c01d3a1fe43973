"""The moderation job end to end with the real offline models (open_nsfw, PP-OCR, profanity-check)
on small data made here: rendered text, a video with a caption in a known window, bad files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mmpipe
from mmpipe.sample_moderation import draw_caption, write_video
from tests.conftest import photo
from tests.test_judge import FakeChatServer

CLI = [sys.executable, "-m", "mmpipe.cli"]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    bg = photo(3, size=(640, 360))
    draw_caption(bg, "you are a stupid idiot", size=36).save(folder / "insult.jpg", quality=92)
    draw_caption(bg, "have a lovely day", size=36).save(folder / "friendly.jpg", quality=92)
    photo(5, size=(320, 240)).save(folder / "plain.png")
    photo(6, size=(320, 240)).save(folder / "captioned.png")
    (folder / "captioned.txt").write_text("shut up you moron")  # a caption, not an item
    write_video(folder / "overlay.mp4", ("you are a stupid idiot", 3.0, 5.0))
    data = (folder / "overlay.mp4").read_bytes()
    (folder / "broken.mp4").write_bytes(data[: len(data) // 5])
    (folder / "noise.mp4").write_bytes(os.urandom(4000))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "comment.txt").write_bytes("I want to kill myself".encode())
    (folder / "latin1.txt").write_bytes("caf\xe9 is nice, merci".encode("latin-1"))
    (folder / "long.txt").write_bytes(b"x" * 1_000_000 + b"\nyou idiot")
    return folder


@pytest.fixture(scope="module")
def moderated(media, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "mod"
    result = mmpipe.moderate(str(media), str(out), progress=False, shard_size=4)
    rows = {r["id"]: r for r in mmpipe.read_output(out).to_pylist()}
    return result, rows, out


@pytest.mark.slow
def test_every_item_is_one_row(moderated, media):
    result, rows, _ = moderated
    expected = {"insult.jpg", "friendly.jpg", "plain.png", "captioned.png", "overlay.mp4", "broken.mp4",
                "noise.mp4", "empty.jpg", "comment.txt", "latin1.txt", "long.txt"}
    assert set(rows) == expected
    assert result.ok + result.errors == len(expected)


def test_offensive_text_in_an_image_is_read_and_flagged(moderated):
    _, rows, _ = moderated
    insult = rows["insult.jpg"]
    assert "stupid" in insult["ocr_text"].lower() and "idiot" in insult["ocr_text"].lower()
    assert insult["score_harassment"] > 0.9 and insult["action"] == "block" and insult["flagged"]
    assert any(r.startswith("harassment ") for r in insult["reasons"])
    assert insult["thumbnail"][:2] == b"\xff\xd8"
    friendly = rows["friendly.jpg"]
    assert "lovely" in friendly["ocr_text"].lower()
    assert friendly["action"] == "allow" and friendly["score_harassment"] < 0.3
    assert rows["plain.png"]["action"] == "allow" and rows["plain.png"]["score_sexual"] < 0.2
    assert rows["captioned.png"]["action"] == "block"  # its caption is moderated with it


def test_video_caption_window_is_found(moderated):
    _, rows, _ = moderated
    video = rows["overlay.mp4"]
    assert video["media_type"] == "video" and video["action"] == "block"
    assert video["frames"] == 8 and video["duration_s"] == pytest.approx(8, abs=0.3)
    harassment = [s for s in video["segments"] if s["category"] == "harassment"]
    assert len(harassment) == 1
    assert abs(harassment[0]["start"] - 3.0) <= 1.0 and abs(harassment[0]["end"] - 5.0) <= 1.0
    assert "[00:03]" in video["ocr_text"]


def test_bad_inputs_are_error_rows(moderated):
    _, rows, _ = moderated
    for name in ("broken.mp4", "noise.mp4", "empty.jpg"):
        assert rows[name]["error"] and rows[name]["action"] is None, name
    assert rows["empty.jpg"]["error"] == "decode: empty file"


def test_texts(moderated):
    _, rows, _ = moderated
    comment = rows["comment.txt"]
    assert comment["media_type"] == "text" and comment["score_self-harm"] == 1.0 and comment["flagged"]
    assert "self-harm: matched 'kill myself'" in comment["reasons"]
    assert rows["latin1.txt"]["action"] == "allow" and "caf\ufffd" in rows["latin1.txt"]["text"]
    long = rows["long.txt"]
    assert long["text_truncated"] and long["error"] is None


def test_review_queue_and_report(moderated):
    result, rows, out = moderated
    queue = [json.loads(line) for line in (out / "review.jsonl").read_text().splitlines()]
    assert {q["id"] for q in queue} == {k for k, r in rows.items() if r["action"] == "review"}
    assert all(q["action"] == "review" and "thumbnail" not in q for q in queue)
    html = (out / "report.html").read_text()
    assert "insult.jpg" in html and "data:image/jpeg;base64," in html and "00:03" in html
    assert result.manifest["actions"]["block"] >= 3


JUDGE_POLICY = """
categories:
  - {name: harassment, source: profanity, media: [text, image, video], review: 0.5, block: 0.99}
escalation: {timeout_s: 5, max_retries: 1, concurrency: 2}   # --judge-url turns it on
"""


def test_uncertain_items_go_to_the_judge(tmp_path):
    server = FakeChatServer()
    try:
        server.then(content='{"action": "block", "reason": "a direct insult"}')
        server.then(content="The text says " * 40)  # a looping judge
        manifest = tmp_path / "texts.jsonl"
        manifest.write_text('{"id": "a", "text": "i will kill you"}\n'
                            '{"id": "b", "text": "shut up"}\n'
                            '{"id": "d", "text": "you are a stupid idiot"}\n'
                            '{"id": "c", "text": "have a lovely day"}\n')
        policy = tmp_path / "policy.yaml"
        policy.write_text(JUDGE_POLICY)
        out = tmp_path / "out"
        mmpipe.moderate(str(manifest), str(out), policy=str(policy), judge_url=server.url,
                        progress=False)
        rows = {r["id"]: r for r in mmpipe.read_output(out).to_pylist()}
    finally:
        server.httpd.shutdown()
    assert len(server.requests) == 2  # "c" is clearly fine: not escalated
    verdicts = {k: json.loads(rows[k]["judge"]) for k in ("a", "b")}
    statuses = sorted(v["status"] for v in verdicts.values())
    assert statuses == ["degenerate", "ok"]
    for key, verdict in verdicts.items():
        if verdict["status"] == "ok":
            assert rows[key]["action"] == "block" and "judge: block: a direct insult" in rows[key]["reasons"]
        else:
            assert rows[key]["action"] == "review" and "judge: no usable verdict" in rows[key]["reasons"]
    assert rows["c"]["judge"] is None and rows["c"]["action"] == "allow"
    assert rows["d"]["judge"] is None and rows["d"]["action"] == "block"  # a block is not escalated


def test_bad_judge_url_is_refused_before_the_job(media, tmp_path):
    with pytest.raises(mmpipe.ConfigError, match="--judge-url: 'ftp://x' is not an http\(s\):// URL with a host"):
        mmpipe.moderate(str(media), str(tmp_path / "o"), judge_url="ftp://x", progress=False)


@pytest.mark.slow
def test_bad_policy_is_exit_2_one_line(media, tmp_path):
    policy = tmp_path / "strict.yaml"
    policy.write_text("categories:\n  - {name: x, source: words, media: [text], review: 0.9, block: 0.1, words: [a]}\n")
    proc = subprocess.run([*CLI, "moderate", str(media), "--out", str(tmp_path / "o"), "--policy", str(policy)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "mmpipe: error: strict.yaml: categories[0]: block (0.1) must be >= review (0.9)"


@pytest.mark.slow
def test_sigkill_then_resume_keeps_every_id_once(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    bg = photo(1, size=(480, 270))
    for i in range(24):
        phrase = "you are a stupid idiot" if i % 3 == 0 else f"meeting at {i} o'clock"
        draw_caption(bg, phrase, size=30).save(folder / f"img{i:02d}.jpg")
    out = tmp_path / "out"
    args = [*CLI, "moderate", str(folder), "--out", str(out), "--shard-size", "2", "--batch-size", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "_commits.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "already done" in again.stderr
    ids = mmpipe.read_output(out)["id"].to_pylist()
    assert sorted(ids) == sorted(f"img{i:02d}.jpg" for i in range(24))
    actions = dict(zip(ids, mmpipe.read_output(out)["action"].to_pylist()))
    assert all(actions[f"img{i:02d}.jpg"] == "block" for i in range(0, 24, 3))


CLIP_POLICY = """
categories:
  - name: violence/graphic
    source: clip
    prompts: {positive: [a photo of a fight, a photo of blood], negative: [a landscape photo]}
    media: [image, video]
    review: 0.6
    block: 0.9
"""


def test_zero_shot_clip_categories_need_and_use_a_checkpoint(media, tiny_model_spec, tmp_path):
    policy = tmp_path / "clip.yaml"
    policy.write_text(CLIP_POLICY)
    with pytest.raises(mmpipe.ConfigError, match="--clip-model"):
        mmpipe.moderate(str(media), str(tmp_path / "o"), policy=str(policy), progress=False)
    out = tmp_path / "clip"
    mmpipe.moderate(str(media), str(out), policy=str(policy), clip_model=tiny_model_spec,
                    progress=False, limit=6)
    table = mmpipe.read_output(out)
    scores = dict(zip(table["id"].to_pylist(), table["score_violence/graphic"].to_pylist()))
    visual = {k: v for k, v in scores.items() if k.endswith((".jpg", ".png", ".mp4"))
              and not k.startswith(("empty", "broken", "noise"))}
    assert visual and all(0.0 <= v <= 1.0 for v in visual.values())
    assert len(set(round(v, 6) for v in visual.values())) > 1  # the images are told apart


def test_long_videos_are_capped_and_say_so(media, tmp_path):
    out = tmp_path / "capped"
    mmpipe.moderate(str(media / "overlay.mp4"), str(out), max_frames=3, progress=False)
    row = mmpipe.read_output(out).to_pylist()[0]
    assert row["frames"] == 3 and any("first 3 frames" in r for r in row["reasons"])


def test_the_signature_of_a_policy_reads_as_before_the_source_registry():
    """Output folders record the policy in their signature; one written by the single-class
    policy schema (its dump of the default policy, kept in tests/data) must still resume."""
    from mmpipe.jobs.moderate import signed_policy
    from mmpipe.stages.checks import load_moderation_policy

    before = json.loads((Path(__file__).parent / "data" / "default_policy_signature_0.1.0.json").read_text())
    assert signed_policy(load_moderation_policy(None)) == before
