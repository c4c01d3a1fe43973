"""Python clients for ``mmpipe serve`` (or any OpenAI-compatible server): moderations and embeddings.

Made for callers that keep a busy server busy: 429, 5xx, connection errors and timeouts are retried
with exponential backoff and full jitter, a server's Retry-After is honoured, and no call runs past
its total deadline; it gives up early, saying so, when the next wait would cross it. Other HTTP
errors raise ``APIError`` at once. ``Client`` and ``AsyncClient`` share every decision (``_Attempts``)
and differ only in how they send and sleep.

    with Client("http://127.0.0.1:8000") as client:
        client.moderations("you are a stupid idiot")["results"][0]["flagged"]
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from .retry import RETRY_STATUSES, backoff_delay, retry_after_seconds

JSON = dict[str, Any]
Input = str | list[Any]  # a string, a list of strings, or OpenAI's content parts / token ids


class ClientError(Exception):
    """Anything ``mmpipe.client`` raises for a failed call."""


class APIError(ClientError):
    """An HTTP error answer, with the fields of its OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, body: Any = None, retry_after_s: float | None = None):
        super().__init__(f"HTTP {status}{f' ({code})' if code else ''}: {message}")
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.body = body  # the parsed JSON body, or None when it was not JSON
        self.retry_after_s = retry_after_s


class RetryError(ClientError):
    """Retries or the deadline ran out; ``last_error`` is the last failure (also ``__cause__``)."""

    def __init__(self, message: str, attempts: int, elapsed_s: float, last_error: Exception):
        super().__init__(message)
        self.attempts, self.elapsed_s, self.last_error = attempts, elapsed_s, last_error


@dataclass(frozen=True)
class RetryPolicy:
    timeout_s: float  # per attempt (httpx applies it to connecting and to each read and write)
    max_retries: int
    deadline_s: float  # for the whole call, retries and waits included
    backoff_base_s: float
    backoff_max_s: float

    def __post_init__(self) -> None:
        for name in ("timeout_s", "deadline_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("max_retries", "backoff_base_s", "backoff_max_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


# A retry is not started with less time than this before the deadline: it could not send a
# request and read an answer, and a timeout at or below zero breaks the HTTP client itself.
MIN_ATTEMPT_S = 0.05


class _Attempts:
    """One call under a RetryPolicy: each attempt's timeout, and the wait after each failure."""

    def __init__(self, policy: RetryPolicy):
        self.policy = policy
        self.started = time.monotonic()
        self.count = 0
        self.failure: httpx.TransportError | APIError | None = None  # the last one

    def begin(self) -> float:
        """Counts an attempt and returns its timeout, cut so that it ends by the deadline."""
        left = self._left_s()
        if self.failure is not None and left < MIN_ATTEMPT_S:  # the backoff's sleep overran
            raise self._give_up(f"the {self.policy.deadline_s:g} s deadline came during the backoff "
                                f"({max(left, 0.0):.2f} s left)", self.failure) from self.failure
        self.count += 1
        return min(self.policy.timeout_s, left)

    def wait_s(self, failure: httpx.TransportError | APIError) -> float:
        """Seconds to sleep before the next attempt; raises the failure itself when retrying
        cannot help, and RetryError when retries or the deadline are spent."""
        if isinstance(failure, APIError) and failure.status not in RETRY_STATUSES:
            raise failure
        self.failure = failure
        policy, retries = self.policy, self.count - 1
        if retries >= policy.max_retries:
            raise self._give_up(f"no retries left (max_retries={policy.max_retries})", failure) from failure
        asked = failure.retry_after_s if isinstance(failure, APIError) else None
        wait = backoff_delay(retries, policy.backoff_base_s, policy.backoff_max_s, asked or 0.0)
        left = self._left_s()
        if wait + MIN_ATTEMPT_S >= left:
            # Sleeping into the deadline would leave the next attempt no time: say so now instead.
            why = f"the server's Retry-After of {asked:g} s" if asked and asked >= wait \
                else f"a backoff of {wait:.2f} s"
            raise self._give_up(f"{why} would cross the {policy.deadline_s:g} s deadline "
                                f"({max(left, 0.0):.2f} s left)", failure) from failure
        return wait

    def _left_s(self) -> float:
        return self.policy.deadline_s - (time.monotonic() - self.started)

    def _give_up(self, why: str, failure: Exception) -> RetryError:
        elapsed = time.monotonic() - self.started
        attempts = f"{self.count} attempt{'s' if self.count > 1 else ''}"
        return RetryError(f"gave up after {attempts} in {elapsed:.2f} s: {why}; "
                          f"last failure: {_describe(failure)}", self.count, elapsed, failure)


def _describe(failure: Exception) -> str:
    if isinstance(failure, APIError):
        return str(failure)
    kind = "timeout" if isinstance(failure, httpx.TimeoutException) else "connection error"
    return f"{kind} ({type(failure).__name__}: {failure})"


def _parse(response: httpx.Response) -> JSON:
    """The JSON object of a 2xx answer; any other answer as an APIError."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        if isinstance(body, dict):
            return body
        raise APIError(response.status_code, f"expected a JSON object, got {response.text[:200]!r}",
                       body=body)
    raise _api_error(response, body)


def _api_error(response: httpx.Response, body: Any) -> APIError:
    fields: JSON = body if isinstance(body, dict) else {}
    if isinstance(fields.get("error"), dict):
        fields = fields["error"]
    # Not every server nests its message: some send {"error": "..."}, and FastAPI's own answers
    # (unknown routes, validation) {"detail": ...}.
    message = (fields.get("message") or fields.get("error") or fields.get("detail")
               or response.text[:300] or response.reason_phrase)
    return APIError(response.status_code, str(message), type=fields.get("type"), param=fields.get("param"),
                    code=fields.get("code"), body=body,
                    retry_after_s=retry_after_seconds(response.headers.get("Retry-After")))


def _api_root(base_url: str) -> str:
    """``http://host:8000``, with or without a trailing ``/v1``, as ``http://host:8000/v1``."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) base URL like http://127.0.0.1:8000, got {base_url!r}")
    root = base_url.rstrip("/")
    return root if root.endswith("/v1") else root + "/v1"


def _moderation_body(input: Input, model: str | None) -> JSON:
    return _without_none({"input": input, "model": model})


def _embedding_body(input: Input, model: str | None, encoding_format: str, dimensions: int | None) -> JSON:
    return _without_none({"input": input, "model": model, "encoding_format": encoding_format,
                          "dimensions": dimensions})


def _without_none(body: JSON) -> JSON:
    # Left out rather than sent as null, so the server's defaults apply.
    return {k: v for k, v in body.items() if v is not None}


class _Base:
    """What both clients hold: the API root, the retry policy and an httpx client of their kind."""

    _http_class: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 30.0,
                 max_retries: int = 5, deadline_s: float = 120.0, backoff_base_s: float = 0.25,
                 backoff_max_s: float = 8.0):
        self.base_url = _api_root(base_url)
        self.policy = RetryPolicy(timeout_s, max_retries, deadline_s, backoff_base_s, backoff_max_s)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = self._http_class(base_url=self.base_url, headers=headers)


class Client(_Base):
    """A blocking client. Methods return the parsed JSON body."""

    _http_class = httpx.Client
    _http: httpx.Client

    def moderations(self, input: Input, model: str | None = None) -> JSON:
        return self._request("/moderations", _moderation_body(input, model))

    def embeddings(self, input: Input, model: str | None = None, encoding_format: str = "float",
                   dimensions: int | None = None) -> JSON:
        return self._request("/embeddings", _embedding_body(input, model, encoding_format, dimensions))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, path: str, body: JSON) -> JSON:
        attempts = _Attempts(self.policy)
        while True:
            try:
                return _parse(self._http.post(path, json=body, timeout=attempts.begin()))
            except (httpx.TransportError, APIError) as failure:
                time.sleep(attempts.wait_s(failure))


class AsyncClient(_Base):
    """The asyncio twin of ``Client``: the same methods, awaited."""

    _http_class = httpx.AsyncClient
    _http: httpx.AsyncClient

    async def moderations(self, input: Input, model: str | None = None) -> JSON:
        return await self._request("/moderations", _moderation_body(input, model))

    async def embeddings(self, input: Input, model: str | None = None, encoding_format: str = "float",
                         dimensions: int | None = None) -> JSON:
        return await self._request("/embeddings", _embedding_body(input, model, encoding_format, dimensions))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _request(self, path: str, body: JSON) -> JSON:
        attempts = _Attempts(self.policy)
        while True:
            try:
                return _parse(await self._http.post(path, json=body, timeout=attempts.begin()))
            except (httpx.TransportError, APIError) as failure:
                await asyncio.sleep(attempts.wait_s(failure))
