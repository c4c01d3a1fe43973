"""The HTTP server: routes, admission and errors. Model work happens in the batcher's threads."""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..jobs.moderate import ModerateConfig, effective_policy, load_policy_clip
from .batcher import DynamicBatcher, Overloaded
from .config import ServeConfig
from .errors import RequestError, error_response
from .moderations import moderate_request, moderation_runner

MODERATION_MODEL = "mmpipe-moderation"


def create_app(config: ServeConfig) -> FastAPI:
    """Loads the models (every replica) before returning: a started server is a ready server."""
    job = ModerateConfig(input="-", out="-", policy=config.policy, clip_model=config.clip_model,
                         max_pixels=config.max_pixels, model_threads=config.model_threads,
                         escalate=False)
    policy = effective_policy(job)
    clip = load_policy_clip(job, policy)
    batcher = DynamicBatcher(moderation_runner(policy, job, clip), config.max_batch_size,
                             config.max_wait_ms, config.max_queue, config.replicas)
    app = FastAPI(title="mmpipe", docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, exc: RequestError):
        return error_response(exc)

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        # Routers read utilisation (admitted items / admission limit) to decide when to spill.
        state = {"queued": batcher.depth, "max_queue": config.max_queue,
                 "utilisation": round(batcher.depth / config.max_queue, 4)}
        if not batcher.ready.is_set():
            return JSONResponse({"status": "loading", **state}, status_code=503)
        if batcher.depth >= config.max_queue:
            return JSONResponse({"status": "overloaded", **state}, status_code=503)
        return {"status": "ready", **state}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": MODERATION_MODEL, "object": "model",
                                            "created": int(time.time()), "owned_by": "mmpipe"}]}

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        body = await _json_body(request, config.max_body_bytes)
        model = body.get("model") or MODERATION_MODEL
        if model not in (MODERATION_MODEL, "omni-moderation-latest", "text-moderation-latest"):
            raise RequestError(f"model {model!r} does not exist; try {MODERATION_MODEL!r}",
                               param="model", status=404, code="model_not_found")
        try:
            return await asyncio.wait_for(
                moderate_request(body, batcher, policy, model, config.max_body_bytes,
                                 config.allow_private_urls),
                timeout=config.request_timeout_s)
        except Overloaded as exc:
            raise RequestError(f"server overloaded: {exc}; retry later", status=429,
                               code="overloaded", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise RequestError(f"request took longer than {config.request_timeout_s} s",
                               status=504, code="timeout") from None

    return app


async def _json_body(request: Request, max_bytes: int) -> dict:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(f"body of {declared} bytes exceeds the {max_bytes}-byte limit", status=413)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise RequestError(f"body exceeds the {max_bytes}-byte limit", status=413)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body
