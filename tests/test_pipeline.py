"""``--pipeline-stages``: the image tower cut into balanced parts gives the unsplit model's vectors."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mmpipe
from mmpipe.errors import ConfigError
from mmpipe.stages.embedding import EmbeddingOptions, embedding_stages
from mmpipe.models import load_embedder
from mmpipe.models.pipeline import VisionPart, balanced_split, split_vision, text_embedder
from tests.conftest import TINY_IMAGE, assert_same_rows, photo, save_tiny_clip

LAYERS = 6


@pytest.fixture(scope="module")
def deep_spec(tmp_path_factory) -> str:
    return f"path:{save_tiny_clip(tmp_path_factory.mktemp('deep-clip'), vision_layers=LAYERS)}"


@pytest.fixture(scope="module")
def pixels(deep_spec) -> np.ndarray:
    pre = load_embedder(deep_spec).preprocessor
    return np.stack([pre.image(photo(i)) for i in range(5)])


def _bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def test_split_follows_measured_time_not_layer_count():
    assert balanced_split([5, 1, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 6)]
    assert balanced_split([2, 1, 1, 1, 1, 3], 3) == [range(0, 2), range(2, 5), range(5, 6)]
    assert balanced_split([1.0] * 6, 3) == [range(0, 2), range(2, 4), range(4, 6)]
    with pytest.raises(ValueError):
        balanced_split([1.0, 1.0], 3)


def test_split_is_the_best_possible():
    rng = np.random.default_rng(0)
    for _ in range(20):
        times = rng.uniform(0.1, 3.0, 9).tolist()
        got = max(sum(times[i] for i in r) for r in balanced_split(times, 3))
        best = min(max(sum(times[:a]), sum(times[a:b]), sum(times[b:]))
                   for a, b in itertools.combinations(range(1, 9), 2))
        assert got == pytest.approx(best)


@pytest.mark.parametrize("parts", [2, 3])
def test_parts_chained_equal_the_unsplit_model(deep_spec, pixels, parts):
    clip = load_embedder(deep_spec)
    want = clip.make_embedder().embed_images(pixels)
    ranges = split_vision(clip, parts, batch_size=len(pixels))
    assert len(ranges) == parts and ranges[0].start == 0 and ranges[-1].stop == LAYERS
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))
    x = pixels
    for layers in ranges:
        x = VisionPart(clip, layers)(x)
    assert x.shape == want.shape
    assert np.abs(x - want).max() <= 1e-5


@pytest.mark.parametrize("parts", [2, 3])
def test_each_part_holds_about_its_share_of_the_weights(deep_spec, parts):
    clip = load_embedder(deep_spec)
    model = clip.load_model()
    tower = _bytes(model.vision_model) + _bytes(model.visual_projection)
    sizes = [VisionPart(clip, r).parameter_bytes for r in balanced_split([1.0] * LAYERS, parts)]
    assert sum(sizes) == tower  # no part holds a copy of another's weights, nor the text tower
    # The patch embedding sits in the first part and the projection in the last.
    for size in sizes:
        assert 0.6 / parts < size / tower < 1.4 / parts
    text = text_embedder(clip).model
    assert _bytes(text) == _bytes(model) - tower


def test_too_many_parts_is_a_config_error(deep_spec):
    with pytest.raises(ConfigError, match="--pipeline-stages.*only 6 layers"):
        split_vision(load_embedder(deep_spec), LAYERS + 1, batch_size=2)


def test_pipelined_job_writes_the_same_rows(deep_spec, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rows = []
    for i in range(7):
        photo(i, size=(40 + 5 * i, TINY_IMAGE + 3 * i)).save(folder / f"p{i}.png")
        rows.append({"id": f"p{i}", "image": f"p{i}.png", **({"text": f"photo {i}"} if i % 2 else {})})
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not an image")
    rows += [{"id": "broken", "image": "broken.jpg"}, {"id": "words", "text": "only a caption"}]
    manifest = folder / "items.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(parts: int):
        out = tmp_path / f"out{parts}"
        result = mmpipe.embed(str(manifest), str(out), model=deep_spec, batch_size=3,
                              pipeline_stages=parts, progress=False)
        assert (result.ok, result.errors) == (8, 1)
        return {r["id"]: r for r in mmpipe.read_output(out).to_pylist()}, result

    whole, _ = run(1)
    piped, result = run(3)
    assert [s.name for s in result.stats.stages][-4:] == [
        "embed-text", "embed-vision-0", "embed-vision-1", "embed-vision-2"]
    assert_same_rows(piped, whole, atol=1e-5)
    assert piped["broken"]["error"].startswith("decode:")
    assert piped["words"]["image_embedding"] is None and piped["words"]["text_embedding"] is not None
    for key, row in whole.items():
        if row["image_embedding"] is not None:
            assert np.dot(row["image_embedding"], piped[key]["image_embedding"]) >= 0.9999


def test_stages_survive_cloudpickle(deep_spec):
    """The Ray engine ships each stage's setup to an actor: nothing loaded may ride along."""
    cloudpickle = pytest.importorskip("cloudpickle")
    clip = load_embedder(deep_spec)
    options = EmbeddingOptions(pipeline_stages=2, batch_size=2)
    stages = [s for s in embedding_stages(clip, options) if s.name.startswith("embed-")]
    assert len(stages) == 3
    for stage in stages:
        assert len(cloudpickle.dumps(stage.setup)) < 64_000  # the spec and ranges, not weights
        assert callable(cloudpickle.loads(cloudpickle.dumps(stage)).setup())


@pytest.mark.slow
@pytest.mark.parametrize("value", ["0", "7"])
def test_cli_refuses_a_bad_count_with_exit_2(deep_spec, image_dir, tmp_path, value):
    proc = subprocess.run(
        [sys.executable, "-m", "mmpipe.cli", "embed", str(image_dir), "--out", str(tmp_path / "o"),
         "--model", deep_spec, "--pipeline-stages", value],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2, proc.stderr
    assert "--pipeline-stages" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_pipelined_stages_count_the_tokens_the_text_tower_read(deep_spec):
    """The last part's rows say how many tokens each text was (serve's usage counts them), as the
    unsplit model's do."""
    from mmpipe.records import Item
    from mmpipe.serve.served import served_model

    clip = load_embedder(deep_spec)
    texts = ["a photo of two dogs", "cat"]
    want = [len(clip.preprocessor.text(t)) for t in texts]
    assert want[0] > want[1]
    for options in (EmbeddingOptions(batch_size=2), EmbeddingOptions(pipeline_stages=2, batch_size=2)):
        served = served_model("clip", embedding_stages(clip, options))
        rows = served.predict(served.prepare([Item(id=str(i), text=t) for i, t in enumerate(texts)]))
        assert [r.text_tokens for r in rows] == want
