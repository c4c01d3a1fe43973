"""``mmpipe route``: one OpenAI-compatible endpoint in front of several mmpipe servers ("regions").

Each request goes to the first backend, in the config's order of preference, that is healthy and
whose measured utilisation is below ``spill_utilisation``; when all of them are that busy, to the
least utilised. A backend that refuses (429) passes the request on to the next; one that fails
(connection error, timeout, 5xx) is charged a failure and the request is retried on the next
(every proxied endpoint is idempotent). When no backend takes it the caller gets 429 with
Retry-After if some were only busy, 503 if none was healthy or all failed, 504 if
``request_timeout_s`` ran out; always an OpenAI error body.

Health comes from probing each backend's ``/readyz`` every ``probe_interval_s``: a backend that
fails ``eject_after_failures`` probes or requests in a row leaves the rotation, and comes back
after ``readmit_after_successes`` passing probes in a row. Backends start out of rotation; the
first probe round runs before the router serves, so with the default of one success a started
router already uses every live backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from .errors import RequestError, answer_bugs_in_openai_shape, error_response
from .route_config import RouteConfig

log = logging.getLogger(__name__)

PROXIED = (("POST", "/v1/moderations"), ("POST", "/v1/embeddings"), ("GET", "/v1/models"))
BACKEND_HEADER = "x-mmpipe-backend"
# Headers that describe one hop (or that httpx/uvicorn set again for the next one) and so are
# not passed through. httpx decodes compressed bodies, hence content-encoding.
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
                         "content-encoding", "date", "server"})


class ProbeFailed(Exception):
    """A /readyz answer that does not show a live mmpipe server."""


@dataclass
class Backend:
    """One mmpipe server and what the router knows about it."""

    name: str
    url: str
    healthy: bool = False
    reported: float = 0.0  # the utilisation its last /readyz reported (1 after a 429)
    max_queue: int = 1  # its admission limit, from its last /readyz
    in_flight: int = 0  # this router's requests to it that have not been answered yet
    in_flight_at_report: int = 0  # in_flight when ``reported`` was learnt
    requests: int = 0
    failures: int = 0
    failures_in_a_row: int = 0
    successes_in_a_row: int = 0
    last_error: str | None = None

    @property
    def utilisation(self) -> float:
        """The last reported utilisation, corrected for this router's requests since that report:
        ``reported + (in_flight - in_flight_at_report) / max_queue``, at least 0.

        The requests in flight when the backend answered its probe were already in its queue, so
        they are in ``reported``; only the difference is news: each request sent since adds one
        queue slot (a request is counted as one item), each one answered since removes one. So a
        burst spills before the next probe can report it, and the estimate falls back as the
        burst drains. A 429 counts as a report of 1. Other clients' load is known only through
        the probes."""
        return max(0.0, self.reported + (self.in_flight - self.in_flight_at_report) / self.max_queue)

    def view(self) -> dict:
        return {"name": self.name, "url": self.url, "healthy": self.healthy,
                "utilisation": round(self.utilisation, 4), "reported_utilisation": self.reported,
                "in_flight": self.in_flight, "requests": self.requests, "failures": self.failures,
                "failures_in_a_row": self.failures_in_a_row, "last_error": self.last_error}


class Router:
    """The backends' health and load, and the choice and proxying of each request."""

    def __init__(self, config: RouteConfig):
        self.cfg = config
        self.backends = [Backend(b.name, b.url) for b in config.backends]
        # No pool limit: admission control is the backends' job (their 429s), and a request
        # waiting for a pooled connection would read as a backend failure.
        self.client = httpx.AsyncClient(trust_env=False, limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=100))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Probing in the background while the app serves, after one round up front."""
        async with self.client:
            await self.probe_all()
            task = asyncio.create_task(self._probe_forever())
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.probe_interval_s)
            await self.probe_all()

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(b) for b in self.backends))

    async def probe(self, backend: Backend) -> None:
        try:
            answer = await self.client.get(f"{backend.url}/readyz", timeout=self.cfg.probe_timeout_s)
            utilisation, backend.max_queue = _readiness(answer)
        except (httpx.HTTPError, ProbeFailed) as exc:
            self._failed(backend, f"/readyz: {_describe(exc)}")
            return
        backend.reported, backend.in_flight_at_report = utilisation, backend.in_flight
        backend.failures_in_a_row = 0
        backend.successes_in_a_row += 1
        if not backend.healthy and backend.successes_in_a_row >= self.cfg.readmit_after_successes:
            backend.healthy = True
            log.warning("backend %s in rotation", backend.name)

    def _failed(self, backend: Backend, reason: str) -> None:
        # Only probes re-admit: a late success of a request sent before an ejection proves little.
        backend.failures += 1
        backend.failures_in_a_row += 1
        backend.successes_in_a_row = 0
        backend.last_error = reason
        if backend.healthy and backend.failures_in_a_row >= self.cfg.eject_after_failures:
            backend.healthy = False
            log.warning("backend %s out of rotation after %d failures in a row (last: %s)",
                        backend.name, backend.failures_in_a_row, reason)

    def candidates(self) -> list[Backend]:
        """Healthy backends in the order to try them: those below the spill threshold by
        preference, then the busy ones, least utilised first (busy is not full: they may still
        take the request, and a 429 moves it on)."""
        healthy = [b for b in self.backends if b.healthy]
        below = [b for b in healthy if b.utilisation < self.cfg.spill_utilisation]
        busy = sorted((b for b in healthy if b not in below), key=lambda b: b.utilisation)
        return below + busy

    async def forward(self, method: str, path: str, body: bytes, headers: dict) -> Response:
        """The first acceptable answer among the candidates; RequestError when there is none."""
        deadline = time.monotonic() + self.cfg.request_timeout_s
        retry_afters: list[str] = []
        problems: list[str] = []
        for backend in self.candidates():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                answer = await self._send(backend, method, path, body, headers, left)
            except httpx.HTTPError as exc:
                self._failed(backend, f"{path}: {_describe(exc)}")
                problems.append(f"{backend.name}: {_describe(exc)}")
                continue
            if answer.status_code == 429:
                # Full, by its own account: passed over until a probe says it has room again.
                backend.reported, backend.in_flight_at_report = 1.0, backend.in_flight
                retry_afters.append(answer.headers.get("retry-after", ""))
            elif answer.status_code >= 500:
                self._failed(backend, f"{path}: HTTP {answer.status_code}")
            else:
                return _relay(backend, answer)
            problems.append(f"{backend.name}: HTTP {answer.status_code}")
        raise self._no_answer(deadline, retry_afters, problems)

    async def _send(self, backend: Backend, method: str, path: str, body: bytes, headers: dict,
                    left: float) -> httpx.Response:
        backend.in_flight += 1
        backend.requests += 1
        try:
            return await self.client.request(
                method, backend.url + path, content=body, headers=headers,
                timeout=httpx.Timeout(left, connect=min(left, self.cfg.probe_timeout_s)))
        finally:
            backend.in_flight -= 1

    def _no_answer(self, deadline: float, retry_afters: list[str], problems: list[str]) -> RequestError:
        tried = "; ".join(problems)
        if time.monotonic() >= deadline:
            return RequestError(f"no backend answered within {self.cfg.request_timeout_s} s ({tried})",
                                status=504, code="timeout")
        if retry_afters:
            # The soonest any backend expects to have room.
            wait = min((int(s) for s in retry_afters if s.isdigit()), default=1)
            return RequestError(f"every backend is busy ({tried}); retry later", status=429,
                                code="overloaded", headers={"Retry-After": str(wait)})
        if problems:
            return RequestError(f"every backend failed ({tried})", status=503, code="no_backend")
        return RequestError("no healthy backend: see /routes", status=503, code="no_backend")


def _readiness(answer: httpx.Response) -> tuple[float, int]:
    """(utilisation, max_queue) from a /readyz answer. A server that is ready or overloaded is up
    (an overloaded one is spilled past, not ejected); anything else, "loading" included, fails."""
    try:
        body = answer.json()
        status, utilisation, max_queue = body["status"], float(body["utilisation"]), int(body["max_queue"])
    except (ValueError, KeyError, TypeError):
        raise ProbeFailed(f"HTTP {answer.status_code} without an mmpipe readiness body") from None
    if status not in ("ready", "overloaded") or max_queue < 1:
        raise ProbeFailed(f"HTTP {answer.status_code} {status}")
    return utilisation, max_queue


def _describe(exc: Exception) -> str:
    # httpx's timeouts often carry no message; the class name is then the whole story.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _relay(backend: Backend, answer: httpx.Response) -> Response:
    headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
    return Response(answer.content, status_code=answer.status_code,
                    headers={**headers, BACKEND_HEADER: backend.name})


async def _body(request: Request, max_bytes: int) -> bytes:
    # Buffered, not streamed: a retry on another backend sends it again.
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise RequestError(f"body exceeds the {max_bytes}-byte limit", status=413,
                               code="body_too_large")
    return bytes(raw)


def create_router_app(config: RouteConfig) -> FastAPI:
    """The router's FastAPI app; its lifespan runs the shared client and the probes."""
    router = Router(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with router.running():
            yield

    app = FastAPI(title="mmpipe router", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.router = router

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, exc: RequestError):
        return error_response(exc)

    answer_bugs_in_openai_shape(app)

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        healthy = [b.name for b in router.backends if b.healthy]
        if not healthy:
            return JSONResponse({"status": "no_backend", "healthy": []}, status_code=503)
        return {"status": "ready", "healthy": healthy}

    @app.get("/routes")
    async def routes():
        return {"spill_utilisation": config.spill_utilisation,
                "backends": [b.view() for b in router.backends]}

    async def proxy(request: Request) -> Response:
        body = await _body(request, config.max_body_bytes)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        return await router.forward(request.method, request.url.path, body, headers)

    for method, path in PROXIED:
        app.add_api_route(path, proxy, methods=[method])
    return app
