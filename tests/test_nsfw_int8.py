"""open_nsfw in INT8 (the shipped ONNX model quantised by onnxruntime) against fp32 on the fixed
evaluation set: built once and cached, scores close to fp32's, the gate enforced, and the variant
usable from the job, the CLI and the server."""

from __future__ import annotations

import base64
import io
import json
from itertools import islice

import numpy as np
import pytest

import mmpipe
from mmpipe.cli import main
from mmpipe.models import open_nsfw_int8
from mmpipe.models.open_nsfw import NsfwScorer, preprocess
from mmpipe.models.open_nsfw_int8 import build_int8, evaluation_images, load_int8
from mmpipe.policy import load_policy
from mmpipe.sample_moderation import draw_caption
from mmpipe.serve.app import create_app
from mmpipe.serve.config import load_serve_config
from mmpipe.models.accuracy import AccuracyGateError, Gate
from tests.conftest import RunningServer, photo

# Every test here needs open_nsfw quantised to INT8 (a module fixture of several seconds).
pytestmark = pytest.mark.slow

# Measured on the evaluation set (onnxruntime 1.32, static QDQ): |int8 - fp32| at most 0.108,
# 0.0059 on average, no flips at 0.4 / 0.8; other calibration seeds gave 0.11-0.16 and 0.0055-0.006.
MAX_DIFF, MEAN_DIFF = 0.2, 0.01
THRESHOLDS = load_policy(None).thresholds("open_nsfw")  # the shipped policy's 0.4 and 0.8


@pytest.fixture(scope="module")
def cache(model_cache):
    return model_cache


@pytest.fixture(scope="module")
def variant(cache):
    return build_int8()


def test_quantised_once_then_read_from_the_cache(variant, cache, monkeypatch):
    assert variant.path.parent == cache / "open_nsfw"
    assert sorted(p.suffix for p in variant.path.parent.iterdir()) == [".json", ".onnx"]  # no temp files

    def fail(*args, **kwargs):
        raise AssertionError("quantised or measured again")

    monkeypatch.setattr(open_nsfw_int8, "quantize_onnx", fail)
    monkeypatch.setattr(open_nsfw_int8, "compare", fail)
    again = build_int8()
    assert again.path == variant.path and np.array_equal(again.scores, variant.scores)


def test_int8_scores_agree_with_fp32(variant):
    accuracy = variant.accuracy(THRESHOLDS)
    assert accuracy.n == 320 and accuracy.flips == 0
    assert accuracy.max_abs_diff < MAX_DIFF and accuracy.mean_abs_diff < MEAN_DIFF
    # The cached figures are the two models' scores on the evaluation set's images.
    first = np.stack([preprocess(img) for img in islice(evaluation_images(), 4)])
    np.testing.assert_allclose(NsfwScorer().score(first), variant.reference[:4], atol=1e-5)
    np.testing.assert_allclose(NsfwScorer(model_path=variant.path).score(first), variant.scores[:4],
                               atol=1e-5)


def test_the_gate_refuses_with_the_figure_that_failed(variant):
    # A threshold halfway between the two models' scores of their least agreeing image flips it.
    i = int(np.argmax(np.abs(variant.reference - variant.scores)))
    strict = [float(variant.reference[i] + variant.scores[i]) / 2]
    flips = variant.accuracy(strict).flips
    assert flips >= 1
    with pytest.raises(AccuracyGateError, match=rf"open_nsfw int8 .* {flips} of 320 decisions flip"):
        load_int8(strict, Gate(max_flip_share=(flips - 1) / 320))
    assert load_int8(strict, Gate(max_flip_share=flips / 320)).path == variant.path
    assert load_int8(THRESHOLDS).path == variant.path  # the default gate at the policy's thresholds


def test_moderate_int8_gives_fp32_actions_and_records_its_accuracy(variant, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    for i in range(4):
        photo(i, size=(320 + 40 * i, 240)).save(folder / f"photo{i}.jpg")
    draw_caption(photo(7, size=(640, 360)), "have a lovely day").save(folder / "caption.jpg")
    runs = {}
    for precision in ("fp32", "int8"):
        mmpipe.moderate(str(folder), str(tmp_path / precision), nsfw_precision=precision, ocr=False,
                        progress=False)
        runs[precision] = {r["id"]: r for r in mmpipe.read_output(tmp_path / precision).to_pylist()}
    assert len(runs["int8"]) == 5
    for id_, row in runs["int8"].items():
        assert row["action"] == runs["fp32"][id_]["action"]
        assert abs(row["score_sexual"] - runs["fp32"][id_]["score_sexual"]) < MAX_DIFF
    manifest = json.loads((tmp_path / "int8" / "_manifest.json").read_text())["open_nsfw"]
    assert manifest["precision"] == "int8" and manifest["thresholds"] == THRESHOLDS
    assert manifest["accuracy"] == variant.accuracy(THRESHOLDS).to_dict()
    fp32 = json.loads((tmp_path / "fp32" / "_manifest.json").read_text())["open_nsfw"]
    assert fp32 == {"precision": "fp32"}


def test_the_server_runs_int8_from_its_config(variant, tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("moderation:\n  nsfw_precision: int8\n  max_wait_ms: 1\n")
    server = RunningServer(create_app(load_serve_config(str(config))))
    try:
        buf = io.BytesIO()
        photo(3, size=(320, 240)).save(buf, "JPEG")
        url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        status, _, body = server.post("/v1/moderations",
                                      {"input": [{"type": "image_url", "image_url": {"url": url}}]})
    finally:
        server.stop()
    assert status == 200, body
    result = body["results"][0]
    assert result["category_applied_input_types"]["sexual"] == ["image"]
    assert result["category_scores"]["sexual"] < 0.2 and not result["flagged"]


def test_a_bad_precision_is_one_line_naming_the_flag_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["moderate", str(tmp_path), "--out", str(tmp_path / "out"), "--nsfw-precision", "int4"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmpipe: error: --nsfw-precision"), lines
