"""The HTTP server: its models and batchers, the model routes (served by ``model_routes``: the
door, bodies, deadlines, errors), health, models and metrics. Model work happens in the batchers'
replica threads; the event loop only moves requests to them and answers back."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from .batcher import DynamicBatcher
from .config import ServeConfig
from .embeddings import embed_request, embedding_model
from .errors import RequestError, answer_bugs_in_openai_shape
from .inputs import InputLimits
from .metrics import ServeMetrics
from .model_routes import ModelRoute, ModelRoutes
from .moderations import MODEL_ID, moderate_request, moderation_model
from .search import check_embeddings, open_search_index, search_request

ROUTES = ("/v1/moderations", "/v1/embeddings", "/v1/search", "/v1/models", "/healthz", "/readyz", "/metrics")


def create_app(config: ServeConfig) -> ModelRoutes:
    """The server's ASGI app (``state`` holds its batchers, metrics and embedding model). Loads
    every model before returning: a started server is a ready server."""
    metrics = ServeMetrics()
    index = None
    if config.search:
        index, config = open_search_index(config)
    served, policy = moderation_model(config)
    batchers = {"moderations": DynamicBatcher(served, config.moderation, metrics)}
    embeddings = embedding_model(config) if config.embeddings else None
    if embeddings:
        batchers["embeddings"] = DynamicBatcher(embeddings.served, embeddings.settings, metrics)
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

    app.add_middleware(LatencyMiddleware, metrics=metrics)
    def missing_model() -> RequestError:
        return RequestError("this server has no embedding model; start it with --embedding-model "
                            "path:DIR (a CLIP checkpoint)", param="model", status=404, code="model_not_found")

    def missing_index() -> RequestError:
        return RequestError("this server has no search index; start it with --search-index DIR (made "
                            "by 'mmpipe index')", status=404, code="index_not_found")

    moderate = batchers["moderations"]
    embed = batchers.get("embeddings")
    routes = {
        "/v1/moderations": ModelRoute(lambda body: moderate_request(
            body, moderate, policy, body.get("model") or MODEL_ID, limits), moderate),
        "/v1/embeddings": ModelRoute((lambda body: embed_request(body, embed, embeddings, limits))
                                     if embeddings else None, embed, missing_model),
        "/v1/search": ModelRoute((lambda body: search_request(body, embed, embeddings, index, limits,
                                                              config.search.max_k))
                                 if index is not None else None, embed, missing_index)}
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

    # In front of FastAPI, not one of its middlewares: the model routes pass none of its layers.
    return ModelRoutes(app, routes, metrics, config.max_body_bytes, config.request_timeout_s)


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
