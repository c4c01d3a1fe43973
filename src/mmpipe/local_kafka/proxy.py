"""A TCP proxy on 127.0.0.1 that can play a network outage: ``go_down`` resets every connection
and every new one until ``come_up``, while keeping the listening port (clients retry the same
address, as they would a broker that restarts).

One thread runs a selector over the listener and both ends of every connection; the other
threads' requests reach it through a queue and a wake-up socket, so only that thread ever touches
a socket and ``go_down`` has taken effect when it returns.
"""

from __future__ import annotations

import queue
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

_CHUNK = 65536
_BACKLOG = 1 << 20  # stop reading one end while this much waits to be written to the other


@dataclass(eq=False)
class _End:
    sock: socket.socket
    peer: _End | None = None
    out: bytearray = field(default_factory=bytearray)  # read from the peer, not yet sent here


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN: the other side sees the connection fail at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already dead: closing is all that is left
    sock.close()


class TcpProxy:
    """Forwards each connection to ``127.0.0.1:upstream_port``; listens on ``port`` (0: any)."""

    def __init__(self, upstream_port: int, port: int = 0):
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._requests: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._ends: set[_End] = set()
        self._down = False
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"kafka-proxy:{self.port}", daemon=True)
        self._thread.start()

    def go_down(self) -> None:
        self._call(self._drop_all)

    def come_up(self) -> None:
        self._call(self._accept_again)

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._stop)
            self._thread.join()
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _call(self, request: Callable[[], None]) -> None:
        """Run ``request`` on the proxy's thread and wait until it has."""
        done = threading.Event()
        self._requests.put((request, done))
        self._wake_w.send(b"\0")
        while not done.wait(0.1):
            if not self._thread.is_alive():
                raise RuntimeError("the Kafka proxy's thread has died")

    def _drop_all(self) -> None:
        self._down = True
        for end in list(self._ends):
            self._close(end)

    def _accept_again(self) -> None:
        self._down = False

    def _stop(self) -> None:
        self._drop_all()
        self._running = False

    def _loop(self) -> None:
        while self._running:
            for key, mask in self._selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._serve_requests()
                elif key.data in self._ends:  # not closed earlier in this same round
                    self._pump(key.data, mask)

    def _serve_requests(self) -> None:
        try:
            self._wake_r.recv(_CHUNK)
        except BlockingIOError:
            pass
        while not self._requests.empty():
            request, done = self._requests.get()
            request()
            done.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, ConnectionError):
            return
        if self._down:
            _reset(client)
            return
        try:
            # Loopback: the connect is answered at once, so blocking the loop for it is harmless.
            upstream = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        a, b = _End(client), _End(upstream)
        a.peer, b.peer = b, a
        for end in (a, b):
            end.sock.setblocking(False)
            end.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._ends.add(end)
            self._selector.register(end.sock, selectors.EVENT_READ, end)

    def _pump(self, end: _End, mask: int) -> None:
        peer = end.peer
        assert peer is not None
        try:
            if mask & selectors.EVENT_READ:
                data = end.sock.recv(_CHUNK)
                if not data:
                    self._finish(end)
                    return
                peer.out += data
            for side in (end, peer):
                if side.out:
                    del side.out[:side.sock.send(side.out)]
        except BlockingIOError:
            pass
        except OSError:
            self._close(end)
            return
        for side in (end, peer):
            self._watch(side)

    def _watch(self, end: _End) -> None:
        assert end.peer is not None
        events = 0
        if len(end.peer.out) < _BACKLOG:
            events |= selectors.EVENT_READ
        if end.out:
            events |= selectors.EVENT_WRITE
        if end.sock in self._selector.get_map():
            if events:
                self._selector.modify(end.sock, events, end)
            else:
                self._selector.unregister(end.sock)
        elif events:
            self._selector.register(end.sock, events, end)

    def _finish(self, end: _End) -> None:
        """``end`` has closed its side: pass on what it sent, then close the other side gently
        (a FIN after the data; a reset could discard a broker's last response)."""
        peer = end.peer
        assert peer is not None
        for side in (end, peer):
            self._forget(side)
        try:
            peer.sock.settimeout(1)
            peer.sock.sendall(peer.out)
        except OSError:
            pass  # the other side is gone too
        peer.sock.close()
        end.sock.close()

    def _close(self, end: _End) -> None:
        """Reset both sides of ``end``'s connection."""
        for side in (end, end.peer):
            if side is not None and side in self._ends:
                self._forget(side)
                _reset(side.sock)

    def _forget(self, end: _End) -> None:
        self._ends.discard(end)
        if end.sock in self._selector.get_map():
            self._selector.unregister(end.sock)
