"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code
        self.headers = headers or {}


KINDS = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "service_unavailable",
         504: "timeout_error"}


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, headers=exc.headers, content={"error": {
        "message": exc.message, "type": KINDS.get(exc.status, "invalid_request_error"),
        "param": exc.param, "code": exc.code}})
