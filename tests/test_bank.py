"""Hash banks: add/import round trips, PDQ's robustness to everyday edits of a banked photo, and
a moderation run that flags a re-encoded copy and a video showing a banked photo."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import mmpipe
from mmpipe.bank import Matcher, add_files, hash_image, import_csv, open_bank
from mmpipe.sample_data import sample_photos
from tests.conftest import photo

CLI = [sys.executable, "-m", "mmpipe.cli"]
# Real photographs (the flat, synthetic and low-PDQ-quality sources are left out: see README).
BANKED = ("coins.png", "grass.png", "hubble_deep_field.jpg", "coffee.png", "motorcycle_right.png",
          "retina.jpg", "astronaut.png")


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(img: Image.Image, share: float) -> Image.Image:
    dx, dy = round(img.width * share), round(img.height * share)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


EDITS = {
    "jpeg-q30": lambda img: _jpeg(img, 30),
    "half-size": lambda img: img.resize((img.width // 2, img.height // 2), Image.BILINEAR),
    "crop-5%-a-side": lambda img: _crop(img, 0.05),
    "grayscale": lambda img: ImageOps.grayscale(img).convert("RGB"),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    found = {}
    for source, img, _, _ in sample_photos(12, size=(320, 240)):
        if source.file in BANKED and source.file not in found:
            found[source.file] = folder / f"{Path(source.file).stem}.png"
            img.convert("RGB").save(found[source.file])
    photo(0, (320, 240)).save(folder / "synthetic.png")
    found["synthetic"] = folder / "synthetic.png"
    return found


@pytest.fixture(scope="module")
def bank(photos, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bank") / "known"
    add_files(path, photos.values(), label="known-bad")
    return path


def test_add_then_reopen_keeps_every_entry_and_adding_again_replaces(bank, photos):
    reopened = open_bank(bank)
    assert reopened.info()["entries"] == len(photos)
    assert reopened.info()["labels"] == {"known-bad": len(photos)}
    assert set(reopened.table["variant"].to_pylist()) == {"full", "crop0.025", "crop0.05"}
    again = add_files(bank, [photos["coins.png"]], label="known-bad")
    assert len(again) == len(reopened)


@pytest.mark.parametrize("edit", EDITS)
def test_every_edited_copy_matches_its_original_within_pdq_31(bank, photos, edit):
    banked = open_bank(bank)
    rows, hashes = banked.hashes("pdq")
    names, queries = [], []
    for name, path in photos.items():
        names.append(str(path))
        queries.append(hash_image(np.asarray(EDITS[edit](Image.open(path).convert("RGB"))))["pdq"])
    queries = np.frombuffer(b"".join(queries), np.uint8).reshape(len(queries), -1)
    index, distance = Matcher(hashes).nearest(queries)
    found = [banked.entry(int(rows[i]))["source"] for i in index]
    assert found == names and (distance <= 31).all(), dict(zip(names, distance.tolist()))


def test_unrelated_photos_do_not_match(bank):
    rows, hashes = open_bank(bank).hashes("pdq")
    others = [img for source, img, _, _ in sample_photos(21, size=(320, 240)) if source.file not in BANKED]
    others += [photo(seed, (320, 240)) for seed in (7, 8, 9)]
    queries = b"".join(hash_image(np.asarray(img.convert("RGB")))["pdq"] for img in others)
    _, distance = Matcher(hashes).nearest(np.frombuffer(queries, np.uint8).reshape(len(others), -1))
    assert (distance > 31).all(), distance.tolist()


def test_csv_import_round_trip_and_a_bad_row_is_one_line_naming_it(tmp_path):
    pdq, phash = "f" * 48 + "0" * 16, "a1" * 8
    good = tmp_path / "good.csv"
    good.write_text(f"id,label,pdq,phash\nx1,spam,{pdq},{phash}\nx2,,{pdq.upper()},\n")
    banked = import_csv(tmp_path / "b", good)
    assert banked.table["id"].to_pylist() == ["x1", "x2"] and banked.entry(0)["label"] == "spam"
    assert open_bank(tmp_path / "b").table["pdq"][1].as_py().hex() == pdq
    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,pdq\nok,{pdq}\nshort,abc123\n")
    proc = subprocess.run([*CLI, "bank", "import", str(tmp_path / "b"), str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mmpipe: error: {bad}: line 3: pdq must be 64 hex digits, not 'abc123'"]
    assert len(open_bank(tmp_path / "b")) == 2  # nothing of a file with a bad row goes in


def _video(path: Path, first: Image.Image, second: Image.Image, fps: int = 2) -> Path:
    """Two seconds of ``first``, then two of ``second``."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = first.width, first.height, "yuv420p"
        for img in [first] * 2 * fps + [second] * 2 * fps:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_moderation_flags_edited_copies_and_video_frames_and_reports_the_entry(bank, photos, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    coffee = Image.open(photos["coffee.png"]).convert("RGB")
    _jpeg(ImageOps.grayscale(coffee).convert("RGB"), 30).save(inputs / "copy.jpg")
    unrelated = photo(11, (320, 240))
    unrelated.save(inputs / "unrelated.png")
    _video(inputs / "clip.mp4", unrelated, coffee)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"categories:\n  - name: known-bad\n    source: bank\n    bank: {bank}\n"
                      "    media: [image, video]\n    review: 1.0\n    block: 1.0\n")
    out = tmp_path / "out"
    mmpipe.moderate(str(inputs), str(out), policy=str(policy), progress=False)
    rows = {r["id"]: r for r in mmpipe.read_output(out).to_pylist()}
    assert rows["unrelated.png"]["action"] == "allow" and rows["unrelated.png"]["bank_match"] is None
    for item in ("copy.jpg", "clip.mp4"):
        assert rows[item]["action"] == "block", rows[item]
        match, = json.loads(rows[item]["bank_match"])
        assert match["source"] == str(photos["coffee.png"]) and match["distance"] <= 31
        assert any(r.startswith("known-bad: matched 'bank entry ") for r in rows[item]["reasons"])
    assert json.loads(rows["clip.mp4"]["bank_match"])[0]["time_s"] >= 2.0


def test_a_missing_bank_stops_the_job_before_it_starts(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"categories:\n  - name: known-bad\n    source: bank\n    bank: {tmp_path / 'nope'}\n"
                      "    media: [image]\n    review: 1.0\n    block: 1.0\n")
    (tmp_path / "in").mkdir()
    proc = subprocess.run([*CLI, "moderate", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                           "--policy", str(policy)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a hash bank" in proc.stderr


def test_the_multi_index_finds_what_the_scan_finds():
    rng = np.random.default_rng(3)
    bank = rng.integers(0, 256, (20_000, 32), dtype=np.uint8)
    queries = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    for q in range(0, 300, 3):  # near-duplicates 0-40 bits away, across the 31-bit limit
        bits = np.unpackbits(bank[rng.integers(len(bank))])
        bits[rng.choice(256, rng.integers(0, 41), replace=False)] ^= 1
        queries[q] = np.packbits(bits)
    matcher = Matcher(bank)
    index, distance = matcher.nearest(queries)
    matched, matched_d = matcher.nearest(queries, within=31)
    assert (matched == np.where(distance <= 31, index, -1)).all()
    assert (matched_d[matched >= 0] == distance[matched >= 0]).all() and 0 < (matched >= 0).sum() < 100
