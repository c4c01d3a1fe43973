"""The LLM judge client against a real OpenAI-style HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from mmpipe.judge import Judge, JudgeConfig, JudgeRequest, is_degenerate

DROP = 0  # a scripted status that closes the connection without answering


class FakeChatServer:
    """Answers /v1/chat/completions from a script of (status, content, headers, delay) steps."""

    def __init__(self):
        self.script: deque = deque()
        self.default = (200, '{"action": "allow", "reason": "fine"}', {}, 0.0)
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "auth": self.headers.get("Authorization")})
                    step = server.script.popleft() if server.script else server.default
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self.answer(*step)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def answer(self, status, content, headers, delay):
                time.sleep(delay)
                if status == DROP:
                    self.close_connection = True
                    return
                if status == 200:
                    payload = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                else:
                    payload = {"error": {"message": content, "type": "invalid_request_error"}}
                data = content.encode() if headers.pop("raw", False) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def then(self, status=200, content="", headers=None, delay=0.0) -> "FakeChatServer":
        self.script.append((status, content, dict(headers or {}), delay))
        return self


@pytest.fixture
def server():
    s = FakeChatServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def judge_for(server, **overrides) -> Judge:
    config = dict(url=server.url, model="judge-vlm", prompt="You moderate. Answer JSON.",
                  backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5, max_retries=3)
    return Judge(JudgeConfig(**{**config, **overrides}))


REQUEST = JudgeRequest(text="you are a stupid idiot", images=[b"\xff\xd8fakejpeg", b"\xff\xd8two"],
                       context={"scores": {"harassment": 0.7}, "uncertain": ["harassment"]})


def ask(judge: Judge):
    return judge.judge(REQUEST.text, REQUEST.images, REQUEST.context)


def test_good_verdict_and_the_request_sent(server):
    server.then(content='{"action": "block", "categories": ["harassment"], "reason": "insult"}')
    judge = judge_for(server, api_key="sk-test", max_frames=1, max_tokens=64)
    verdict = ask(judge)
    assert (verdict.status, verdict.action, verdict.categories, verdict.reason, verdict.attempts) == \
        ("ok", "block", ["harassment"], "insult", 1)
    assert verdict.raw.startswith('{"action": "block"') and verdict.error is None
    assert judge.counters == {"ok": 1}
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    body = sent["body"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("judge-vlm", 64, 0.0)
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0] == {"role": "system", "content": "You moderate. Answer JSON."}
    parts = body["messages"][1]["content"]
    assert parts[0]["type"] == "text" and "stupid idiot" in parts[0]["text"]
    assert '"harassment": 0.7' in parts[0]["text"]  # the classifiers' scores go along
    images = [p for p in parts if p["type"] == "image_url"]
    assert [p["image_url"]["url"] for p in images] == ["data:image/jpeg;base64,/9hmYWtlanBlZw=="]


def test_fenced_json_and_leading_prose_are_accepted(server):
    server.then(content='Sure:\n```json\n{"action": "review", "reason": "unclear"}\n```')
    server.then(content='My verdict is {"action": "Allow"} and that is final.')
    judge = judge_for(server)
    fenced, prose = ask(judge), ask(judge)
    assert (fenced.action, fenced.reason) == ("review", "unclear")
    assert prose.action == "allow"


def test_looping_answer_is_degenerate_and_counted(server):
    server.then(content="The image shows " * 500)
    judge = judge_for(server)
    verdict = ask(judge)
    assert (verdict.status, verdict.action, len(verdict.raw)) == ("degenerate", None, 2000)
    assert judge.counters["degenerate"] == 1


def test_garbage_and_unknown_actions_are_unparseable(server):
    server.then(content="I cannot help with that.").then(content='{"action": "delete"}')
    judge = judge_for(server)
    verdicts = [ask(judge) for _ in range(2)]
    assert [(v.status, v.action) for v in verdicts] == [("unparseable", None)] * 2
    assert judge.counters == {"unparseable": 2}


def test_5xx_and_dropped_connections_are_retried(server):
    server.then(503, "busy").then(DROP).then(content='{"action": "allow"}')
    verdict = ask(judge_for(server))
    assert (verdict.status, verdict.action, verdict.attempts) == ("ok", "allow", 3)


@pytest.mark.slow
def test_429_honours_retry_after(server):
    server.then(429, "slow down", {"Retry-After": "1"}).then(content='{"action": "allow"}')
    start = time.monotonic()
    verdict = ask(judge_for(server))  # backoff alone would wait at most 0.05 s
    assert (verdict.status, verdict.attempts) == ("ok", 2)
    assert time.monotonic() - start >= 1.0


def test_server_without_json_mode_is_asked_again_without_it(server):
    server.then(400, "unknown field: response_format").then(content='{"action": "review"}')
    judge = judge_for(server)
    verdict = ask(judge)
    assert (verdict.action, verdict.attempts) == ("review", 2)
    assert "response_format" in server.requests[0]["body"]
    assert "response_format" not in server.requests[1]["body"]
    ask(judge)
    assert "response_format" not in server.requests[2]["body"]  # remembered


def test_a_400_for_another_reason_fails_and_keeps_json_mode(server):
    server.then(400, "image too large").then(400, "image too large")
    judge = judge_for(server)
    verdict = ask(judge)
    assert (verdict.status, verdict.attempts) == ("failed", 2) and "image too large" in verdict.error
    ask(judge)
    assert "response_format" in server.requests[2]["body"]


def test_other_4xx_and_non_completions_fail_at_once(server):
    server.then(404, "no such model").then(200, "<html>a web page</html>", {"raw": True})
    judge = judge_for(server)
    missing, page = ask(judge), ask(judge)
    assert (missing.status, missing.attempts) == ("failed", 1) and "404" in missing.error
    assert (page.status, page.attempts) == ("failed", 1) and "not a chat completion" in page.error
    assert len(server.requests) == 2 and judge.counters == {"failed": 2}


def test_timeouts_are_retried_then_fail(server):
    server.default = (200, '{"action": "allow"}', {}, 1.0)
    verdict = ask(judge_for(server, timeout_s=0.2, max_retries=2))
    assert (verdict.status, verdict.action, verdict.attempts) == ("failed", None, 3)
    assert "gave up after 3 attempts: timeout" in verdict.error


def test_unreachable_server_fails_cleanly(server):
    url = server.url
    server.httpd.shutdown()
    server.httpd.server_close()  # the port is closed: connections are refused
    verdict = ask(Judge(JudgeConfig(url=url, model="m", prompt="p", max_retries=1, backoff_base_s=0.01)))
    assert (verdict.status, verdict.attempts) == ("failed", 2) and "connection error" in verdict.error


def test_concurrency_is_capped(server):
    server.default = (200, '{"action": "allow"}', {}, 0.2)
    judge = judge_for(server, concurrency=3)
    requests = [JudgeRequest(text=f"item {i}") for i in range(10)]
    verdicts = judge.judge_many(requests)
    assert [v.action for v in verdicts] == ["allow"] * 10 and judge.counters == {"ok": 10}
    assert 1 < server.max_in_flight <= 3
    sent = sorted(r["body"]["messages"][1]["content"][0]["text"] for r in server.requests)
    assert sent == sorted(f"item {i}" for i in range(10))
    assert judge.judge_many([]) == []


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "ftp://host/v1", "http:///v1"])
def test_config_refuses_urls_that_are_not_http(url):
    with pytest.raises(ValidationError, match="url"):
        JudgeConfig(url=url, model="m", prompt="p")


@pytest.mark.parametrize("text, looping", [
    ('{"action": "block", "categories": ["harassment"], "reason": "insult in the caption"}', False),
    ('{"action": "allow", "reason": "no, no, no, it is fine"}\n\n\n\n\n\n\n\n\n\n', False),
    ('{"action": "review", "reason": "the image shows a knife; the image shows blood"}', False),
    ("ok", False),
    ("the image shows " * 6, True),
    ("I think this is fine. " * 8, True),
    ('{"action": "allow"' + "}" * 40, True),
    ('{"reason": "' + "ha" * 30, True),
])
def test_is_degenerate(text, looping):
    assert is_degenerate(text) is looping
