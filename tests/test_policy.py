"""Policy files, word matching, temporal aggregation and decisions."""

from __future__ import annotations

import numpy as np
import pytest

from mmpipe.errors import ConfigError
from mmpipe.policy import Decision, WordMatcher, aggregate, apply_verdict, decide, normalise, uncertain
from mmpipe.stages.checks import load_moderation_policy as load_policy

GOOD = """
version: 1
aggregation: {method: max, top_k: 2, segment_gap_s: 1.0}
word_lists:
  insults: [idiot, stupid]
categories:
  - {name: sexual, source: open_nsfw, media: [image, video], review: 0.4, block: 0.8}
  - {name: harassment, source: profanity, media: [text, image, video], review: 0.6, block: 0.9}
  - {name: insults, source: words, word_lists: [insults], words: [moron], media: [text], review: 0.5, block: 1.0}
  - name: violence
    source: clip
    prompts: {positive: [a fight], negative: [a landscape]}
    media: [image]
    review: 0.6
    block: 0.9
escalation: {enabled: true, categories: [harassment]}
"""


def write(tmp_path, text: str):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_default_policy_loads_with_openai_names():
    policy = load_policy(None)
    names = [c.name for c in policy.categories]
    assert {"sexual", "harassment", "hate", "self-harm", "violence"} <= set(names)
    assert not policy.escalation.enabled


def test_the_policy_package_reads_common_fields_without_the_sources(tmp_path):
    from mmpipe import policy

    common = policy.load_policy(write(tmp_path, GOOD))  # what needs only names and thresholds
    assert [type(c) for c in common.categories] == [policy.Category] * 4
    assert common.thresholds("open_nsfw") == [0.4, 0.8]
    with pytest.raises(ConfigError, match=r"categories\[1\]: block \(0.9\) must be >= review \(0.95\)"):
        policy.load_policy(write(tmp_path, GOOD.replace("review: 0.6, block: 0.9", "review: 0.95, block: 0.9")))


def test_a_good_policy_loads(tmp_path):
    policy = load_policy(write(tmp_path, GOOD))
    assert [c.source for c in policy.categories] == ["open_nsfw", "profanity", "words", "clip"]
    assert policy.categories[2].words_in(policy) == ["moron", "idiot", "stupid"]
    assert policy.model_dump(mode="json")["categories"][3]["prompts"]["negative"] == ["a landscape"]


@pytest.mark.parametrize("change, field, reason", [
    (("review: 0.6, block: 0.9", "review: 0.95, block: 0.9"), "categories[1]", "must be >= review"),
    (("media: [text], review", "colour: red, media: [text], review"), "categories[2].colour", "unknown field"),
    (("word_lists: [insults]", "word_lists: [slurs]"), "categories[2].word_lists", "no word list 'slurs'"),
    (("negative: [a landscape]", "negative: []"), "categories[3].prompts.negative", "at least 1"),
    (("name: insults", "name: harassment"), "categories[2].name", "duplicate"),
    (("source: open_nsfw, media: [image, video]", "source: open_nsfw, media: [text]"), "categories[0]",
     "not text"),
    (("name: insults", "name: Insults"), "categories[2].name", "lowercase"),
    (("method: max", "method: median"), "aggregation.method", "max"),
    (("categories: [harassment]", "categories: [spam]"), "escalation.categories", "no category 'spam'"),
    # A field of another source names the source it belongs to; the common fields come first.
    (("source: profanity, media", "source: profanity, prompts: {positive: [a], negative: [b]}, media"),
     "categories[1]", "prompts only apply to source 'clip', not 'profanity'"),
    (("source: open_nsfw, media", "source: open_nsfw, patterns: [x], media"), "categories[0]",
     "words/word_lists/patterns only apply to source 'words', not 'open_nsfw'"),
    (("source: open_nsfw, media", "source: open_nsfw, max_distance: 3, bank: b, media"), "categories[0]",
     "bank, max_distance only apply to source 'bank', not 'open_nsfw'"),
    (("source: open_nsfw, media: [image, video], review: 0.4",
      "source: open_nsfw, bank: b, media: [image, video], review: 0.9"), "categories[0]",
     "block (0.8) must be >= review (0.9)"),
    (("source: open_nsfw", "source: nudity"), "categories[0].source",
     "Input should be 'open_nsfw', 'profanity', 'words', 'clip' or 'bank'"),
    (("source: open_nsfw, ", ""), "categories[0].source", "Field required"),
    (("    source: clip\n", "    source: clip\n    temperature: 0\n"), "categories[3].temperature",
     "greater than 0"),
])
def test_bad_policies_name_file_field_and_reason(tmp_path, change, field, reason):
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError) as info:
        load_policy(write(tmp_path, GOOD.replace(old, new, 1)))
    message = str(info.value)
    assert "\n" not in message and message.startswith("policy.yaml: ")
    assert field in message and reason in message, message


def test_bad_regex_and_bad_yaml(tmp_path):
    bad_regex = GOOD.replace("words: [moron]", "patterns: ['(unclosed']")
    with pytest.raises(ConfigError, match=r"categories\[2\]\.patterns: .*bad regex '\(unclosed'"):
        load_policy(write(tmp_path, bad_regex))
    with pytest.raises(ConfigError, match=r"policy.yaml: line \d+: invalid YAML"):
        load_policy(write(tmp_path, "categories: [\n  - {name: x"))
    with pytest.raises(ConfigError, match="--policy"):
        load_policy(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, found", [
    ("Y0u 4re 4n 1d10t", ["idiot"]),
    ("stuuuuupid!", ["stupid"]),
    ("IDIOTS everywhere", ["idiot"]),
    ("a classic assessment", []),
    ("Ídiót", ["idiot"]),
    ("you are a stupid idiot", ["stupid", "idiot"]),
    ("in 2024 we met", []),
])
def test_word_matching_survives_obfuscation(text, found):
    assert WordMatcher(["idiot", "stupid", "ass"]).find(text) == found


def test_patterns_run_on_normalised_text():
    matcher = WordMatcher([], [r"\bkill (myself|yourself)\b"])
    assert matcher.find("I want to K1LL MYSELF") == ["kill myself"]
    assert normalise("H3LL0") == "hello"


@pytest.fixture
def policy(tmp_path):
    return load_policy(write(tmp_path, GOOD))


def test_a_caption_window_becomes_one_segment(policy):
    t = [float(i) for i in range(8)]
    scores = np.array([0.0, 0.0, 0.1, 0.97, 0.95, 0.0, 0.0, 0.0])
    item, segments = aggregate(t, {"harassment": scores, "unknown": scores}, policy)
    assert item == {"harassment": pytest.approx(0.97)}
    assert [(s.start, s.end, s.category) for s in segments] == [(3.0, 5.0, "harassment")]
    assert segments[0].score == pytest.approx(0.97)


def test_gaps_merge_or_split_segments(policy):
    t = [float(i) for i in range(10)]
    one_gap = np.array([0.7, 0, 0.9, 0, 0, 0, 0.8, 0.8, 0, 0])
    segments = aggregate(t, {"harassment": one_gap}, policy)[1]
    # 0 and 2 are one second apart (merged); 6–7 stand alone; worst first.
    assert [(s.start, s.end) for s in segments] == [(0.0, 3.0), (6.0, 8.0)]


def test_mean_topk(policy):
    topk = policy.model_copy(update={"aggregation": policy.aggregation.model_copy(update={"method": "mean_topk"})})
    item, _ = aggregate([0.0, 1.0, 2.0], {"sexual": np.array([0.9, 0.1, 0.5])}, topk)
    assert item["sexual"] == pytest.approx(0.7)


def test_decisions_follow_thresholds_and_media(policy):
    assert decide(policy, "image", {"sexual": 0.3, "harassment": 0.1}).action == "allow"
    review = decide(policy, "image", {"sexual": 0.5, "harassment": 0.1})
    assert (review.action, review.flagged, review.reasons) == ("review", True, ["sexual 0.50 >= review 0.40"])
    block = decide(policy, "video", {"sexual": 0.5, "harassment": 0.95})
    assert block.action == "block" and len(block.reasons) == 2
    # insults apply to text only; open_nsfw scores on a text item are ignored.
    assert decide(policy, "image", {"insults": 1.0}).action == "allow"
    assert decide(policy, "text", {"sexual": 0.99, "insults": None}).action == "allow"


def test_uncertain_band_and_escalation_categories(policy):
    scores = {"sexual": 0.5, "harassment": 0.7}
    assert uncertain(policy, "image", scores) == ["harassment"]  # escalation lists harassment only
    assert uncertain(policy, "image", {"harassment": 0.95}) == []


def test_judge_verdicts(policy):
    before = Decision("review", True, ["harassment 0.70 >= review 0.60"])
    after = apply_verdict(before, {"action": "block", "reason": "a direct insult"})
    assert after.action == "block" and after.reasons[-1] == "judge: block: a direct insult"
    assert apply_verdict(before, {"action": "allow"}).flagged is False
    unusable = apply_verdict(before, {"action": None})
    assert unusable.action == "review" and unusable.reasons[-1] == "judge: no usable verdict"
