"""``mmpipe serve``: a real uvicorn server on 127.0.0.1 with the real moderation models, called
with the official ``openai`` client and with raw HTTP for the error cases."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from mmpipe.sample_moderation import draw_caption
from mmpipe.serve.app import create_app
from mmpipe.errors import ConfigError
from mmpipe.serve.config import Moderation, ServeConfig, load_serve_config
from tests.conftest import RunningServer, photo


@pytest.fixture(scope="module")
def server():
    # A budget of minutes: these tests send bursts of up to 1.5 batches at once, which the default
    # budget (three batches, the running one included) may refuse in part; admission is
    # test_serve_admission's subject.
    s = RunningServer(create_app(ServeConfig(
        moderation=Moderation(max_batch_size=8, max_wait_ms=50, max_queue_delay_ms=120_000),
        max_body_bytes=2_000_000)))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def data_url(text: str) -> str:
    buf = io.BytesIO()
    draw_caption(photo(2, size=(640, 360)), text, size=34).save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def test_text_moderation_with_the_openai_client(client):
    result = client.moderations.create(model="mmpipe-moderation", input="you are a stupid idiot")
    assert result.model == "mmpipe-moderation" and len(result.results) == 1
    first = result.results[0].model_dump()
    assert first["flagged"] is True
    assert first["category_scores"]["harassment"] > 0.9
    assert first["categories"]["harassment"] is True and first["categories"]["sexual"] is False
    assert first["category_applied_input_types"]["harassment"] == ["text"]
    assert first["category_applied_input_types"]["sexual"] == []  # an image category


def test_a_list_of_strings_gives_one_result_each(client):
    result = client.moderations.create(input=["have a lovely day", "I want to kill myself"])
    flags = [r.flagged for r in result.results]
    assert flags == [False, True]
    assert result.results[1].model_dump()["categories"]["self-harm"] is True


def test_image_parts_are_read_and_moderated(client):
    result = client.moderations.create(model="omni-moderation-latest", input=[
        {"type": "text", "text": "look at this"},
        {"type": "image_url", "image_url": {"url": data_url("you are a stupid idiot")}},
    ])
    first = result.results[0].model_dump()
    assert first["flagged"] and first["category_scores"]["harassment"] > 0.9
    assert first["category_applied_input_types"]["harassment"] == ["image", "text"]
    assert first["category_applied_input_types"]["sexual"] == ["image"]
    clean = client.moderations.create(input=[
        {"type": "image_url", "image_url": {"url": data_url("have a lovely day")}}])
    assert clean.results[0].flagged is False


def test_concurrent_requests_are_batched(server, client):
    texts = [f"message number {i}, have a nice day" for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda t: client.moderations.create(input=t), texts))
    assert all(not r.results[0].flagged for r in results)
    assert max(server.app.state.batchers["moderations"].batch_sizes) > 1


def test_health_ready_and_models(server):
    assert server.get("/healthz") == (200, {"status": "alive"})
    status, ready = server.get("/readyz")
    assert status == 200 and ready["status"] == "ready"
    status, models = server.get("/v1/models")
    assert status == 200 and models["data"][0]["id"] == "mmpipe-moderation"


@pytest.mark.parametrize("body, status, param, words", [
    (b"{not json", 400, None, "invalid JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
    ({"input": 42}, 400, "input", "input must be"),
    ({"input": [{"type": "audio"}]}, 400, "input[0]", "each part"),
    ({"input": "hi", "model": "gpt-99"}, 404, "model", "does not exist"),
    ({"input": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.jpg"}}]}, 400,
     "input[0].image_url.url", "cannot use image URL"),
    ({"input": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}, 400,
     "input[0].image_url.url", "cannot use image URL"),
    ({"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}, 400,
     "input[0].image_url.url", "base64"),
    ({"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}, 400,
     "input[0]", "decode"),
])
def test_bad_requests_get_openai_error_bodies(server, body, status, param, words):
    code, _, answer = server.post("/v1/moderations", body)
    assert code == status
    error = answer["error"]
    assert words in error["message"] and error["param"] == param and error["type"]


def test_other_methods_on_a_model_route_get_405_in_openai_shape(server):
    code, answer = server.get("/v1/moderations")
    assert code == 405 and answer["error"]["code"] == "method_not_allowed"
    assert "takes POST" in answer["error"]["message"]
    text = server.get_text("/metrics")[1]
    assert 'mmpipe_request_seconds_count{route="/v1/moderations",status="405"}' in text, text[-2000:]


def test_bodies_over_the_cap_are_413(server):
    code, _, answer = server.post("/v1/moderations", {"input": "x" * 3_000_000})
    assert code == 413 and "limit" in answer["error"]["message"]


@pytest.mark.slow
def test_padded_batches_reuse_a_record_and_answer_as_unpadded(server):
    """Shape buckets pad a batch with its last item again (stages never change their inputs)."""
    s = RunningServer(create_app(ServeConfig(moderation=Moderation(max_batch_size=4, max_wait_ms=0,
                                                                    buckets=[4]))))
    try:
        image = {"input": [{"type": "image_url", "image_url": {"url": data_url("you are a stupid idiot")}}]}
        texts = {"input": ["you are a stupid idiot", "have a lovely day", "I want to kill myself"]}
        for request in (texts, image):
            code, _, padded = s.post("/v1/moderations", request)
            assert code == 200
            assert padded["results"] == server.post("/v1/moderations", request)[2]["results"]
        metrics = s.get_text("/metrics")[1]
        assert float(metrics.split('mmpipe_padded_items_total{model="mmpipe-moderation"} ')[1].split()[0]) == 1 + 3
        assert padded["results"][0]["categories"]["harassment"]
    finally:
        s.stop()


def test_overload_is_429_with_retry_after_then_recovers():
    s = RunningServer(create_app(ServeConfig(moderation=Moderation(max_batch_size=1, max_wait_ms=0, max_queue=2))))
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: s.post("/v1/moderations", {"input": f"text {i} " * 200}),
                                    range(32)))
        codes = [code for code, _, _ in answers]
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        code, headers, body = next(a for a in answers if a[0] == 429)
        assert headers.get("Retry-After") == "1" and body["error"]["type"] == "rate_limit_error"
        assert s.post("/v1/moderations", {"input": "fine again"})[0] == 200
    finally:
        s.stop()


def test_requests_that_would_wait_too_long_are_429_while_the_queue_has_room():
    # A 1 ms budget: any request behind another would wait longer (a text takes milliseconds).
    s = RunningServer(create_app(ServeConfig(moderation=Moderation(
        max_batch_size=1, max_wait_ms=0, max_queue=256, max_queue_delay_ms=1))))
    text = "text " * 200
    try:
        assert s.post("/v1/moderations", {"input": text})[0] == 200  # a batch timed: an estimate
        status, ready = s.get("/readyz")
        assert status == 200 and ready["estimated_wait_ms"] > 0 and ready["utilisation"] == 0
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: s.post("/v1/moderations", {"input": f"{i} {text}"}),
                                    range(32)))
        codes = [code for code, _, _ in answers]
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        code, headers, body = next(a for a in answers if a[0] == 429)
        assert headers.get("Retry-After") == "1" and "max_queue_delay_ms" in body["error"]["message"]
        assert s.post("/v1/moderations", {"input": "fine again"})[0] == 200
        assert 'mmpipe_estimated_wait_seconds{model="mmpipe-moderation"}' in s.get_text("/metrics")[1]
    finally:
        s.stop()


@pytest.mark.slow
def test_by_default_a_request_that_would_wait_past_two_batches_is_429():
    """No delay budget configured: once batches are timed, a request behind more than two
    batches' work is refused, at the door, with the OpenAI-style 429 and Retry-After."""
    s = RunningServer(create_app(ServeConfig(moderation=Moderation(max_batch_size=1, max_wait_ms=0))))
    images = [{"type": "image_url", "image_url": {"url": data_url(f"caption number {i} to read")}}
              for i in range(8)]
    try:
        assert s.post("/v1/moderations", {"input": images[:1]})[0] == 200  # a batch timed
        with ThreadPoolExecutor(1) as pool:
            filling = pool.submit(s.post, "/v1/moderations", {"input": images})
            while s.get("/readyz")[1]["queued"] < 8:
                assert not filling.done(), "the eight images were moderated before the check"
            code, headers, body = s.post("/v1/moderations", {"input": "hi"})
            assert filling.result()[0] == 200
        assert code == 429 and headers.get("Retry-After") == "1"
        assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "overloaded"
        assert "delay budget (3 batches' time)" in body["error"]["message"]
        assert s.post("/v1/moderations", {"input": "fine again"})[0] == 200
    finally:
        s.stop()


@pytest.mark.slow
def test_a_full_server_refuses_at_the_door_before_reading_the_body():
    """While the queue is full, a request is refused before its body is read: even a broken body
    gets the 429 (not the 400 that parsing it would give), with the same OpenAI-style error."""
    s = RunningServer(create_app(ServeConfig(moderation=Moderation(max_batch_size=1, max_wait_ms=0,
                                                                   max_queue=4))))
    images = [{"type": "image_url", "image_url": {"url": data_url(f"caption number {i} to read")}}
              for i in range(4)]
    try:
        with ThreadPoolExecutor(1) as pool:
            filling = pool.submit(s.post, "/v1/moderations", {"input": images})
            while s.get("/readyz")[1]["queued"] < 4:
                assert not filling.done(), "the four images were moderated before the check"
            refused = [s.post("/v1/moderations", b"{broken"), s.post("/v1/moderations", {"input": "hi"})]
            assert filling.result()[0] == 200
        for code, headers, body in refused:
            assert code == 429 and headers.get("Retry-After") == "1"
            assert body["error"]["code"] == "overloaded"
            assert "4 items already queued" in body["error"]["message"]
        assert s.post("/v1/moderations", b"{broken")[0] == 400  # room again: parsed, and refused for it
        metrics = s.get_text("/metrics")[1]
        assert 'mmpipe_errors_total{reason="overloaded"} 2.0' in metrics
        assert 'mmpipe_request_seconds_count{route="/v1/moderations",status="429"} 2.0' in metrics
    finally:
        s.stop()


def test_timeouts_are_504(tmp_path):
    s = RunningServer(create_app(ServeConfig(request_timeout_s=0.01)))
    try:
        code, _, body = s.post("/v1/moderations", {"input": [
            {"type": "image_url", "image_url": {"url": data_url("a long caption to read " * 3)}}]})
        assert code == 504 and body["error"]["type"] == "timeout_error"
    finally:
        s.stop()


def test_metrics_count_requests_batches_and_errors(server, client):
    client.moderations.create(input="counted")
    server.post("/v1/moderations", b"{broken")
    status, text = server.get_text("/metrics")
    assert status == 200
    assert 'mmpipe_request_seconds_count{route="/v1/moderations",status="200"}' in text
    assert 'mmpipe_request_seconds_count{route="/v1/moderations",status="400"}' in text
    assert 'mmpipe_errors_total{reason="invalid_json"}' in text
    assert 'mmpipe_batch_size_count{model="mmpipe-moderation"}' in text
    assert 'mmpipe_queue_depth{model="mmpipe-moderation"} 0.0' in text
    assert 'mmpipe_replica_busy{model="mmpipe-moderation",replica="0"}' in text


def test_serve_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "serve.yaml"
    for text, error in (("moderation:\n  max_batch_size: 0\n", r"serve.yaml: moderation.max_batch_size: .*greater than"),
                        ("embeddings:\n  model: path:x\n  buckets: [4, 2]\n", "buckets must be increasing"),
                        ("moderation:\n  max_queue_delay_ms: 0\n",
                         r"serve.yaml: moderation.max_queue_delay_ms: .*greater than 0"),
                        ("search: {max_k: 5}\n", r"serve.yaml: search.index: Field required"),
                        ("moderations: {}\n", "moderations: Extra inputs")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=error):
            load_serve_config(str(bad))
    assert load_serve_config(None, search_index="idx/").search.index == "idx/"  # --search-index
    with pytest.raises(ConfigError, match=r"--replicas: .*greater than or equal to 1"):
        load_serve_config(None, replicas=0)
    with pytest.raises(ConfigError, match=r"--config: no config file"):
        load_serve_config(str(tmp_path / "missing.yaml"))


def test_decompression_bombs_are_refused_before_decoding(server):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, "PNG")  # 400 megapixels in a few kilobytes
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    code, _, body = server.post("/v1/moderations", {"input": [{"type": "image_url", "image_url": {"url": url}}]})
    assert code == 400 and body["error"]["param"] == "input[0]"
    assert "pixels" in body["error"]["message"]


def test_a_chunked_body_over_the_cap_is_413_too(server):
    import http.client

    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b'{"input": "' + b"x" * 100_000 for _ in range(30))  # 3 MB, no Content-Length
    conn.request("POST", "/v1/moderations", body=chunks, encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 413 and "limit" in json.loads(answer.read())["error"]["message"]


def test_a_client_gone_before_its_body_arrived_is_counted_and_nothing_breaks(server):
    import socket
    import time

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{\"input\": \"half a bo")
    line = 'mmpipe_request_seconds_count{route="/v1/moderations",status="499"} 1.0'
    deadline = time.monotonic() + 10
    while line not in server.get_text("/metrics")[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in server.get_text("/metrics")[1]
    assert server.post("/v1/moderations", {"input": "still here"})[0] == 200
