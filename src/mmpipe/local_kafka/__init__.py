"""A real Kafka-protocol broker on 127.0.0.1, for tests, benchmarks and trying ``--follow
kafka://`` without installing Kafka.

No registry ships a Kafka broker, but confluent-kafka bundles librdkafka, whose mock cluster is a
real implementation of the protocol: producers, consumers, consumer groups with rebalances and
committed offsets all work across processes, as against a real broker. ``LocalKafka`` starts one
(a single broker) inside this process.

With ``proxy=True`` clients reach the broker through a TCP proxy that can play an outage. The
broker is made to advertise the proxy's address, because clients connect to the address that
metadata responses name, not to the one they bootstrapped from: without that they would bypass
the proxy after their first request.

Where the mock is not a real broker: topics a client names before ``create_topic`` get 4
partitions whatever ``partitions`` says; each partition keeps only its last 5 MiB (and 100,000
batches), dropping older messages as a small retention.bytes would; and after a group's member
leaves, the next join waits the group's session.timeout.ms less 1 s (44 s by default) even when
no member is left (a real broker empties the group at once), so consumers in tests want a short
session.timeout.ms.
"""

from __future__ import annotations

from types import TracebackType

from .librdkafka import MockCluster
from .proxy import TcpProxy

__all__ = ["LocalKafka"]


class LocalKafka:
    """A one-broker Kafka on 127.0.0.1; clients use ``bootstrap`` ("127.0.0.1:PORT").

    ``rebalance_delay_ms`` is the broker's group.initial.rebalance.delay.ms: real brokers wait 3 s
    for more members before a new group's first assignment; 0 (the default here) assigns at once,
    so a test's consumer gets its partitions without that wait. ``port`` fixes the proxy's port.
    """

    def __init__(self, partitions: int = 4, proxy: bool = False, rebalance_delay_ms: int = 0,
                 port: int = 0):
        if port and not proxy:
            raise ValueError("a fixed port is the proxy's: pass proxy=True with port")
        self.partitions = partitions
        self._cluster = MockCluster(rebalance_delay_ms)
        self._proxy: TcpProxy | None = None
        if proxy:
            try:
                self._proxy = TcpProxy(int(self._cluster.listener.rpartition(":")[2]), port)
            except BaseException:
                self._cluster.destroy()
                raise
            self._cluster.advertise("127.0.0.1", self._proxy.port)
        self.bootstrap = self._cluster.listener if self._proxy is None else f"127.0.0.1:{self._proxy.port}"

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        """Create ``name`` with ``partitions`` (default: the constructor's); ValueError if it exists."""
        self._cluster.create_topic(name, self.partitions if partitions is None else partitions)

    def go_down(self) -> None:
        """Reset every client connection, and every new one until ``come_up`` (proxy only)."""
        self._need_proxy().go_down()

    def come_up(self) -> None:
        """Accept and forward connections again (proxy only)."""
        self._need_proxy().come_up()

    def close(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
        self._cluster.destroy()

    def __enter__(self) -> LocalKafka:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _need_proxy(self) -> TcpProxy:
        if self._proxy is None:
            raise RuntimeError("an outage needs the proxy: LocalKafka(proxy=True)")
        return self._proxy
