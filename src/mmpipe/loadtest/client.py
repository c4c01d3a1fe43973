"""The load tester's HTTP/1.1 client: a pool of keep-alive connections, one request in flight on
each, requests written as prebuilt bytes and answers parsed (httptools) in the connections'
protocol callbacks. No task, stream, timer or response object per request.

Why not aiohttp: the generator shares the machine with the server it measures. Against a server
that refuses everything, aiohttp's client cost about three times the CPU per request that this
one does, taken from the server and added to the sending lag in every latency.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools


class Shot:
    """One request: its bytes, when it was due, and (once settled) its fate."""

    __slots__ = ("raw", "scheduled", "deadline", "status", "ended", "error", "conn")

    def __init__(self, raw: bytes, scheduled: float, deadline: float):
        self.raw, self.scheduled, self.deadline = raw, scheduled, deadline
        self.status: str | None = None  # the HTTP status, "timeout" or "connection_error"
        self.ended = 0.0  # the loop's clock when settled
        self.error = ""  # why a connection failed
        self.conn: _Connection | None = None  # the connection it was written to


def request_bytes(url: str, method: str = "POST", body: bytes = b"") -> bytes:
    """An HTTP/1.1 request for ``url`` as it goes on the wire (a JSON body, if any)."""
    parts = urlsplit(url)
    head = [f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {parts.netloc}", "User-Agent: mmpipe-loadtest", f"Content-Length: {len(body)}"]
    if body:
        head.append("Content-Type: application/json")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool):
        self.pool, self.transport, self.shot = pool, None, None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.pool._opened(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.pool._drop(self, "connection_error", f"unparseable answer: {exc}")

    def on_message_complete(self) -> None:  # httptools' callback: a whole answer was read
        shot, self.shot = self.shot, None
        if shot is not None:
            self.pool._answered(self, shot, str(self.parser.get_status_code()),
                                self.parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._lost(self, f"connection closed: {exc or 'by the server'}")


class Pool:
    """Sends shots to ``url``'s server over at most ``limit`` connections; a shot waits for a
    free connection (in order) and settles by its answer, a failed connection or its deadline.
    Counts what it sent, what settled and how many got a 200."""

    def __init__(self, url: str, limit: int):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.limit = limit
        self.loop = asyncio.get_running_loop()
        self.sent = self.finished = self.ok = 0
        self.drained: asyncio.Future | None = None
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self.waiting: deque[Shot] = deque()
        self.connecting = 0
        self.connects: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        # Every shot in send order: deadlines come in the same order, so one timer at the oldest
        # unsettled deadline serves them all.
        self.unsettled: deque[Shot] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def send(self, shot: Shot) -> None:
        self.sent += 1
        self.unsettled.append(shot)
        if self.timer is None:
            self.timer = self.loop.call_at(shot.deadline, self._expire)
        if self.idle:
            self._write(self.idle.pop(), shot)
        else:
            self.waiting.append(shot)
            self._connect_more()

    async def settle_all(self) -> None:
        """Returns once every shot sent so far has settled."""
        if self.finished < self.sent:
            self.drained = self.loop.create_future()
            await self.drained

    def close(self) -> None:
        # A connection still being made (a TLS handshake a server never answers) would otherwise
        # open after the pool closed, and stay open.
        for task in self.connects:
            task.cancel()
        for conn in [*self.idle, *self.busy]:
            conn.transport.close()
        if self.timer is not None:
            self.timer.cancel()

    def _connect_more(self) -> None:
        """One connection attempt for each waiting shot that none is on its way for."""
        while (self.connecting < len(self.waiting)
               and len(self.idle) + len(self.busy) + self.connecting < self.limit):
            self.connecting += 1
            task = self.loop.create_task(self._connect())
            self.connects.add(task)
            task.add_done_callback(self.connects.discard)

    async def _connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self.tls)
        except OSError as exc:
            self.connecting -= 1
            if self.waiting:
                self._settle(self.waiting.popleft(), "connection_error", str(exc) or type(exc).__name__)

    def _write(self, conn: _Connection, shot: Shot) -> None:
        conn.shot, shot.conn = shot, conn
        self.busy.add(conn)
        conn.transport.write(shot.raw)

    def _opened(self, conn: _Connection) -> None:
        self.connecting -= 1
        self._free(conn)

    def _free(self, conn: _Connection) -> None:
        self.busy.discard(conn)
        if self.waiting:
            self._write(conn, self.waiting.popleft())
        else:
            self.idle.append(conn)

    def _answered(self, conn: _Connection, shot: Shot, status: str, keep_alive: bool) -> None:
        self._settle(shot, status)
        if keep_alive:
            self._free(conn)
        else:
            self.busy.discard(conn)
            conn.transport.close()

    def _drop(self, conn: _Connection, status: str, why: str = "") -> None:
        """Settles the connection's shot (if any) as ``status`` and aborts the connection."""
        shot, conn.shot = conn.shot, None
        if shot is not None:
            self._settle(shot, status, why)
        self.busy.discard(conn)
        conn.transport.abort()

    def _lost(self, conn: _Connection, why: str) -> None:
        shot, conn.shot = conn.shot, None
        if shot is not None:
            self._settle(shot, "connection_error", why)
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._connect_more()

    def _settle(self, shot: Shot, status: str, error: str = "") -> None:
        if shot.status is None:
            shot.status, shot.ended, shot.error = status, self.loop.time(), error
            self.finished += 1
            self.ok += status == "200"
            if self.finished == self.sent and self.drained is not None and not self.drained.done():
                self.drained.set_result(None)

    def _expire(self) -> None:
        """Settles every shot past its deadline as a timeout (dropping its connection: the
        answer may still come, and must not be read as the next request's)."""
        self.timer = None
        now = self.loop.time()
        while self.unsettled and (self.unsettled[0].status is not None or self.unsettled[0].deadline <= now):
            shot = self.unsettled.popleft()
            if shot.status is not None:
                continue
            if shot.conn is None:
                self.waiting.remove(shot)
                self._settle(shot, "timeout")
            else:
                self._drop(shot.conn, "timeout")
        if self.unsettled:
            self.timer = self.loop.call_at(self.unsettled[0].deadline, self._expire)
