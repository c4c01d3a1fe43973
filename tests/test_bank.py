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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# Tiny random CLIP puts any two different photos close together (0.76-0.998 measured among the
# sample photos) and JPEG q30 or half-size copies within 1e-4 of 1, so 0.9995 is where this
# model separates them; the policy's default (0.9) is for real checkpoints.
TINY_CLIP_COPY = 0.9995
COPIES = ("jpeg-q30", "half-size")


@pytest.fixture(scope="module")
def clip_bank(photos, tiny_model_spec, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip-bank") / "known"
    files = [str(p) for name, p in photos.items() if name != "synthetic"]
    proc = subprocess.run([*CLI, "bank", "add", str(path), *files, "--label", "known-bad",
                           "--clip-model", tiny_model_spec], capture_output=True, text=True)
    assert proc.returncode == 0 and "7 CLIP vectors" in proc.stderr, proc.stderr
    return path


def _unrelated() -> list[Image.Image]:
    return [img.convert("RGB") for source, img, _, _ in sample_photos(21, size=(320, 240))
            if source.file not in BANKED]


@pytest.mark.slow
def test_a_clip_bank_records_its_model_and_a_vector_per_file(clip_bank, tiny_clip):
    banked = open_bank(clip_bank)
    assert banked.info()["clip"] == {"model": f"path:{tiny_clip.resolve()}", "dim": 16, "vectors": 7}
    rows, vectors = banked.vectors()
    assert [banked.entry(int(r))["variant"] for r in rows] == ["full"] * 7
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert banked.hashes("pdq")[0].tolist() == list(range(len(banked)))  # hashes as before


@pytest.mark.slow
def test_copies_match_by_clip_similarity_and_unrelated_photos_do_not(clip_bank, photos, tiny_model_spec):
    from mmpipe.bank import VectorMatcher
    from mmpipe.models import load_embedder

    clip = load_embedder(tiny_model_spec)
    embedder = clip.make_embedder()
    banked = open_bank(clip_bank)
    rows, vectors = banked.vectors()
    matcher = VectorMatcher(vectors)

    def nearest(images):
        return matcher.nearest(embedder.embed_images(np.stack([clip.preprocessor.image(i) for i in images])))

    originals = {str(p): Image.open(p).convert("RGB") for n, p in photos.items() if n != "synthetic"}
    for edit in COPIES:
        index, similarity = nearest([EDITS[edit](img) for img in originals.values()])
        found = [banked.entry(int(rows[i]))["source"] for i in index]
        assert found == list(originals) and (similarity >= TINY_CLIP_COPY).all(), (edit, similarity)
    _, similarity = nearest(_unrelated())
    assert (similarity < TINY_CLIP_COPY).all(), similarity.tolist()


@pytest.mark.slow
def test_adding_with_another_model_names_both_and_changes_nothing(clip_bank, photos, tiny_clip, tmp_path):
    import shutil

    other = shutil.copytree(tiny_clip, tmp_path / "other-clip")  # same weights, another model spec
    before = open_bank(clip_bank).table
    proc = subprocess.run([*CLI, "bank", "add", str(clip_bank), str(photos["coins.png"]),
                           "--clip-model", f"path:{other}"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mmpipe: error: {clip_bank}: its CLIP vectors are from path:{tiny_clip.resolve()}, not "
        f"path:{other}; add with --clip-model path:{tiny_clip.resolve()}, or make a new bank for "
        f"path:{other}"]
    assert open_bank(clip_bank).table.equals(before)


def test_a_bank_from_before_vectors_opens_and_takes_them_later(bank, photos, tiny_model_spec, tmp_path):
    import shutil

    from mmpipe.models import load_embedder

    old = shutil.copytree(bank, tmp_path / "old")
    manifest = json.loads((old / "bank.json").read_text())
    del manifest["clip"]
    (old / "bank.json").write_text(json.dumps(manifest))
    assert open_bank(old).clip_model is None and len(open_bank(old).vectors()[0]) == 0
    added = add_files(old, [photos["retina.jpg"]], clip=load_embedder(tiny_model_spec))
    assert len(added) == len(open_bank(bank))  # retina's rows replaced, the others kept
    rows, vectors = open_bank(old).vectors()
    assert [open_bank(old).entry(int(r))["source"] for r in rows] == [str(photos["retina.jpg"])]
    assert open_bank(old).info()["clip"]["vectors"] == 1


def _clip_policy(path: Path, bank: Path, extra: str = "") -> Path:
    path.write_text(f"categories:\n  - name: known-bad\n    source: bank\n    bank: {bank}\n"
                    f"    hash: clip\n{extra}    media: [image, video]\n    review: 1.0\n    block: 1.0\n")
    return path


@pytest.mark.parametrize("extra, error", [
    ("    max_distance: 10\n", "max_distance applies to hash pdq and phash"),
    ("    min_similarity: 1.5\n", "less than or equal to 1"),
])
def test_clip_category_misuse_is_a_policy_error(tmp_path, clip_bank, extra, error):
    from mmpipe.stages.checks import load_moderation_policy as load_policy

    with pytest.raises(Exception, match=error):
        load_policy(str(_clip_policy(tmp_path / "p.yaml", clip_bank, extra)))
    pdq_with_similarity = tmp_path / "q.yaml"
    pdq_with_similarity.write_text(f"categories:\n  - {{name: x, source: bank, bank: {clip_bank}, "
                                   "min_similarity: 0.9, media: [image], review: 1.0, block: 1.0}\n")
    with pytest.raises(Exception, match="min_similarity applies to hash 'clip'"):
        load_policy(str(pdq_with_similarity))


@pytest.mark.slow
def test_a_clip_category_needs_a_bank_with_vectors_and_the_banks_model(tmp_path, bank, clip_bank, tiny_clip):
    from mmpipe.bank import BankError

    (tmp_path / "in").mkdir()
    with pytest.raises(BankError, match="no CLIP vectors"):
        mmpipe.moderate(str(tmp_path / "in"), str(tmp_path / "o"), progress=False,
                        policy=str(_clip_policy(tmp_path / "p.yaml", bank)))
    proc = subprocess.run([*CLI, "moderate", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                           "--policy", str(_clip_policy(tmp_path / "p.yaml", clip_bank)),
                           "--clip-model", "random:ViT-B-32"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mmpipe: error: --clip-model: random:ViT-B-32 is not path:{tiny_clip.resolve()}, the model "
        "of the bank vectors that the policy's hash: clip categories match; pass that, or leave "
        "--clip-model out to use it"]


@pytest.mark.slow
def test_moderation_embeds_frames_once_for_zero_shot_and_clip_bank_and_reports_the_entry(
        clip_bank, photos, tiny_clip, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _jpeg(Image.open(photos["coffee.png"]).convert("RGB"), 30).save(inputs / "copy.jpg")
    _unrelated()[0].save(inputs / "unrelated.png")
    policy = _clip_policy(tmp_path / "policy.yaml", clip_bank, f"    min_similarity: {TINY_CLIP_COPY}\n")
    policy.write_text(policy.read_text() + "  - {name: fight, source: clip, media: [image], review: 1.0, "
                      "block: 2.0, prompts: {positive: [a fight], negative: [a photo]}}\n")
    monkeypatch.chdir(tiny_clip.parent)  # the bank's model, named by a relative path
    result = mmpipe.moderate(str(inputs), str(tmp_path / "out"), policy=str(policy), progress=False,
                             clip_model=f"path:{tiny_clip.name}")
    assert [s.name for s in result.stats.stages] == ["decode", "clip", "bank", "decide"]
    rows = {r["id"]: r for r in mmpipe.read_output(tmp_path / "out").to_pylist()}
    assert rows["unrelated.png"]["action"] == "allow" and rows["unrelated.png"]["bank_match"] is None
    assert rows["copy.jpg"]["action"] == "block", rows["copy.jpg"]
    assert 0 < rows["copy.jpg"]["score_fight"] < 1  # zero-shot scored from the same vectors
    match, = json.loads(rows["copy.jpg"]["bank_match"])
    assert match["source"] == str(photos["coffee.png"]) and match["hash"] == "clip"
    assert match["similarity"] >= TINY_CLIP_COPY and "distance" not in match
    assert any(r.startswith("known-bad: matched 'bank entry ") and "at clip similarity" in r
               for r in rows["copy.jpg"]["reasons"])


@pytest.mark.slow
def test_a_siglip_bank_and_siglip_zero_shot_in_one_moderation_run(photos, tiny_siglip_spec, tmp_path):
    """hash: clip banks and source: clip categories take any image-text embedder's vectors."""
    bank_path = tmp_path / "siglip-bank"
    files = [str(p) for name, p in photos.items() if name != "synthetic"]
    proc = subprocess.run([*CLI, "bank", "add", str(bank_path), *files, "--label", "known-bad",
                           "--clip-model", tiny_siglip_spec], capture_output=True, text=True)
    assert proc.returncode == 0 and "7 CLIP vectors" in proc.stderr, proc.stderr
    assert open_bank(bank_path).info()["clip"]["dim"] == 32
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(photos["coffee.png"]).convert("RGB").save(inputs / "copy.png")
    policy = _clip_policy(tmp_path / "policy.yaml", bank_path, "    min_similarity: 0.9999\n")
    policy.write_text(policy.read_text() + "  - {name: fight, source: clip, media: [image], review: 1.0, "
                      "block: 2.0, prompts: {positive: [a fight], negative: [a photo]}}\n")
    mmpipe.moderate(str(inputs), str(tmp_path / "out"), policy=str(policy), progress=False,
                    clip_model=tiny_siglip_spec)
    row, = mmpipe.read_output(tmp_path / "out").to_pylist()
    assert row["action"] == "block", row
    match, = json.loads(row["bank_match"])
    assert match["source"] == str(photos["coffee.png"]) and match["similarity"] >= 0.9999
    assert 0 < row["score_fight"] < 1
