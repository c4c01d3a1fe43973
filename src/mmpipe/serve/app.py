"""The HTTP server: routes, admission, deadlines, errors and metrics. Model work happens in the
batchers' replica threads; this module only moves requests to them and answers back."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from typing import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from .batcher import DynamicBatcher, Overloaded
from .config import ServeConfig
from .embeddings import embed_request, embedding_model
from .errors import RequestError, answer_bugs_in_openai_shape, error_response
from .inputs import InputLimits
from .metrics import ServeMetrics
from .moderations import MODEL_ID, moderate_request, moderation_model
from .search import check_embeddings, open_search_index, search_request

DISCARD_FACTOR = 8
ROUTES = ("/v1/moderations", "/v1/embeddings", "/v1/search", "/v1/models", "/healthz", "/readyz", "/metrics")


def create_app(config: ServeConfig) -> FastAPI:
    """Loads every model before returning: a started server is a ready server."""
    metrics = ServeMetrics()
    index = None
    if config.search:
        index, config = open_search_index(config)
    served, policy = moderation_model(config)
    batchers = {"moderations": DynamicBatcher(served, config.moderation, metrics)}
    embeddings = embedding_model(config) if config.embeddings else None
    if embeddings:
        batchers["embeddings"] = DynamicBatcher(embeddings.served, config.embeddings, metrics)
    if index is not None:
        check_embeddings(index, embeddings)
    limits = InputLimits(config.max_body_bytes, config.allow_private_urls)
    # The models are millions of long-lived objects; left to the collector, every full collection
    # walks them all and stalls requests (p99 was 10x p50 under load). Frozen, they are skipped.
    gc.collect()
    gc.freeze()
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        for batcher in batchers.values():
            batcher.start()
        yield
        for batcher in batchers.values():
            await asyncio.to_thread(batcher.close)

    app = FastAPI(title="mmpipe", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.batchers, app.state.metrics, app.state.embeddings = batchers, metrics, embeddings

    # Added first, so inside LatencyMiddleware: refusals at the door are timed and counted too.
    at_door = {"/v1/moderations": batchers["moderations"]}
    if embeddings:
        at_door.update({"/v1/embeddings": batchers["embeddings"], "/v1/search": batchers["embeddings"]})
    app.add_middleware(OverloadShedding, batchers=at_door,
                       on_refusal=metrics.errors.labels("overloaded").inc)
    app.add_middleware(LatencyMiddleware, metrics=metrics)

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, exc: RequestError):
        metrics.errors.labels(exc.code or str(exc.status)).inc()
        return error_response(exc)

    answer_bugs_in_openai_shape(app, metrics.errors.labels("internal").inc)

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        # Routers read utilisation (how close the fullest model's admission is to refusing: its
        # items or its estimated wait against their limits) to decide when to spill to another
        # server.
        fullest = max(batchers.values(), key=lambda b: b.utilisation)
        wait = fullest.estimated_wait(1)
        state = {"queued": fullest.admitted, "max_queue": fullest.cfg.max_queue,
                 "utilisation": round(fullest.utilisation, 4),
                 "estimated_wait_ms": None if wait is None else round(wait * 1000, 1)}
        if fullest.utilisation >= 1:
            return JSONResponse({"status": "overloaded", **state}, status_code=503)
        return {"status": "ready", **state}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        created = int(time.time())
        data = [{"id": MODEL_ID, "object": "model", "created": created, "owned_by": "mmpipe"}]
        if embeddings:  # with the variant it runs and that variant's accuracy against eager fp32
            data.append({"id": embeddings.served.name, "object": "model", "created": created,
                         "owned_by": "mmpipe", "variant": embeddings.variant})
        return {"object": "list", "data": data}

    def post(path: str, answer: Callable[[dict], Awaitable[dict]] | None,
             missing: Callable[[], RequestError] | None = None) -> None:
        """A POST route answering a JSON body within the deadline; ``answer`` None: the route's
        model or index is not configured, and every request gets a fresh ``missing()`` (404)."""
        async def route(request: Request):
            body = await _json_body(request, config.max_body_bytes)
            if answer is None:
                raise missing()
            # A response, not the dict: FastAPI would walk every value of a dict it is handed
            # (jsonable_encoder) before encoding it, per request, for plain JSON types.
            return JSONResponse(await _answer(answer(body), config.request_timeout_s))

        app.post(path)(route)

    post("/v1/moderations", lambda body: moderate_request(
        body, batchers["moderations"], policy, body.get("model") or MODEL_ID, limits))
    post("/v1/embeddings", (lambda body: embed_request(body, batchers["embeddings"], embeddings, limits))
         if embeddings else None,
         lambda: RequestError("this server has no embedding model; start it with --embedding-model "
                              "path:DIR (a CLIP checkpoint)", param="model", status=404,
                              code="model_not_found"))
    post("/v1/search", (lambda body: search_request(body, batchers["embeddings"], embeddings, index,
                                                    limits, config.search.max_k))
         if index is not None else None,
         lambda: RequestError("this server has no search index; start it with --search-index DIR "
                              "(made by 'mmpipe index')", status=404, code="index_not_found"))

    return app


class LatencyMiddleware:
    """Request latency by route and status, as plain ASGI: Starlette's ``@app.middleware("http")``
    wraps every request in extra tasks and streams, a cost a batched server pays per request."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), []

        async def sending(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"  # bounded label values
            self.metrics.latency.labels(route, str(status[0] if status else 500)).observe(
                time.perf_counter() - t0)


class OverloadShedding:
    """429 before a request's body is read, while even a one-item request would be refused.

    Under 5x overload, refusals that went through routing, body parsing, validation and the
    exception handlers took three quarters of the event loop's time, and the GIL with it, from
    the replicas: the overloaded server answered fewer requests than at capacity. A request that
    passes the door holds a place until it is checked again, exactly, when admitted."""

    def __init__(self, app, batchers: dict[str, DynamicBatcher], on_refusal: Callable[[], None]):
        self.app, self.batchers, self.on_refusal = app, batchers, on_refusal

    async def __call__(self, scope, receive, send):
        post = scope["type"] == "http" and scope["method"] == "POST"
        batcher = self.batchers.get(scope["path"]) if post else None
        if batcher is None:
            return await self.app(scope, receive, send)
        reason = batcher.refusal()
        if reason is None:
            with batcher.door_place():
                return await self.app(scope, receive, send)
        self.on_refusal()
        await error_response(_overloaded(reason))(scope, receive, send)


def _overloaded(reason: str) -> RequestError:
    return RequestError(f"server overloaded: {reason}; retry later", status=429, code="overloaded",
                        headers={"Retry-After": "1"})


async def _answer(work: Awaitable[dict], timeout_s: float) -> dict:
    try:
        # In the request's own task: Python 3.11's wait_for wraps the work in a task of its own.
        async with asyncio.timeout(timeout_s):
            return await work
    except Overloaded as exc:
        raise _overloaded(str(exc)) from None
    except TimeoutError:
        raise RequestError(f"request took longer than {timeout_s} s", status=504,
                           code="timeout") from None


async def _json_body(request: Request, max_bytes: int) -> dict:
    declared = request.headers.get("content-length")
    stream = request.stream()
    if declared and declared.isdigit() and int(declared) > max_bytes:
        await _discard(stream, max_bytes)
        raise RequestError(f"body of {declared} bytes exceeds the {max_bytes}-byte limit",
                           status=413, code="body_too_large")
    raw = bytearray()
    async for chunk in stream:
        raw += chunk
        if len(raw) > max_bytes:
            await _discard(stream, max_bytes)
            raise RequestError(f"body exceeds the {max_bytes}-byte limit", status=413,
                               code="body_too_large")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"invalid JSON body: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object", code="invalid_json")
    return body


async def _discard(stream: AsyncIterator[bytes], max_bytes: int) -> None:
    """Reads (and drops) the rest of an over-size body, up to a bound, so that the client
    finishes sending and reads the 413 rather than a broken pipe; memory stays one chunk."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > DISCARD_FACTOR * max_bytes:
            return  # beyond this the connection is dropped: answering is not worth the bandwidth
