"""HEIC/HEIF (iPhone photos) through decode_image, and end to end through embed, moderate and a
bank. The files are real HEIC, encoded here with pillow-heif's bundled x265 (mmpipe decodes with
pi-heif, which has no encoder)."""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import mmpipe
from mmpipe.bank import Matcher, add_files, hash_image, open_bank
from mmpipe.decode import sniff_media_type
from mmpipe.decode.image import DecodeError, decode_image
from mmpipe.sample_data import sample_photos
from mmpipe.sample_moderation import draw_caption
from tests.conftest import photo

RED = (255, 0, 0)


_ENCODE = """
import io, pickle, sys
import pillow_heif
from PIL import Image
pillow_heif.register_heif_opener()
png, kw = pickle.load(sys.stdin.buffer)
buf = io.BytesIO()
Image.open(io.BytesIO(png)).save(buf, "HEIF", quality=90, **kw)
sys.stdout.buffer.write(buf.getvalue())
"""


def heic(img: Image.Image, **kw) -> bytes:
    """``img`` saved by pillow-heif's Pillow plugin, in a process of its own: registered here, its
    plugin would stand in for pi-heif's, which is what these tests test."""
    png = io.BytesIO()
    img.save(png, "PNG")
    proc = subprocess.run([sys.executable, "-c", _ENCODE], input=pickle.dumps((png.getvalue(), kw)),
                          capture_output=True, check=True)
    return proc.stdout


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.fixture(scope="module")
def real_photo() -> Image.Image:
    return next(sample_photos(1, size=(320, 240)))[1].convert("RGB")


# tile_size: iPhones store a photo as a grid of 512-pixel HEVC tiles that libheif stitches
@pytest.mark.parametrize("layout", [{}, {"tile_size": 64}], ids=["single", "grid"])
def test_heic_decodes_to_its_size_and_pixels(real_photo, layout):
    data = heic(real_photo, **layout)
    assert data[4:12] == b"ftypheic" and sniff_media_type(data, "x.bin") == "image"
    img, size = decode_image(data)
    assert (img.mode, img.size, size) == ("RGB", (320, 240), (320, 240))
    assert mean_abs_diff(img, real_photo) < 2  # lossy HEVC at quality 90, nothing shifted


def test_rotated_heic_comes_out_as_displayed_once():
    stored = np.zeros((40, 60, 3), np.uint8)  # 60 wide, 40 tall, red in the stored top-left
    stored[:12, :12] = RED
    src = Image.fromarray(stored)
    exif = src.getexif()
    exif[0x0112] = 6
    data = heic(src, exif=exif.tobytes())
    # Like an iPhone's: an irot transform, and the EXIF orientation 6 kept beside it.
    assert Image.open(io.BytesIO(data)).info["original_orientation"] == 6
    img, size = decode_image(data)
    assert size == (40, 60) and img.size == (40, 60)  # displayed: taller than wide
    # rotated 90 degrees clockwise, once: the stored top-left lands top-right (the other way
    # round is 10 off)
    assert mean_abs_diff(img, Image.fromarray(np.rot90(stored, k=-1))) < 2


def test_heic_over_the_pixel_cap_is_refused_from_its_header(real_photo):
    with pytest.raises(DecodeError, match="image too large: 320x240 pixels exceeds the 1000-pixel"):
        decode_image(heic(real_photo), max_pixels=1000)
    # A small real file whose ispe box claims 30000x30000: refused before any decoding.
    data = bytearray(heic(photo(1)))
    at = data.index(b"ispe")
    data[at + 8: at + 16] = struct.pack(">II", 30_000, 30_000)
    t0 = time.perf_counter()
    with pytest.raises(DecodeError, match="image too large: 30000x30000"):
        decode_image(bytes(data))
    assert time.perf_counter() - t0 < 0.5


def test_heic_whose_stream_is_larger_than_its_header_is_refused():
    # The header passes the cap; libheif's own limit stops the 512x512 stream before decoding it.
    data = bytearray(heic(Image.new("RGB", (512, 512), (90, 120, 200))))
    at = data.index(b"ispe")
    data[at + 8: at + 16] = struct.pack(">II", 64, 64)
    with pytest.raises(DecodeError, match=r"^corrupt image: .*Security limit exceeded.*\d$"):
        decode_image(bytes(data))


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_heic_is_a_corrupt_image(real_photo, cut):
    data = heic(real_photo)
    with pytest.raises(DecodeError, match=r"^corrupt image: .*\S$"):  # no trailing newline
        decode_image(data[: int(len(data) * cut)])


def test_embed_gives_heic_a_healthy_row_like_its_png(real_photo, tiny_model_spec, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "IMG_0001.HEIC").write_bytes(heic(real_photo))
    real_photo.save(folder / "same.png")
    result = mmpipe.embed(str(folder), str(tmp_path / "out"), model=tiny_model_spec,
                          progress=False)
    assert (result.ok, result.errors) == (2, 0)
    rows = {r["id"]: r for r in mmpipe.read_output(tmp_path / "out").to_pylist()}
    row = rows["IMG_0001.HEIC"]
    assert row["error"] is None and (row["width"], row["height"]) == (320, 240)
    vec = np.asarray(row["image_embedding"], np.float32)
    png = np.asarray(rows["same.png"]["image_embedding"], np.float32)
    assert abs(np.linalg.norm(vec) - 1) < 1e-4
    assert float(vec @ png) > 0.99  # the same picture, through a lossy codec


@pytest.mark.slow
def test_moderate_reads_the_text_in_a_heic(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "meme.heic").write_bytes(
        heic(draw_caption(photo(3, size=(640, 360)), "you are a stupid idiot", size=36)))
    result = mmpipe.moderate(str(folder), str(tmp_path / "out"), progress=False)
    assert (result.ok, result.errors) == (1, 0)
    row = mmpipe.read_output(tmp_path / "out").to_pylist()[0]
    assert row["error"] is None and row["media_type"] == "image"
    assert "idiot" in row["ocr_text"].lower() and row["action"] == "block"


def test_bank_takes_heic_and_matches_its_png(real_photo, tmp_path):
    path = tmp_path / "photo.heic"
    path.write_bytes(heic(real_photo))
    add_files(tmp_path / "bank", [path], label="known")
    rows, hashes = open_bank(tmp_path / "bank").hashes("pdq")
    query = np.frombuffer(hash_image(np.asarray(real_photo))["pdq"], np.uint8)[None]
    _, distance = Matcher(hashes).nearest(query)
    assert len(rows) == 3 and distance[0] <= 31  # the full image and its two crops
