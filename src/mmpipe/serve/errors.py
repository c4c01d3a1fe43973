"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code
        self.headers = headers or {}


KINDS = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "service_unavailable",
         504: "timeout_error"}


def error_body(exc: RequestError) -> dict:
    return {"error": {"message": exc.message, "type": KINDS.get(exc.status, "invalid_request_error"),
                      "param": exc.param, "code": exc.code}}


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, headers=exc.headers, content=error_body(exc))


def answer_bugs_in_openai_shape(app: FastAPI, on_bug: Callable[[], None] = lambda: None) -> None:
    """An unexpected exception still gets an OpenAI-shaped 500 body, so that clients parse it
    like any other error; ``on_bug`` counts it."""
    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception):
        on_bug()
        return error_response(RequestError(f"internal error: {type(exc).__name__}: {exc}",
                                           status=500, code="internal"))
