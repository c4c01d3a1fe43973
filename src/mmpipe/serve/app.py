"""The HTTP server: routes, admission, deadlines, errors and metrics. Model work happens in the
batchers' replica threads; this module only moves requests to them and answers back."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Awaitable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from .batcher import DynamicBatcher, Overloaded
from .config import ServeConfig
from .embeddings import embed_request, embedding_model
from .errors import RequestError, error_response
from .inputs import InputLimits
from .metrics import ServeMetrics
from .moderations import MODEL_ID, moderate_request, moderation_model

ROUTES = ("/v1/moderations", "/v1/embeddings", "/v1/models", "/healthz", "/readyz", "/metrics")


def create_app(config: ServeConfig) -> FastAPI:
    """Loads every model before returning: a started server is a ready server."""
    metrics = ServeMetrics()
    served, policy = moderation_model(config)
    batchers = {"moderations": DynamicBatcher(served, config.moderation, metrics)}
    embeddings = embedding_model(config) if config.embeddings else None
    if embeddings:
        batchers["embeddings"] = DynamicBatcher(embeddings.served, config.embeddings, metrics)
    limits = InputLimits(config.max_body_bytes, config.allow_private_urls)
    app = FastAPI(title="mmpipe", docs_url=None, redoc_url=None)
    app.state.batchers, app.state.metrics = batchers, metrics

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.url.path if request.url.path in ROUTES else "other"  # bounded label values
        metrics.latency.labels(route, str(response.status_code)).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, exc: RequestError):
        metrics.errors.labels(exc.code or str(exc.status)).inc()
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception):
        # Still an OpenAI-shaped body, so clients parse it like any other error.
        metrics.errors.labels("internal").inc()
        return error_response(RequestError(f"internal error: {type(exc).__name__}: {exc}",
                                           status=500, code="internal"))

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        # Routers read utilisation (admitted items / admission limit, the fullest model's) to
        # decide when to spill to another server.
        fullest = max(batchers.values(), key=lambda b: b.utilisation)
        state = {"queued": fullest.admitted, "max_queue": fullest.cfg.max_queue,
                 "utilisation": round(fullest.utilisation, 4)}
        if fullest.utilisation >= 1:
            return JSONResponse({"status": "overloaded", **state}, status_code=503)
        return {"status": "ready", **state}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        ids = [MODEL_ID] + ([embeddings.served.name] if embeddings else [])
        return {"object": "list", "data": [{"id": i, "object": "model", "created": int(time.time()),
                                            "owned_by": "mmpipe"} for i in ids]}

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        body = await _json_body(request, config.max_body_bytes)
        model = body.get("model") or MODEL_ID
        return await _answer(moderate_request(body, batchers["moderations"], policy, model, limits),
                             config.request_timeout_s)

    @app.post("/v1/embeddings")
    async def embed(request: Request):
        body = await _json_body(request, config.max_body_bytes)
        if embeddings is None:
            raise RequestError("this server has no embedding model; start it with "
                               "--embedding-model path:DIR (a CLIP checkpoint)", param="model",
                               status=404, code="model_not_found")
        return await _answer(embed_request(body, batchers["embeddings"], embeddings, limits),
                             config.request_timeout_s)

    return app


async def _answer(work: Awaitable[dict], timeout_s: float) -> dict:
    try:
        return await asyncio.wait_for(work, timeout=timeout_s)
    except Overloaded as exc:
        raise RequestError(f"server overloaded: {exc}; retry later", status=429,
                           code="overloaded", headers={"Retry-After": "1"}) from None
    except asyncio.TimeoutError:
        raise RequestError(f"request took longer than {timeout_s} s", status=504,
                           code="timeout") from None


async def _json_body(request: Request, max_bytes: int) -> dict:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(f"body of {declared} bytes exceeds the {max_bytes}-byte limit",
                           status=413, code="body_too_large")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise RequestError(f"body exceeds the {max_bytes}-byte limit", status=413,
                               code="body_too_large")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"invalid JSON body: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object", code="invalid_json")
    return body
