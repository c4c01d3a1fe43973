"""The SigLIP family on a tiny random checkpoint saved like a user's (``path:``/``hf:``): its
preprocessing and vectors equal transformers' own SigLIP path, and everything that takes an
embedder — the embed job, the CLI, variants with their gate, pipeline splitting, zero-shot
scoring — runs it without knowing the family."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmpipe
from mmpipe import ModelLoadError
from mmpipe.decode import decode_image
from mmpipe.models import load_embedder
from mmpipe.models.gate import gated_variant
from mmpipe.models.onnx_embedder import OnnxEmbedder
from mmpipe.models.towers import PixelNormaliser
from mmpipe.models.variants import Variant
from mmpipe.sinks.output_dir import MANIFEST
from mmpipe.models.zero_shot import ZeroShotClip
from mmpipe.models.accuracy import Gate
from conftest import SIGLIP_TOKENS, TINY_IMAGE, photo

COSINE = 0.9999
EXACT_ATOL = 1e-5
SIZES = [(96, 64), (64, 96), (TINY_IMAGE, TINY_IMAGE), (20, 50), (300, 41)]
TEXTS = ["a", "a photo of a cat", "A Photo Of A Cat, but louder!!!", "x" * 100,
         "café ☕ 写真 — unicode"]


def _images(folder: Path, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, size in enumerate(SIZES):
        name = f"p{i}-{size[0]}x{size[1]}.png"
        photo(seed + i, size).save(folder / name)
        names.append(name)
    return names


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _vectors(out: Path, column: str) -> dict[str, np.ndarray]:
    table = mmpipe.read_output(out)
    assert table["error"].null_count == len(table)
    return {i: np.asarray(v, np.float32) for i, v in zip(table["id"].to_pylist(), table[column].to_pylist())}


def _assert_parity(got: dict, want: dict, atol: float | None = EXACT_ATOL) -> None:
    assert sorted(got) == sorted(want)
    for key, ref in want.items():
        assert float(np.dot(got[key], ref)) >= COSINE, key
        if atol is not None:
            np.testing.assert_allclose(got[key], ref, atol=atol, err_msg=key)


def test_the_family_is_read_from_the_checkpoint(tiny_siglip_spec):
    loaded = load_embedder(tiny_siglip_spec)
    pre = loaded.preprocessor
    assert loaded.family.model_type == "siglip" and loaded.dim == 32
    assert (pre.crop, pre.centre_crop, pre.mean, pre.std) == (TINY_IMAGE, False, (0.5,) * 3, (0.5,) * 3)
    ids, mask = pre.text_batch([pre.text("a"), pre.text("x" * 100)])
    assert ids.shape == (2, SIGLIP_TOKENS) and mask.sum(axis=1).tolist() == [3, SIGLIP_TOKENS]


def test_random_and_zeros_archs_have_a_siglip_entry():
    loaded = load_embedder("zeros:SigLIP-B-16")
    assert (loaded.family.model_type, loaded.dim, loaded.preprocessor.crop) == ("siglip", 768, 224)
    assert loaded.make_embedder().embed_texts([loaded.preprocessor.text("a")]).shape == (1, 768)


def test_pixels_match_the_reference_processor(tiny_siglip_spec, siglip_reference, tmp_path):
    pre = load_embedder(tiny_siglip_spec).preprocessor
    normalise = PixelNormaliser(pre)
    for name in _images(tmp_path):
        img, _ = decode_image((tmp_path / name).read_bytes())
        ours = pre.image(img)
        assert ours.shape == (3, TINY_IMAGE, TINY_IMAGE)
        np.testing.assert_allclose(normalise(ours[None])[0].numpy(),
                                   siglip_reference.pixels([_rgb(tmp_path / name)])[0], atol=1e-4, err_msg=name)


@pytest.mark.parametrize("fast_decode", [False, True])
def test_image_vectors_of_the_embed_job_match_the_reference(tiny_siglip, siglip_reference, tmp_path, fast_decode):
    names = _images(tmp_path / "in")
    want = dict(zip(names, siglip_reference.image_vectors([_rgb(tmp_path / "in" / n) for n in names])))
    for spec in (f"path:{tiny_siglip}", f"hf:{tiny_siglip}"):
        out = tmp_path / spec.split(":")[0]
        mmpipe.embed(str(tmp_path / "in"), str(out), model=spec, batch_size=2, progress=False,
                     fast_decode=fast_decode)
        _assert_parity(_vectors(out, "image_embedding"), want, None if fast_decode else EXACT_ATOL)


@pytest.mark.slow
def test_text_vectors_of_the_cli_match_the_reference(tiny_siglip_spec, siglip_reference, tmp_path):
    manifest = tmp_path / "texts.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    proc = subprocess.run([sys.executable, "-m", "mmpipe.cli", "embed", str(manifest), "--out",
                           str(tmp_path / "out"), "--model", tiny_siglip_spec, "--batch-size", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    want = dict(zip((f"t{i}" for i in range(len(TEXTS))), siglip_reference.text_vectors(TEXTS)))
    _assert_parity(_vectors(tmp_path / "out", "text_embedding"), want)
    manifest_json = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest_json["dimension"] == 32 and manifest_json["model"] == tiny_siglip_spec


def test_a_split_image_tower_gives_the_whole_towers_vectors(tiny_siglip_spec, tmp_path):
    _images(tmp_path / "in")
    mmpipe.embed(str(tmp_path / "in"), str(tmp_path / "whole"), model=tiny_siglip_spec, progress=False)
    mmpipe.embed(str(tmp_path / "in"), str(tmp_path / "split"), model=tiny_siglip_spec, progress=False,
                 pipeline_stages=2, batch_size=2)
    _assert_parity(_vectors(tmp_path / "split", "image_embedding"),
                   _vectors(tmp_path / "whole", "image_embedding"))


@pytest.mark.parametrize("variant", [Variant("int8", "eager"), Variant("fp32", "onnx"), Variant("int8", "onnx")])
def test_cpu_variants_pass_their_gate_and_keep_the_sigmoid(tiny_siglip_spec, variant):
    loaded = load_embedder(tiny_siglip_spec)
    gated = gated_variant(loaded, variant, Gate(min_mean_cosine=0.99))
    assert all(a["mean_cosine"] >= 0.99 for a in gated.accuracy.values())
    embedder = gated.make_embedder()
    assert isinstance(embedder, OnnxEmbedder) == (variant.runtime == "onnx")
    assert embedder.sigmoid == pytest.approx(loaded.make_embedder().sigmoid)
    pixels = np.stack([loaded.preprocessor.image(photo(i)) for i in range(3)])
    eager = loaded.make_embedder().embed_images(pixels)
    assert ((embedder.embed_images(pixels) * eager).sum(axis=1) > 0.99).all()


def test_zero_shot_uses_the_models_sigmoid_not_a_softmax(tiny_siglip_spec, tiny_siglip):
    from transformers import AutoTokenizer, SiglipModel

    loaded = load_embedder(tiny_siglip_spec)
    embedder = loaded.make_embedder()
    positive, negative = ["a photo of a fight", "blood"], ["a landscape"]
    scorer = ZeroShotClip(embedder, loaded.preprocessor, {"fight": (positive, negative)},
                          temperature={"fight": 50.0})
    images = [photo(i) for i in range(4)]
    got = scorer.score_vectors(embedder.embed_images(np.stack([loaded.preprocessor.image(i) for i in images])))

    # transformers' own pair score: sigmoid(logits_per_image), logits with the learnt scale and bias.
    model = SiglipModel.from_pretrained(tiny_siglip).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_siglip)(positive, padding="max_length", truncation=True,
                                                        max_length=SIGLIP_TOKENS, return_tensors="pt")
    pixels = PixelNormaliser(loaded.preprocessor)(np.stack([loaded.preprocessor.image(i) for i in images]))
    with torch.inference_mode():
        logits = model(pixel_values=pixels, **tokens).logits_per_image
    np.testing.assert_allclose(got["fight"], torch.sigmoid(logits).max(dim=1).values.numpy(), atol=1e-5)


def test_another_architecture_is_not_taken_for_an_embedder(tiny_siglip, tmp_path):
    import shutil

    other = shutil.copytree(tiny_siglip, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="model_type is none of clip, siglip"):
        load_embedder(f"path:{other}")
