"""read_jpeg_header / gpu_decodable on real files written by Pillow (and ffmpeg's lossless JPEG
encoder), checked against what Pillow reads from the same bytes."""

from __future__ import annotations

import io
import random
import struct
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image, ImageOps

from mmpipe.decode.jpeg_header import JpegHeader, gpu_decodable, read_jpeg_header
from tests.conftest import photo

BIG = 10**9
XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf'
       '-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
       'tiff:Orientation="{}"/></rdf:RDF></x:xmpmeta>')


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def exif(orientation: int | None, endian: str = "<") -> Image.Exif:
    tags = Image.Exif()
    tags.endian = endian
    tags[0x010F] = "A camera maker"  # longer than 4 bytes: stored at an offset, before the tag
    if orientation is not None:
        tags[0x0112] = orientation
    return tags


def pillow_orientation(data: bytes) -> int:
    return Image.open(io.BytesIO(data)).getexif()[0x0112]


def segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each marker segment from SOI up to and including SOS's header."""
    out, pos = [], 2
    while True:
        (length,) = struct.unpack_from(">H", data, pos + 2)
        out.append((pos, pos + 2 + length))
        if data[pos + 1] == 0xDA:
            return out
        pos += 2 + length


def segment(data: bytes, marker: int) -> tuple[int, int]:
    return next((s, e) for s, e in segments(data) if data[s + 1] == marker)


@pytest.mark.parametrize("size", [(1, 1), (17, 9), (640, 480), (333, 777), (4001, 3)])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_size_and_components_match_pillow(tmp_path, size, mode):
    path = tmp_path / "a.jpg"
    photo(1, size).convert(mode).save(path, "JPEG", quality=90)
    header = read_jpeg_header(path.read_bytes())
    with Image.open(path) as img:
        assert (header.width, header.height) == img.size
        assert header.components == len(img.getbands())
    assert (header.process, header.precision, header.orientation) == (0, 8, 1)
    assert gpu_decodable(path.read_bytes(), max_pixels=size[0] * size[1])
    assert not gpu_decodable(path.read_bytes(), max_pixels=size[0] * size[1] - 1)


def test_progressive_goes_to_the_cpu():
    data = jpeg(photo(2, (64, 48)), progressive=True)
    assert read_jpeg_header(data).process == 2
    assert not gpu_decodable(data, BIG)


def test_lossless_goes_to_the_cpu():
    av = pytest.importorskip("av")  # ffmpeg's ljpeg encoder writes a real SOF3 file
    codec = av.CodecContext.create("ljpeg", "w")
    codec.width, codec.height, codec.pix_fmt, codec.time_base = 34, 18, "yuvj420p", Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(np.asarray(photo(3, (34, 18))), format="rgb24")
    data = b"".join(bytes(p) for p in [*codec.encode(frame.reformat(format="yuvj420p")),
                                       *codec.encode(None)])
    header = read_jpeg_header(data)
    assert (header.process, header.width, header.height) == (3, 34, 18)
    assert (header.width, header.height) == Image.open(io.BytesIO(data)).size
    assert not gpu_decodable(data, BIG)


def test_cmyk_with_its_adobe_marker_goes_to_the_cpu():
    data = jpeg(photo(4, (40, 30)).convert("CMYK"))
    header = read_jpeg_header(data)
    assert (header.components, header.adobe_transform) == (4, 0)
    assert Image.open(io.BytesIO(data)).info["adobe_transform"] == 0  # Pillow reads it the same
    assert not gpu_decodable(data, BIG)


def test_rgb_stored_jpegs_go_to_the_cpu():
    # keep_rgb: no YCbCr conversion; libjpeg marks it with APP14 transform 0 and ids 'R','G','B'.
    data = jpeg(photo(5, (40, 30)), keep_rgb=True)
    header = read_jpeg_header(data)
    assert (header.components, header.adobe_transform, header.component_ids) == (3, 0, b"RGB")
    assert not gpu_decodable(data, BIG)
    # Without the APP14 segment the ids alone still say RGB to libjpeg: same pixels from Pillow.
    start, end = segment(data, 0xEE)
    bare = data[:start] + data[end:]
    assert read_jpeg_header(bare).adobe_transform is None and not read_jpeg_header(bare).jfif
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(bare))),
                          np.asarray(Image.open(io.BytesIO(data))))
    assert not gpu_decodable(bare, BIG)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(endian, orientation):
    data = jpeg(photo(6, (30, 20)), exif=exif(orientation, endian))
    assert data[data.index(b"Exif") + 6:][:2] == (b"II" if endian == "<" else b"MM")
    header = read_jpeg_header(data)
    img = Image.open(io.BytesIO(data))
    assert header.orientation == img.getexif()[0x0112] == orientation
    size = (header.height, header.width) if orientation >= 5 else (header.width, header.height)
    assert ImageOps.exif_transpose(img).size == size
    assert gpu_decodable(data, BIG)


def test_orientation_from_xmp_only_when_exif_has_none():
    img = photo(7, (30, 20))
    assert read_jpeg_header(jpeg(img, exif=exif(None))).orientation == 1
    for tags in (None, exif(None)):
        data = jpeg(img, xmp=XMP.format(6).encode(), **({"exif": tags} if tags else {}))
        assert read_jpeg_header(data).orientation == pillow_orientation(data) == 6
    data = jpeg(img, exif=exif(3), xmp=XMP.format(6).encode())
    assert read_jpeg_header(data).orientation == pillow_orientation(data) == 3


def test_unreadable_exif_means_no_rotation():
    data = bytearray(jpeg(photo(8, (30, 20)), exif=exif(6)))
    tiff = data.index(b"Exif\0\0") + 6
    data[tiff + 4:tiff + 8] = struct.pack("<I", 0xFFFFFFF0)  # IFD0 far past the segment
    assert read_jpeg_header(bytes(data)).orientation == 1
    data[tiff:tiff + 2] = b"XX"  # neither byte order
    assert read_jpeg_header(bytes(data)).orientation == 1


@pytest.mark.parametrize("data", [b"", b"\xff", b"\xff\xd8", b"\xff\xd8\xff\xd9", b"GIF89a" * 9,
                                  random.Random(0).randbytes(5000)])
def test_not_a_jpeg(data):
    assert read_jpeg_header(data) is None and not gpu_decodable(data, BIG)


def test_png_is_not_a_jpeg():
    buf = io.BytesIO()
    photo(9, (20, 20)).save(buf, "PNG")
    assert read_jpeg_header(buf.getvalue()) is None and not gpu_decodable(buf.getvalue(), BIG)


def test_cut_in_the_header_goes_to_the_cpu_cut_in_the_scan_does_not():
    data = jpeg(photo(10, (64, 48)), exif=exif(6))
    header_end = segments(data)[-1][1]
    for cut in range(header_end):
        assert read_jpeg_header(data[:cut]) is None, cut
    # The header is whole from here on: only the GPU decode itself can find the missing scan
    # data, and must then fail the item (Pillow does too).
    full = read_jpeg_header(data)
    for cut in (header_end, header_end + 1, (header_end + len(data)) // 2, len(data) - 2):
        assert read_jpeg_header(data[:cut]) == full and gpu_decodable(data[:cut], BIG)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data[:(header_end + len(data)) // 2])).load()


def test_broken_marker_structure_goes_to_the_cpu():
    data = jpeg(photo(11, (32, 24)))
    dqt, _ = segment(data, 0xDB)
    sof, sof_end = segment(data, 0xC0)
    broken = {
        "unknown marker": data[:dqt + 1] + b"\x02" + data[dqt + 2:],
        "junk before a marker": data[:dqt] + b"\x00" + data[dqt:],
        "length past the end": data[:dqt + 2] + b"\xff\xf0" + data[dqt + 4:],
        "length under 2": data[:dqt + 2] + b"\x00\x01" + data[dqt + 4:],
        "no SOF before SOS": data[:sof] + data[sof_end:],
        "two SOFs": data[:sof_end] + data[sof:],
        "EOI before any scan": data[:dqt] + b"\xff\xd9" + data[dqt:],
    }
    for name, bad in broken.items():
        assert read_jpeg_header(bad) is None, name
    # Fill bytes before a marker are allowed, by the standard and by Pillow.
    padded = data[:dqt] + b"\xff\xff\xff" + data[dqt:]
    assert read_jpeg_header(padded) == read_jpeg_header(data)
    assert Image.open(io.BytesIO(padded)).size == (32, 24)


def test_work_is_bounded_by_a_marker_count():
    data = jpeg(photo(12, (16, 16)))
    comment = b"\xff\xfe\x00\x04hi"
    assert read_jpeg_header(data[:2] + comment * 200 + data[2:]) == read_jpeg_header(data)
    assert read_jpeg_header(data[:2] + comment * 100_000 + data[2:]) is None


def test_sample_photos_are_all_gpu_decodable(tmp_path):
    pytest.importorskip("skimage")
    from mmpipe.sample_data import BROKEN_FILES, make_sample_images

    folder = make_sample_images(tmp_path, n=20, captions=False, png_share=0.0)
    photos = sorted(p for p in folder.glob("*.jpg") if p.name not in BROKEN_FILES)
    assert len(photos) == 20
    for path in photos:
        with Image.open(path) as img:
            header = read_jpeg_header(path.read_bytes())
            assert (header.width, header.height) == img.size
        assert gpu_decodable(path.read_bytes(), BIG), path.name
    # The broken sample is cut in its scan data: a whole header, so the GPU decode must fail it.
    assert gpu_decodable((folder / BROKEN_FILES[0]).read_bytes(), BIG)
    assert not gpu_decodable((folder / BROKEN_FILES[1]).read_bytes(), BIG)


def test_random_mutations_never_raise():
    data = jpeg(photo(13, (64, 48)), exif=exif(6, ">"), xmp=XMP.format(8).encode())
    header_end = segments(data)[-1][1]
    rng = random.Random(1234)
    for _ in range(2000):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(header_end + 16)  # mostly in the header, where the parsing is
            op = rng.randrange(4)
            if op == 0:
                buf[at] = rng.randrange(256)
            elif op == 1:
                buf[at:at + 2] = rng.randbytes(2)  # often a length or an offset
            elif op == 2:
                buf[at:at] = rng.randbytes(rng.randint(1, 8))
            else:
                del buf[at:at + rng.randint(1, 8)]
        mutated = bytes(buf[:rng.randrange(len(buf) + 1)] if rng.random() < 0.3 else buf)
        header = read_jpeg_header(mutated)
        assert header is None or (isinstance(header, JpegHeader) and 1 <= header.orientation <= 8)
        assert gpu_decodable(mutated, BIG) in (True, False)
