"""``--decode-device cuda``: which files go to the GPU's JPEG decoder and which take the CPU path,
decided from real files' bytes; the device-side orientation, resize and crop against the CPU
path; the fallback for files the GPU fails; and, with a CUDA GPU only, nvJPEG itself and a whole
job.

Without a GPU, the decoder handed to ``GpuImages`` is Pillow's, wrapped to return tensors as
nvJPEG does, and failing (None) on the files nvJPEG fails: everything after the decode call runs
as on a GPU, on CPU tensors."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

import mmpipe
from mmpipe.decode.jpeg_header import read_jpeg_header
from mmpipe.models import load_embedder
from mmpipe.records import Item
from mmpipe.stages.embedding_batches import EmbedBatch, crop_only, preprocess
from mmpipe.stages.common import ReadThenDecode
from mmpipe.stages.gpu_images import MIN_AGREEMENT, GpuDecoding, GpuImages, agreement
from tests.conftest import photo

CUDA = torch.cuda.is_available()


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def rotated(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(img, exif=exif)


@pytest.fixture(scope="module")
def clip(tiny_model_spec):
    return load_embedder(tiny_model_spec)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    img = photo(7, size=(120, 80))
    png = io.BytesIO()
    img.save(png, "PNG")
    baseline = jpeg(img)
    return {"baseline": baseline, "grey": jpeg(img.convert("L")), "rotated": rotated(img, 6),
            "progressive": jpeg(img, progressive=True), "cmyk": jpeg(img.convert("CMYK")),
            "png": png.getvalue(), "cut_in_scan": baseline[: len(baseline) * 2 // 3],
            "corrupt": b"\xff\xd8\xff\xe0 not a JPEG at all"}


def pillow_as_nvjpeg(datas) -> list:
    """Pillow's decode shaped as nvJPEG's: (3, H, W) uint8 as stored, no EXIF rotation; None
    where it fails (as nvJPEG does on a file cut in its scan data)."""
    out = []
    for data in datas:
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except OSError:
            out.append(None)
            continue
        out.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
    return out


def spec(clip) -> GpuDecoding:
    pre = clip.preprocessor
    return GpuDecoding("test", pre.resize_to, pre.crop,
                       partial(crop_only, pre=pre, max_pixels=64_000_000, fast=False))


def decoded(clip, data: bytes, gpu_jpegs: bool = True):
    fn = ReadThenDecode(partial(preprocess, pre=clip.preprocessor, max_pixels=64_000_000, fast=False,
                                gpu_jpegs=gpu_jpegs), read_workers=1)
    return fn([Item(id="x", uri="x.jpg", data=data)])[0]


def test_which_files_go_to_the_gpu_is_decided_from_their_bytes(clip, files):
    routes = {name: decoded(clip, data) for name, data in files.items()}
    # baseline and grey JPEGs, and one cut inside its scan data (its header is whole), travel as bytes
    for name in ("baseline", "grey", "rotated", "cut_in_scan"):
        assert routes[name].encoded == files[name] and routes[name].pixels is None, name
    # the rest are decoded by the worker, on the CPU
    for name in ("progressive", "cmyk", "png"):
        assert routes[name].encoded is None and routes[name].pixels.shape == (3, 32, 32), name
    assert routes["corrupt"].error.startswith("decode: ")  # an error row, like any broken file
    # the size is read from the header, as displayed: EXIF orientation 6 stands the photo up
    assert (routes["baseline"].width, routes["baseline"].height) == (120, 80)
    assert (routes["rotated"].width, routes["rotated"].height) == (80, 120)
    assert read_jpeg_header(files["rotated"]).orientation == 6
    # without GPU decoding, every image is decoded by the worker
    assert decoded(clip, files["baseline"], gpu_jpegs=False).encoded is None


def test_device_crops_match_the_cpu_path_and_fall_back_per_file(clip, files):
    images = GpuImages(spec(clip), "cpu", decode=pillow_as_nvjpeg)
    names = ["baseline", "rotated", "grey", "cut_in_scan", "corrupt"]
    inputs = [files[n] for n in names] + [spec(clip).cpu(files["png"])]  # a crop made by a worker
    out, errors = images(inputs)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.uint8
    # nvJPEG's stand-in fails the cut file: the CPU path decodes what is there (Pillow cannot:
    # "truncated"), and only then is it an error; corrupt bytes fail on both
    assert [e is not None for e in errors] == [False, False, False, True, True, False]
    assert "truncated" in errors[3] or "corrupt" in errors[3]
    for row, name in enumerate(["baseline", "rotated", "grey"]):
        want = spec(clip).cpu(files[name]).astype(np.int16)
        diff = np.abs(out[row].numpy().astype(np.int16) - want)
        assert diff.mean() < 1.0 and diff.max() <= 8, (name, diff.mean(), diff.max())  # rounding only
    assert np.array_equal(out[5].numpy(), spec(clip).cpu(files["png"]))
    assert not out[3].any() and not out[4].any()  # failed rows are left zero


def test_vectors_from_device_crops_agree_with_the_cpu_path(clip):
    figures = agreement(GpuImages(spec(clip), "cpu", decode=pillow_as_nvjpeg), clip.make_embedder().embed_images)
    assert figures["images"] == 32 and figures["mean_cosine"] >= MIN_AGREEMENT, figures
    assert figures["min_cosine"] > 0.99


def test_the_model_stage_decodes_jpegs_and_fails_only_the_broken_one(clip, files):
    batch_fn = EmbedBatch(clip)
    batch_fn.gpu = GpuImages(spec(clip), "cpu", decode=pillow_as_nvjpeg)
    records = [decoded(clip, files[n]) for n in ("baseline", "png", "cut_in_scan")]
    records.append(decoded(clip, files["baseline"], gpu_jpegs=False))  # the same photo, decoded by a worker
    out = batch_fn(records)
    assert [r.error is not None for r in out] == [False, False, True, False]
    assert out[2].error.startswith("decode: ")
    cosine = float(out[0].outputs["image_embedding"] @ out[3].outputs["image_embedding"])
    assert cosine > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_nvjpeg_on_the_gpu_matches_the_cpu_path(clip, files):
    from mmpipe.decode.gpu import nvjpeg_backend

    backend = nvjpeg_backend()
    if backend is None:
        pytest.skip("no GPU JPEG decoder installed (torchvision or nvidia-nvimgcodec)")
    images = replace(spec(clip), backend=backend).on("cuda")
    out, errors = images([files[n] for n in ("baseline", "rotated", "grey", "cut_in_scan")])
    assert out.device.type == "cuda" and errors[:3] == [None, None, None]
    for row, name in enumerate(["baseline", "rotated", "grey"]):
        diff = np.abs(out[row].cpu().numpy().astype(np.int16) - spec(clip).cpu(files[name]).astype(np.int16))
        assert diff.mean() < 2.0, (name, diff.mean())  # nvJPEG's IDCT and upsampling differ a little
    assert agreement(images, load_embedder("random:ViT-B-32", "cuda").make_embedder().embed_images)["mean_cosine"] >= MIN_AGREEMENT


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_an_embed_job_decodes_on_the_gpu_and_records_the_agreement(image_dir, tiny_model_spec, tmp_path):
    result = mmpipe.embed(str(image_dir), str(tmp_path / "out"), model=tiny_model_spec, device="cuda",
                          decode_device="cuda", progress=False)
    decode = json.loads((tmp_path / "out" / "_manifest.json").read_text())["decode"]
    assert decode["device"] == "cuda" and decode["agreement"]["mean_cosine"] >= MIN_AGREEMENT
    assert result.errors == 0
