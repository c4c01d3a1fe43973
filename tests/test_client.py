"""``mmpipe.client`` (sync and async) against real uvicorn servers on 127.0.0.1: scripted apps for
the retry paths, and the real moderation server for one round trip."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from mmpipe.client import MIN_ATTEMPT_S, APIError, AsyncClient, Client, RetryError, RetryPolicy, _Attempts
from mmpipe.retry import backoff_delay, retry_after_seconds
from tests.conftest import RunningServer

FAST = dict(backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5)


@dataclass
class Step:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    message: str = "scripted failure"
    param: str | None = None
    code: str | None = None
    raw: str | None = None  # a body that is not JSON


class Script:
    """A FastAPI app answering every POST /v1/<name> from a script of steps, then from ``default``."""

    def __init__(self, steps: list[Step], default: Step):
        self.steps, self.default = deque(steps), default
        self.seen: list[tuple[float, str, dict[str, str], Any]] = []  # (arrival, path, headers, body)
        self.app = FastAPI()
        self.app.post("/v1/{name}")(self.answer)

    async def answer(self, name: str, request: Request):
        self.seen.append((time.monotonic(), request.url.path, dict(request.headers), await request.json()))
        step = self.steps.popleft() if self.steps else self.default
        await asyncio.sleep(step.delay_s)
        if step.raw is not None:
            return PlainTextResponse(step.raw, step.status, step.headers)
        if step.status == 200:
            return {"object": name, "echo": self.seen[-1][3]}
        return JSONResponse({"error": {"message": step.message, "type": "scripted_error",
                                       "param": step.param, "code": step.code}},
                            step.status, step.headers)

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests: the client's waits (plus a little overhead)."""
        times = [t for t, *_ in self.seen]
        return [b - a for a, b in zip(times, times[1:])]


@pytest.fixture
def serve():
    servers: list[RunningServer] = []

    def start(*steps: Step, default: Step = Step()) -> tuple[Script, str]:
        script = Script(list(steps), default)
        servers.append(RunningServer(script.app))
        return script, servers[-1].url

    yield start
    for server in servers:
        server.stop()


def call(kind: str, url: str, method: str = "moderations", *args: Any, **options: Any) -> Any:
    """``method(*args)`` on a fresh Client or AsyncClient; ``args`` default to one moderation input."""
    args = args or ("hello",)
    if kind == "sync":
        with Client(url, **options) as client:
            return getattr(client, method)(*args)

    async def main() -> Any:
        async with AsyncClient(url, **options) as client:
            return await getattr(client, method)(*args)
    return asyncio.run(main())


def failing(kind: str, url: str, **options: Any) -> tuple[Exception, float]:
    """The error a call raises and the seconds it took to raise it."""
    start = time.monotonic()
    with pytest.raises((APIError, RetryError)) as caught:
        call(kind, url, **options)
    return caught.value, time.monotonic() - start


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@pytest.mark.slow
@KINDS
def test_429_waits_at_least_retry_after(serve, kind):
    script, url = serve(Step(429, {"Retry-After": "1"}), Step(429, {"Retry-After": "1"}))
    start = time.monotonic()
    result = call(kind, url, **FAST)  # backoff alone would wait at most 0.05 s
    assert result == {"object": "moderations", "echo": {"input": "hello"}}
    assert len(script.seen) == 3 and all(gap >= 1.0 for gap in script.gaps())
    assert 2.0 <= time.monotonic() - start < 3.5


@KINDS
def test_5xx_are_retried_with_backoff_under_its_cap(serve, kind):
    script, url = serve(Step(503), Step(500), Step(502), Step(504))
    assert call(kind, url, **FAST)["object"] == "moderations"
    assert len(script.seen) == 5
    assert max(script.gaps()) < 0.05 + 0.25  # the cap, plus room for a busy machine


@KINDS
def test_a_timeout_is_retried(serve, kind):
    script, url = serve(Step(delay_s=0.6))
    assert call(kind, url, **{**FAST, "timeout_s": 0.2})["object"] == "moderations"
    assert len(script.seen) == 2 and script.gaps()[0] < 0.5


@KINDS
def test_other_4xx_raise_at_once_with_the_error_body(serve, kind):
    script, url = serve(Step(400, message="input must not be empty", param="input", code="empty_input"))
    error, elapsed = failing(kind, url, **FAST)
    assert isinstance(error, APIError) and len(script.seen) == 1 and elapsed < 1.0
    assert (error.status, error.message, error.param, error.code, error.type) == \
        (400, "input must not be empty", "input", "empty_input", "scripted_error")
    assert error.body["error"]["message"] == "input must not be empty"
    assert str(error) == "HTTP 400 (empty_input): input must not be empty"


@KINDS
def test_unknown_routes_and_non_json_answers_are_not_retried(serve, kind):
    bare = RunningServer(FastAPI())  # no routes: FastAPI answers {"detail": "Not Found"}
    try:
        with pytest.raises(APIError, match="HTTP 404: Not Found"):
            call(kind, bare.url, "embeddings", "hello", **FAST)
    finally:
        bare.stop()
    script, url = serve(Step(raw="<html>a proxy page</html>"))
    error, _ = failing(kind, url, **FAST)
    assert isinstance(error, APIError) and error.status == 200 and "a proxy page" in error.message
    assert len(script.seen) == 1


@KINDS
def test_retries_run_out_naming_the_last_failure(serve, kind):
    script, url = serve(default=Step(503, message="warming up"))
    error, _ = failing(kind, url, **{**FAST, "max_retries": 2})
    assert isinstance(error, RetryError) and error.attempts == 3 and len(script.seen) == 3
    assert str(error).startswith("gave up after 3 attempts")
    assert "max_retries=2" in str(error) and "HTTP 503: warming up" in str(error)
    assert isinstance(error.last_error, APIError) and error.__cause__ is error.last_error


@KINDS
def test_a_retry_after_past_the_deadline_gives_up_at_once(serve, kind):
    script, url = serve(default=Step(429, {"Retry-After": "3"}, message="overloaded", code="overloaded"))
    error, elapsed = failing(kind, url, **{**FAST, "deadline_s": 2})
    assert isinstance(error, RetryError) and error.attempts == 1 and elapsed < 1.0
    assert "Retry-After of 3 s would cross the 2 s deadline" in str(error)
    assert "HTTP 429 (overloaded): overloaded" in str(error)


@pytest.mark.slow
@KINDS
def test_backoff_never_waits_past_the_deadline(serve, kind):
    script, url = serve(default=Step(503))
    options = dict(backoff_base_s=0.05, backoff_max_s=0.2, max_retries=1000, deadline_s=0.8)
    error, elapsed = failing(kind, url, **options)
    assert isinstance(error, RetryError) and "0.8 s deadline" in str(error)
    # The last attempt may start with too little time left to reach the server (on a busy
    # machine): it then fails as a timeout, cut by the deadline like everything else.
    cut = error.attempts - len(script.seen)
    assert len(script.seen) > 3 and cut in (0, 1), (error.attempts, len(script.seen))
    assert not cut or "last failure: timeout" in str(error)
    assert script.seen[-1][0] - script.seen[0][0] < 0.8 and elapsed < 0.8 + 0.3  # room for setup


def test_a_backoff_that_overran_the_deadline_gives_up_instead_of_a_zero_timeout():
    # A busy machine can sleep past the deadline; the next attempt must not get a timeout at or
    # below zero (httpx then raises a bare ValueError), nor one too short to finish.
    policy = RetryPolicy(timeout_s=5, max_retries=10, deadline_s=1.0, backoff_base_s=0.01,
                         backoff_max_s=0.01)
    attempts = _Attempts(policy)
    assert attempts.begin() == pytest.approx(1.0, abs=0.05)
    failure = APIError(503, "busy")
    assert attempts.wait_s(failure) <= 0.01
    attempts.started -= 1.0 - MIN_ATTEMPT_S / 2  # as if the sleep had overrun: 25 ms left
    with pytest.raises(RetryError, match="deadline came during the backoff") as caught:
        attempts.begin()
    assert caught.value.attempts == 1 and caught.value.last_error is failure
    attempts.started -= 1.0  # and no wait is offered that would leave under MIN_ATTEMPT_S
    with pytest.raises(RetryError, match="would cross the 1 s deadline"):
        attempts.wait_s(failure)


@KINDS
def test_connection_refused_is_retried_then_reported(kind):
    gone = RunningServer(FastAPI())
    gone.stop()  # nothing listens on its port any more
    error, _ = failing(kind, gone.url, **{**FAST, "max_retries": 2})
    assert isinstance(error, RetryError) and error.attempts == 3
    assert "connection error (ConnectError" in str(error)
    assert isinstance(error.last_error, httpx.ConnectError)


@KINDS
def test_request_bodies_paths_and_api_key(serve, kind):
    script, url = serve()
    call(kind, url + "/v1/", "embeddings", ["a", "b"], "mm-embed", "base64", 8, api_key="sk-test")
    call(kind, url, "moderations", "hi")
    (_, path, headers, body), (_, path2, headers2, body2) = script.seen
    assert (path, headers["authorization"]) == ("/v1/embeddings", "Bearer sk-test")
    assert body == {"input": ["a", "b"], "model": "mm-embed", "encoding_format": "base64", "dimensions": 8}
    assert (path2, body2, "authorization" in headers2) == ("/v1/moderations", {"input": "hi"}, False)


@pytest.mark.parametrize("url, options", [("127.0.0.1:8000", {}), ("ftp://host", {}),
                                          ("http://h", {"deadline_s": 0}), ("http://h", {"max_retries": -1})])
def test_bad_settings_are_refused(url, options):
    with pytest.raises(ValueError):
        Client(url, **options)


def test_retry_after_seconds_reads_both_forms():
    now = float(int(time.time()))
    assert [retry_after_seconds(h) for h in ("3", " 2.5 ", "-1", "soon", "", None, "inf")] == \
        [3.0, 2.5, 0.0, None, None, None, None]
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_backoff_delay_is_full_jitter_under_the_cap():
    for retries in range(8):
        ceiling = min(1.0, 0.1 * 2 ** retries)
        samples = [backoff_delay(retries, 0.1, 1.0) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples) and max(samples) > ceiling / 2
    assert backoff_delay(3, 0.1, 1.0, at_least_s=5.0) == 5.0
    assert backoff_delay(10_000, 0.1, 1.0) <= 1.0  # no overflow after very many retries


@pytest.mark.slow
def test_round_trip_with_the_real_moderation_server():
    from mmpipe.serve.app import create_app
    from mmpipe.serve.config import ServeConfig

    server = RunningServer(create_app(ServeConfig()))
    try:
        with Client(server.url) as client:
            result = client.moderations("you are a stupid idiot")
        assert result["results"][0]["flagged"] is True

        async def moderate() -> dict:
            async with AsyncClient(server.url + "/v1") as client:
                return await client.moderations(["have a lovely day", "you are a stupid idiot"])
        assert [r["flagged"] for r in asyncio.run(moderate())["results"]] == [False, True]
    finally:
        server.stop()
