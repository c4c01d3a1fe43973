"""Moderation's stages on typed records (real models): a stage returns new records and leaves the
ones it got as they were, so a failed batch can be retried item by item from the same records,
and the stage list follows the source registry."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from mmpipe.records import Decoded, Item
from mmpipe.sample_moderation import draw_caption
from mmpipe.stages.checks import SOURCES, ModerationOptions, load_moderation_policy
from mmpipe.stages.checks.open_nsfw import NsfwBatch
from mmpipe.stages.checks.words import words_scorer
from mmpipe.stages.media import MediaOptions, decode_media
from mmpipe.stages.moderation import DecideBatch, TextBatch
from mmpipe.stages.moderation_plan import moderation_stages
from tests.conftest import photo


@pytest.fixture(scope="module")
def policy():
    return load_moderation_policy(None)


def jpeg_item(id: str, text: str | None = None) -> Item:
    img = photo(3, size=(320, 200))
    if text:
        img = draw_caption(img, text, size=30)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return Item(id=id, uri=f"file:///{id}", data=buf.getvalue())


@pytest.fixture(scope="module")
def decoded(policy) -> list[Decoded]:
    from mmpipe.models.open_nsfw import preprocess

    opts = MediaOptions(model_inputs={"open_nsfw": preprocess})
    return [decode_media(jpeg_item("a.jpg"), opts), decode_media(jpeg_item("b.jpg", "hello"), opts),
            decode_media(Item(id="t", text="you are a stupid idiot"), opts)]


def frozen(records) -> bytes:
    return pickle.dumps(records)


def test_a_model_stage_returns_new_records_and_keeps_its_inputs(policy, decoded):
    before = frozen(decoded)
    nsfw = NsfwBatch(policy, threads=1)
    first, again = nsfw(decoded), nsfw(decoded)
    assert frozen(decoded) == before  # the records given still carry their model inputs
    assert all("open_nsfw" in r.moderation.inputs for r in decoded[:2])
    for out, same in zip(first, again):
        assert "open_nsfw" not in out.moderation.inputs
        np.testing.assert_array_equal(out.moderation.frame_scores.get("sexual", []),
                                      same.moderation.frame_scores.get("sexual", []))
    assert first[0].moderation.frame_scores["sexual"].shape == (1,)
    assert first[2].moderation.frame_scores == {}  # a text item has no frames to score


def test_a_failed_batch_leaves_every_record_ready_for_its_retry(policy, decoded):
    nsfw = NsfwBatch(policy, threads=1)
    m = decoded[1].moderation
    broken = Decoded(id="broken", uri=None, text=None, moderation=m.with_changes(
        inputs={"open_nsfw": np.zeros((1, 7, 7, 3), np.float32)}))
    with pytest.raises(Exception):
        nsfw([decoded[0], broken])
    alone = nsfw([decoded[0]])[0]  # what an engine does next: the items one by one
    assert alone.moderation.frame_scores["sexual"].shape == (1,)
    together = nsfw(decoded[:1])[0].moderation.frame_scores["sexual"]
    np.testing.assert_array_equal(together, alone.moderation.frame_scores["sexual"])


def test_text_and_decision_stages_do_not_change_what_they_get(policy, decoded):
    before = frozen(decoded)
    texts = TextBatch([words_scorer(policy)])(decoded)
    decided = DecideBatch(policy)(texts)
    assert frozen(decoded) == before
    assert texts[2].moderation.matches["harassment/insults"] == ("stupid", "idiot")
    text = decided[2].moderation
    assert text.outcome.scores["harassment/insults"] == 1.0 and text.outcome.action == "review"
    assert text.outcome.scores["sexual"] is None  # open_nsfw does not apply to text
    image = decided[0].moderation
    assert image.frames == () and image.outcome.frames == 1 and image.outcome.thumbnail[:2] == b"\xff\xd8"
    assert texts[0].moderation.frames  # the decision dropped frames from its own records only


def test_the_stage_list_follows_the_registry(policy):
    assert [s.name for s in SOURCES] == ["open_nsfw", "profanity", "words", "clip", "bank"]
    stages = moderation_stages(policy, ModerationOptions(batch_size=8))
    assert [s.name for s in stages] == ["decode", "open_nsfw", "ocr", "text", "decide"]
    assert stages[1].batch_size == 8
    no_ocr = moderation_stages(policy, ModerationOptions(ocr=False))
    assert [s.name for s in no_ocr] == ["decode", "open_nsfw", "text", "decide"]
