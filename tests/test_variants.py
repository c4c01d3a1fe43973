"""Faster CLIP variants on the tiny checkpoint (loaded through ``path:`` like a user's): each is
measured against eager fp32 and gated, ONNX exports match eager, and the embed job, the server
and the command line take ``precision`` / ``runtime``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mmpipe
from mmpipe.cli import main
from mmpipe.errors import ConfigError
from mmpipe.models import gate, load_embedder
from mmpipe.models.gate import gated_variant
from mmpipe.models.onnx_embedder import OnnxEmbedder, onnx_towers
from mmpipe.models.variants import EmbedderVariant, Variant
from mmpipe.serve.app import create_app
from mmpipe.serve.config import Embeddings, ServeConfig
from mmpipe.serve.embeddings import embedding_model
from mmpipe.models.accuracy import AccuracyGateError, Gate
from tests.conftest import RunningServer, by_id, photo

NO_GATE = Gate(min_mean_cosine=-1)
# The least mean cosine to eager fp32 each variant must measure on the tiny model.
EXPECTED = {Variant("bf16"): 0.99, Variant("int8"): 0.99, Variant("fp32", "compile"): 0.9999,
            Variant("fp32", "onnx"): 0.9999, Variant("int8", "onnx"): 0.99}


@pytest.fixture(autouse=True, scope="module")
def cache(model_cache):
    return model_cache


def build(spec: str, variant: Variant, gate: Gate = NO_GATE) -> EmbedderVariant:
    return gated_variant(load_embedder(spec, precision=variant.weights_precision), variant, gate)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(EXPECTED), ids=str)
def test_each_variant_is_measured_against_fp32(tiny_model_spec, variant):
    clip = build(tiny_model_spec, variant)
    for tower in ("image", "text"):
        figures = clip.accuracy[tower]
        assert figures["n"] == 32
        assert EXPECTED[variant] <= figures["mean_cosine"] <= 1 + 1e-6, (tower, figures)
        assert figures["min_cosine"] <= figures["mean_cosine"]
    assert clip.describe() == {"precision": variant.precision, "runtime": variant.runtime,
                               "accuracy": clip.accuracy}


def test_the_reference_is_not_measured(tiny_model_spec):
    assert build(tiny_model_spec, Variant()).accuracy is None


def test_measured_accuracy_is_cached_with_the_variant(tiny_model_spec, monkeypatch):
    first = build(tiny_model_spec, Variant("int8", "onnx"))

    def measure_again(clip):
        raise AssertionError("measured again")

    monkeypatch.setattr(gate, "_measure", measure_again)
    assert build(tiny_model_spec, Variant("int8", "onnx")).accuracy == first.accuracy


def test_onnx_export_matches_eager_on_other_inputs(tiny_model_spec):
    clip = build(tiny_model_spec, Variant("fp32", "onnx"))
    eager = load_embedder(tiny_model_spec).make_embedder()
    exported = clip.make_embedder()
    assert isinstance(exported, OnnxEmbedder)
    pixels = np.stack([clip.preprocessor.image(photo(seed)) for seed in range(5)])
    # Another batch size and other sequence lengths than the export's: the axes are dynamic.
    tokens = [clip.preprocessor.text(t) for t in ("a cat", "two red cars parked on a long road", "x")]
    np.testing.assert_allclose(exported.embed_images(pixels), eager.embed_images(pixels), atol=1e-5)
    np.testing.assert_allclose(exported.embed_texts(tokens), eager.embed_texts(tokens), atol=1e-5)
    assert {p.name for p in onnx_towers(clip, "fp32").values()} == {"image.fp32.onnx", "text.fp32.onnx"}


@pytest.mark.slow
def test_a_compiled_variant_runs_one_image_shape(tiny_model_spec):
    """Set up at the job's batch size; shorter and longer batches are padded and split to it, so
    that the job's last batch does not compile again."""
    from dataclasses import replace

    clip = replace(build(tiny_model_spec, Variant("fp32", "compile")), image_batch=4)
    compiled = clip.make_embedder()
    run, shapes = compiled._embed_images, []
    compiled._embed_images = lambda x: shapes.append(len(x)) or run(x)
    eager = load_embedder(tiny_model_spec).make_embedder()
    pixels = np.stack([clip.preprocessor.image(photo(seed)) for seed in range(6)])
    for n in (6, 4, 1):
        np.testing.assert_allclose(compiled.embed_images(pixels[:n]), eager.embed_images(pixels[:n]),
                                   atol=1e-5)
    assert shapes == [4, 4, 4, 4]


def test_the_gate_refuses_a_variant_below_it_with_the_figure(tiny_model_spec):
    measured = build(tiny_model_spec, Variant("int8")).accuracy["image"]
    with pytest.raises(AccuracyGateError) as caught:
        build(tiny_model_spec, Variant("int8"), Gate(min_mean_cosine=1.0))
    message = str(caught.value)
    assert "int8 eager (image embeddings" in message
    assert f"mean cosine to fp32 {measured['mean_cosine']:.4f} < 1.0" in message


@pytest.mark.parametrize("options", [{"precision": "int8"}, {"runtime": "onnx"}], ids=str)
def test_embed_job_runs_a_variant_close_to_fp32_and_records_it(image_dir, tiny_model_spec, tmp_path,
                                                              options):
    fp32 = by_id(mmpipe.embed(str(image_dir), str(tmp_path / "fp32"), model=tiny_model_spec,
                              progress=False).out)
    result = mmpipe.embed(str(image_dir), str(tmp_path / "variant"), model=tiny_model_spec,
                          progress=False, **options)
    got = by_id(result.out)
    assert got.keys() == fp32.keys() and result.errors == 0
    for key, row in fp32.items():
        for col in ("image_embedding", "text_embedding"):
            if row[col] is not None:
                assert float(np.dot(row[col], got[key][col])) >= 0.99, (key, col)
    manifest = json.loads((result.out / "_manifest.json").read_text())
    variant = manifest["variant"]
    assert {k: variant[k] for k in ("precision", "runtime")} == {"precision": "fp32", "runtime": "eager",
                                                                 **options}
    assert variant["accuracy"]["image"]["mean_cosine"] >= 0.99
    assert manifest["signature"]["runtime"] == options.get("runtime", "eager")


def test_server_serves_an_int8_onnx_model(tiny_model_spec, reference):
    config = ServeConfig(embeddings=Embeddings(model=tiny_model_spec, name="tiny", precision="int8",
                                               runtime="onnx"))
    server = RunningServer(create_app(config))
    try:
        status, _, body = server.post("/v1/embeddings", {"model": "tiny", "input": ["a photo of a cat"],
                                                         "encoding_format": "float"})
    finally:
        server.stop()
    assert status == 200, body
    got = np.array(body["data"][0]["embedding"])
    assert float(got @ reference.text_vectors(["a photo of a cat"])[0]) >= 0.99


@pytest.mark.parametrize("args, flag", [
    (["--precision", "int4"], "--precision"),
    (["--runtime", "jit"], "--runtime"),
    (["--precision", "fp16"], "--precision"),  # no fp16 arithmetic on a CPU
    (["--runtime", "onnx", "--precision", "bf16"], "--precision"),
    (["--runtime", "onnx", "--pipeline-stages", "2"], "--pipeline-stages"),
    (["--min-cosine", "2"], "--min-cosine"),
])
def test_bad_variant_flags_are_one_line_exit_2(image_dir, tiny_model_spec, tmp_path, capsys, args, flag):
    with pytest.raises(SystemExit) as caught:
        main(["embed", str(image_dir), "--out", str(tmp_path / "out"), "--model", tiny_model_spec, *args])
    assert caught.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mmpipe: error: {flag}"), lines


def test_serve_config_names_the_bad_field(tiny_model_spec):
    with pytest.raises(ConfigError, match=r"^embeddings\.precision: fp16 needs"):
        embedding_model(ServeConfig(embeddings=Embeddings(model=tiny_model_spec, precision="fp16")))
