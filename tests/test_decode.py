"""decode_image on bad and awkward inputs, alone and through a whole `mmpipe.embed` job."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

import mmpipe
from mmpipe.decode.image import DecodeError, decode_image
from tests.conftest import photo

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pixel(img: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(img)[y, x])


def close(a, b, tol: int = 8) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


# --- bad inputs, made here ------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def crafted_png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few hundred bytes whose IHDR claims 10 G pixels; its IDAT is nowhere near enough data,
    so only a decoder that trusts the header first can call it "too large" rather than corrupt."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + _png_chunk(b"IEND", b""))


def one_bit_png_bomb() -> bytes:
    """A real, valid PNG: 10000x10000 1-bit pixels (100 M) in ~12 KB."""
    return encode(Image.new("1", (10_000, 10_000)), "PNG")


def crafted_jpeg_bomb() -> bytes:
    """A small real JPEG whose SOF0 header is patched to claim 30000x30000 pixels."""
    data = bytearray(encode(Image.new("RGB", (16, 16), RED), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", 30_000, 30_000)  # height, width
    return bytes(data)


def noisy(size=(64, 64), seed=1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def bad_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, a substring its error must hold)."""
    jpeg = encode(noisy(), "JPEG", quality=90)
    png = encode(noisy(), "PNG")
    return {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
        "truncated.png": (png[: len(png) // 2], "corrupt"),
        "random.jpg": (np.random.default_rng(7).bytes(3000), "unrecognised"),
        "notes.png": (b"this is a text file, not a picture\n" * 20, "unrecognised"),
        "scan.tiff": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
                      b"trailer\n<< /Root 1 0 R >>\n%%EOF\n", "unrecognised"),
        # HEIF's brand ("ftyp heic") and an empty meta box: no image in it to identify, as with a
        # PNG cut short in its header (real HEIC files are in test_heic.py)
        "phone.heic": (struct.pack(">I", 24) + b"ftypheic\x00\x00\x00\x00mif1heic"
                       + struct.pack(">I", 8) + b"meta", "unrecognised"),
        "bomb.png": (crafted_png_bomb(), "too large"),
        "bomb1bit.png": (one_bit_png_bomb(), "too large"),
        "bomb.jpg": (crafted_jpeg_bomb(), "too large"),
    }


@pytest.mark.parametrize("name", list(bad_files()))
def test_bad_input_is_a_decode_error(name):
    data, reason = bad_files()[name]
    with pytest.raises(DecodeError, match=reason):
        decode_image(data)


def test_svg_is_unsupported():
    svg = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
           b'<rect width="64" height="64" fill="red"/></svg>')
    with pytest.raises(DecodeError, match="unsupported"):
        decode_image(svg)


@pytest.mark.parametrize("make", [crafted_png_bomb, one_bit_png_bomb, crafted_jpeg_bomb])
def test_bomb_refused_from_the_header_quickly(make):
    data = make()
    t0 = time.perf_counter()
    with pytest.raises(DecodeError, match="too large") as info:
        decode_image(data)
    assert time.perf_counter() - t0 < 0.5
    assert "pixel limit" in str(info.value)


def test_pixel_limit_is_the_callers():
    data = encode(Image.new("RGB", (40, 30), RED), "PNG")
    with pytest.raises(DecodeError, match="40x30 pixels exceeds the 1000-pixel limit"):
        decode_image(data, max_pixels=1000)
    assert decode_image(data, max_pixels=1200)[1] == (40, 30)


# --- awkward but valid inputs ---------------------------------------------------------------


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG", quality=95)  # red ink


def palette_png(transparent: bool) -> bytes:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([*RED, *GREEN, *BLUE] + [0] * (256 * 3 - 9))
    img.putpixel((1, 1), 1)
    img.putpixel((2, 2), 2)
    return encode(img, "PNG", **({"transparency": 0} if transparent else {}))


def gray16_png(value: int) -> bytes:
    img = Image.fromarray(np.full((6, 8), value, np.uint16))
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16 bits on disk
    return data


def rgba_png() -> bytes:
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 255  # red everywhere, hidden under alpha 0 ...
    arr[1, 1, 3] = 255  # ... except one opaque red pixel
    arr[2, 2] = (0, 0, 255, 128)  # and one half-transparent blue
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def colour_keyed_png(mode: str) -> bytes:
    """No alpha band: a tRNS chunk names one colour as transparent (magenta, or black for grey)."""
    if mode == "RGB":
        arr = np.zeros((4, 4, 3), np.uint8)
        arr[...] = (255, 0, 255)
        arr[1, 1] = BLUE
        return encode(Image.fromarray(arr), "PNG", transparency=(255, 0, 255))
    if mode == "L":
        img = Image.new("L", (4, 4), 0)
        img.putpixel((1, 1), 100)
        return encode(img, "PNG", transparency=0)
    arr = np.full((4, 4), 40000, np.uint16)
    arr[1, 1] = 32768
    return encode(Image.fromarray(arr), "PNG", transparency=40000)


def la_png() -> bytes:
    img = Image.new("LA", (4, 4), (0, 0))  # black, fully transparent
    img.putpixel((1, 1), (0, 255))  # black, opaque
    return encode(img, "PNG")


def exif_rotated_jpeg(orientation: int = 6, size=(60, 40)) -> bytes:
    """Stored ``size`` (wider than tall) with a red block in the stored top-left corner."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:12, :12] = RED
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (10, 10), c) for c in (RED, BLUE, GREEN)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    return data


def gray_jpeg() -> bytes:
    return encode(Image.new("L", (10, 10), 128), "JPEG", quality=95)


def test_cmyk_jpeg():
    img, size = decode_image(cmyk_jpeg())
    assert (img.mode, size) == ("RGB", (20, 10))
    assert close(pixel(img, 5, 5), RED)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png(transparent):
    img, size = decode_image(palette_png(transparent))
    assert (img.mode, size) == ("RGB", (4, 4))
    assert pixel(img, 1, 1) == GREEN and pixel(img, 2, 2) == BLUE
    # palette entry 0 is red; when it is the transparent one it is composited on white
    assert pixel(img, 0, 0) == (WHITE if transparent else RED)


def test_16_bit_grayscale_is_scaled_not_clipped():
    img, size = decode_image(gray16_png(32768))  # mid-grey in 16 bits
    assert (img.mode, size) == ("RGB", (8, 6))
    assert close(pixel(img, 3, 3), (128, 128, 128), tol=1)
    img, _ = decode_image(gray16_png(65535))
    assert pixel(img, 0, 0) == WHITE
    img, _ = decode_image(gray16_png(1000))  # a dark 16-bit value stays dark
    assert max(pixel(img, 0, 0)) <= 5


def test_rgba_is_composited_on_white():
    img, _ = decode_image(rgba_png())
    assert img.mode == "RGB"
    assert pixel(img, 0, 0) == WHITE  # fully transparent red: the hidden colour does not leak
    assert pixel(img, 1, 1) == RED
    assert close(pixel(img, 2, 2), (127, 127, 255), tol=2)  # half blue over white


def test_la_is_composited_on_white():
    img, _ = decode_image(la_png())
    assert img.mode == "RGB"
    assert pixel(img, 0, 0) == WHITE and pixel(img, 1, 1) == (0, 0, 0)


@pytest.mark.parametrize("mode, opaque", [("RGB", BLUE), ("L", (100, 100, 100)),
                                         ("I;16", (128, 128, 128))])
def test_colour_keyed_transparency_is_composited_on_white(mode, opaque):
    data = colour_keyed_png(mode)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    img, _ = decode_image(data)
    assert img.mode == "RGB"
    assert pixel(img, 0, 0) == WHITE  # the key colour is see-through, not magenta/black
    assert close(pixel(img, 1, 1), opaque, tol=1)


def test_exif_orientation_6_rotates_pixels_and_reported_size():
    img, size = decode_image(exif_rotated_jpeg(6))
    assert size == (40, 60) and img.size == (40, 60)  # displayed: taller than wide
    # orientation 6 = rotate 90 degrees clockwise: the stored top-left lands top-right
    assert close(pixel(img, 40 - 4, 4), RED, tol=30)
    for x, y in ((4, 4), (4, 60 - 4), (40 - 4, 60 - 4)):
        assert close(pixel(img, x, y), (0, 0, 0), tol=30)


def test_exif_orientation_3_keeps_size():
    img, size = decode_image(exif_rotated_jpeg(3))
    assert size == (60, 40) and img.size == (60, 40)
    assert close(pixel(img, 60 - 4, 40 - 4), RED, tol=30)  # rotated 180 degrees


def test_animated_gif_gives_first_frame():
    img, size = decode_image(animated_gif())
    assert (img.mode, size) == ("RGB", (10, 10))
    assert pixel(img, 5, 5) == RED


def test_grayscale_jpeg():
    img, size = decode_image(gray_jpeg())
    assert (img.mode, size) == ("RGB", (10, 10))
    assert close(pixel(img, 5, 5), (128, 128, 128), tol=2)


# --- min_side: JPEG drafting ----------------------------------------------------------------


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    return encode(photo(3, size=(1600, 1200)), "JPEG", quality=90)


@pytest.mark.parametrize("min_side", [64, 224, 500, 1199])
def test_min_side_drafts_but_keeps_the_short_side(large_jpeg, min_side):
    img, size = decode_image(large_jpeg, min_side=min_side)
    assert size == (1600, 1200)  # the original size is what is reported
    assert min(img.size) >= min_side
    assert img.size[0] * 3 == img.size[1] * 4  # aspect kept
    if min_side <= 600:
        assert img.size[0] < 1600  # the decoder really did scale down


def test_min_side_off_or_larger_than_image_is_full_size(large_jpeg):
    assert decode_image(large_jpeg)[0].size == (1600, 1200)
    assert decode_image(large_jpeg, min_side=5000)[0].size == (1600, 1200)


def test_min_side_is_close_to_a_full_decode(large_jpeg):
    full, _ = decode_image(large_jpeg)
    drafted, _ = decode_image(large_jpeg, min_side=224)
    a = np.asarray(full.resize(drafted.size, Image.BILINEAR), np.float32)
    b = np.asarray(drafted, np.float32)
    assert np.abs(a - b).mean() < 6


def test_min_side_with_exif_rotation():
    img = photo(4, size=(1600, 1200))
    exif = img.getexif()
    exif[0x0112] = 6
    decoded, size = decode_image(encode(img, "JPEG", exif=exif.tobytes()), min_side=224)
    assert size == (1200, 1600)
    assert decoded.size[0] < decoded.size[1] and min(decoded.size) >= 224


def test_min_side_leaves_png_alone():
    img, size = decode_image(encode(photo(5, size=(800, 600)), "PNG"), min_side=64)
    assert img.size == size == (800, 600)


# --- the same battery through a whole embed job ---------------------------------------------


AWKWARD = {
    "awkward/cmyk.jpg": (cmyk_jpeg, (20, 10)),
    "awkward/palette.png": (lambda: palette_png(False), (4, 4)),
    "awkward/palette_alpha.png": (lambda: palette_png(True), (4, 4)),
    "awkward/gray16.png": (lambda: gray16_png(32768), (8, 6)),
    "awkward/rgba.png": (rgba_png, (4, 4)),
    "awkward/la.png": (la_png, (4, 4)),
    "awkward/keyed.png": (lambda: colour_keyed_png("RGB"), (4, 4)),
    "awkward/rotated.jpg": (exif_rotated_jpeg, (40, 60)),
    "awkward/animated.gif": (animated_gif, (10, 10)),
    "awkward/gray.jpg": (gray_jpeg, (10, 10)),
}


def test_embed_job_turns_bad_files_into_error_rows(image_dir, tiny_model_spec, tmp_path):
    bad = bad_files()
    (image_dir / "bad").mkdir()
    (image_dir / "awkward").mkdir()
    for name, (data, _) in bad.items():
        (image_dir / "bad" / name).write_bytes(data)
    for name, (make, _) in AWKWARD.items():
        (image_dir / name).write_bytes(make())
    large = image_dir / "large.jpg"
    large.write_bytes(encode(photo(9, size=(1600, 1200)), "JPEG"))

    t0 = time.perf_counter()
    result = mmpipe.embed(str(image_dir), str(tmp_path / "out"), model=tiny_model_spec,
                          batch_size=4, progress=False)
    elapsed = time.perf_counter() - t0
    n_good = 8 + len(AWKWARD) + 1
    assert (result.ok, result.errors) == (n_good, len(bad))
    assert elapsed < 30  # the bombs were refused from their headers, not decoded

    rows = {r["id"]: r for r in mmpipe.read_output(tmp_path / "out").to_pylist()}
    assert len(rows) == n_good + len(bad)
    for name, (_, reason) in bad.items():
        row = rows[f"bad/{name}"]
        assert row["error"] is not None and row["error"].startswith("decode: "), row
        assert reason in row["error"], row["error"]
        assert row["image_embedding"] is None and row["text_embedding"] is None
    for name, row in rows.items():
        if name.startswith("bad/"):
            continue
        assert row["error"] is None, row
        vec = np.asarray(row["image_embedding"], np.float32)
        assert vec.shape == (16,) and np.isfinite(vec).all()
        assert abs(np.linalg.norm(vec) - 1) < 1e-4
    for name, (_, size) in AWKWARD.items():
        assert (rows[name]["width"], rows[name]["height"]) == size, name
    assert (rows["large.jpg"]["width"], rows["large.jpg"]["height"]) == (1600, 1200)
    assert rows["img2.png"]["text_embedding"] is not None  # captions still embed
    kinds = dict(result.top_errors)
    assert kinds.get("decode: image too large") == 3
    manifest = result.manifest
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"rows": n_good + len(bad), "ok": n_good, "errors": len(bad)}


def test_embed_job_max_pixels_option(image_dir, tiny_model_spec, tmp_path):
    # photo() images are 96x64 = 6144 pixels: a 5000-pixel cap refuses every one of them
    result = mmpipe.embed(str(image_dir), str(tmp_path / "out"), model=tiny_model_spec,
                          max_pixels=5000, progress=False)
    assert (result.ok, result.errors) == (0, 8)
    table = mmpipe.read_output(tmp_path / "out")
    assert all("too large" in e for e in table["error"].to_pylist())
    # an image row that failed to decode keeps no text embedding either: the row is an error row
    assert table["text_embedding"].null_count == 8
