"""The model routes (``POST /v1/moderations``, ``/v1/embeddings``, ``/v1/search``) as plain ASGI,
answered in front of FastAPI: admission at the door, the body read within its limit, the
answer within the deadline, every outcome an OpenAI-shaped body, timed and counted.

Why not FastAPI routes: under overload the event loop, not the model, was the limit. A profile at
5x capacity had the loop busy all the time, most of it in the per-request layers between the
socket and the handler (routing, request and response objects, dependency solving, exception
middleware, response wrappers), for the admitted requests and the refused ones alike. The other
routes (health, metrics, models) stay FastAPI's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from .batcher import DynamicBatcher, Overloaded
from .errors import RequestError, error_body
from .metrics import ServeMetrics

DISCARD_FACTOR = 8


@dataclass(frozen=True)
class ModelRoute:
    """``answer`` turns a request's JSON body into the response's; None when the route's model or
    index is not configured, and every request gets ``missing()`` (404). ``batcher``: whose
    admission the door asks before the body is read."""

    answer: Callable[[dict], Awaitable[dict]] | None
    batcher: DynamicBatcher | None = None
    missing: Callable[[], RequestError] | None = None


class _ClientGone(Exception):
    """The client closed the connection before its body was read: nobody to answer."""


class ModelRoutes:
    """An ASGI app serving ``routes`` (path → ModelRoute) itself and everything else (lifespan
    included) through ``app``, whose ``state`` it shares."""

    def __init__(self, app, routes: dict[str, ModelRoute], metrics: ServeMetrics,
                 max_body_bytes: int, timeout_s: float):
        self.app, self.routes, self.metrics = app, routes, metrics
        self.max_body_bytes, self.timeout_s = max_body_bytes, timeout_s
        self.state = app.state

    async def __call__(self, scope, receive, send):
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), "500"
        try:
            status = str(await self._serve(route, scope, receive, send))
        finally:
            self.metrics.latency.labels(scope["path"], status).observe(time.perf_counter() - t0)

    async def _serve(self, route: ModelRoute, scope, receive, send) -> int:
        try:
            if scope["method"] != "POST":
                raise RequestError(f"{scope['path']} takes POST, not {scope['method']}", status=405,
                                   code="method_not_allowed", headers={"Allow": "POST"})
            # While even a one-item request would be refused, 429 before the body is read; one let
            # in holds its place until admission (DynamicBatcher.door_place).
            reason = route.batcher.refusal() if route.batcher else None
            if reason is not None:
                raise overloaded(reason)
            with route.batcher.door_place() if route.batcher else contextlib.nullcontext():
                body = await self._json_body(scope, receive)
                if route.answer is None:
                    raise route.missing()
                return await _send_json(send, 200, await self._answer(route.answer(body)))
        except _ClientGone:
            return 499  # nginx's "client closed request": no answer was sent
        except RequestError as exc:
            self.metrics.errors.labels(exc.code or str(exc.status)).inc()
            return await _send_json(send, exc.status, error_body(exc), exc.headers)
        except Exception as exc:  # noqa: BLE001 - a bug still gets an OpenAI-shaped 500
            self.metrics.errors.labels("internal").inc()
            bug = RequestError(f"internal error: {type(exc).__name__}: {exc}", status=500, code="internal")
            return await _send_json(send, 500, error_body(bug))

    async def _answer(self, work: Awaitable[dict]) -> dict:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await work
        except Overloaded as exc:
            raise overloaded(str(exc)) from None
        except TimeoutError:
            raise RequestError(f"request took longer than {self.timeout_s} s", status=504,
                               code="timeout") from None

    async def _json_body(self, scope, receive) -> dict:
        limit = self.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > limit:
            await _discard(receive, 0, limit)
            raise RequestError(f"body of {declared.decode()} bytes exceeds the {limit}-byte limit",
                               status=413, code="body_too_large")
        raw, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
            if len(raw) > limit:
                if more:
                    await _discard(receive, len(raw), limit)
                raise RequestError(f"body exceeds the {limit}-byte limit", status=413,
                                   code="body_too_large")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise RequestError(f"invalid JSON body: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object", code="invalid_json")
        return body


def overloaded(reason: str) -> RequestError:
    return RequestError(f"server overloaded: {reason}; retry later", status=429, code="overloaded",
                        headers={"Retry-After": "1"})


async def _send_json(send, status: int, content: dict, headers: dict | None = None) -> int:
    # Encoded as Starlette's JSONResponse does, so the bytes on the wire are the same.
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    head = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
    return status


async def _discard(receive, seen: int, limit: int) -> None:
    """Reads (and drops) the rest of an over-size body, up to a bound, so that the client
    finishes sending and reads the 413 rather than a broken pipe; memory stays one chunk."""
    while seen <= DISCARD_FACTOR * limit:
        message = await receive()
        seen += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
    # Beyond the bound the connection is dropped: answering is not worth the bandwidth.
