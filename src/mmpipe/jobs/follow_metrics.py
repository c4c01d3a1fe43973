"""A follower's figures as Prometheus metrics, served on ``--metrics-port`` while it runs.

The numbers stats.json has are read from FollowStats when Prometheus scrapes (one source of
truth), and so is the source's lag. What stats.json cannot give is kept here: a latency histogram
(stats.json has percentiles of a window) and errors by kind. Both count rows of committed shards,
as ``mmpipe_follow_items_total`` does: the errors' kinds wait here, by item id, until their shard
commits (a row dropped uncommitted, as a Kafka follower does for a partition taken from it, is
never counted).
"""

from __future__ import annotations

import socket
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..errors import ConfigError
from ..records import Record
from ..sources.follow import FollowSource
from .follow_stats import FollowStats
from .runner import reason_kind

# All interfaces, as exporters do: Prometheus scrapes from another host, or through a container's
# published port, which a 127.0.0.1 listener does not answer. Safe by default as it is off unless
# --metrics-port is given, and it shows counts and timings only, no item names or contents.
ADDRESS = "0.0.0.0"
FLAG = "--metrics-port"
# Arrival (a file's modification time, a message's timestamp) to commit: settling, the pipeline
# and the shard's --shard-seconds, so seconds to minutes; items that waited for a restart land in
# the top buckets.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
# Distinct error kinds with a label of their own; later ones count as "other". A kind is an error
# message's first two parts, which can hold a detail (a row number): the series stay bounded.
MAX_KINDS = 32


class FollowMetrics(Collector):
    """Its own registry, so that followers in one process (tests) do not mix their counts.
    ``on_results`` and ``on_commit`` are called under the follower's sink lock; ``collect`` runs
    in the HTTP server's threads."""

    def __init__(self, figures: FollowStats, source: FollowSource):
        self.figures, self.source = figures, source
        self.registry = CollectorRegistry()
        self.latency = Histogram("mmpipe_follow_latency_seconds",
                                 "Each committed item's arrival (a file's modification, a message's timestamp) "
                                 "to its shard's commit",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("mmpipe_follow_errors", "Committed rows with an error, by kind "
                              "(stage: reason)", ["kind"], registry=self.registry)
        self.registry.register(self)
        self.kinds: set[str] = set()
        self.waiting: dict[str, str] = {}  # error rows not yet committed: item id → kind

    def on_results(self, records: Sequence[Record]) -> None:
        """Results going to the sink (before it is given them: adding may commit them at once)."""
        self.waiting.update((r.id, self._kind(r.error)) for r in records if r.error is not None)

    def on_commit(self, ids: Sequence[str], latencies: Sequence[float]) -> None:
        for seconds in latencies:
            self.latency.observe(seconds)
        for kind in filter(None, (self.waiting.pop(i, None) for i in ids)):
            self.errors.labels(kind).inc()

    def forget(self, ids: Sequence[str]) -> None:
        """Rows taken out of the open shard uncommitted (a Kafka partition moved away)."""
        for i in ids:
            self.waiting.pop(i, None)

    def collect(self) -> Iterator:
        figures = self.figures
        running = figures.running_s()
        yield GaugeMetricFamily("mmpipe_follow_lag_messages", "Items waiting for a commit: in flight, "
                                "or seen and not yet read (Kafka: consumer lag)", value=self.source.lag())
        yield CounterMetricFamily("mmpipe_follow_items", "Rows committed (errors included)",
                                  value=figures.rows)
        yield CounterMetricFamily("mmpipe_follow_shards", "Shards committed", value=figures.shards)
        yield GaugeMetricFamily("mmpipe_follow_items_per_second", "Rows committed per second since "
                                "the models were ready", value=figures.items_per_s(running))
        yield GaugeMetricFamily("mmpipe_follow_setup_seconds", "Seconds the engine took to set the "
                                "stages up (models loaded)", value=figures.engine.setup_s)
        busy = GaugeMetricFamily("mmpipe_follow_stage_busy_share", "Share of the running time a "
                                 "stage was working, by stage", labels=["stage"])
        for stage in figures.engine.stages:
            busy.add_metric([stage.name], stage.busy_share(running))
        yield busy

    @contextmanager
    def serve(self, port: int | None) -> Iterator[int | None]:
        """The metrics over HTTP on ``port`` (0: a free one) for the block; yields the port bound,
        or None with no port. The server is closed, its thread joined, however the block ends."""
        if port is None:
            yield None
            return
        try:
            server, thread = start_http_server(port, ADDRESS, self.registry)
        except OSError as exc:
            raise ConfigError(FLAG, f"cannot listen on port {port}: {exc.strerror or exc}") from None
        try:
            bound = server.server_port
            print(f"mmpipe: Prometheus metrics on http://{ADDRESS}:{bound}/metrics", file=sys.stderr,
                  flush=True)
            yield bound
        finally:
            server.shutdown()
            server.server_close()
            thread.join()

    def _kind(self, error: str) -> str:
        kind = reason_kind(error)
        if kind not in self.kinds and len(self.kinds) >= MAX_KINDS:
            return "other"
        self.kinds.add(kind)
        return kind


def check_port_free(port: int) -> None:
    """Refuse a port another process listens on now, before the models load (the server's own
    bind, later, is the final word)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
    try:
        probe.bind((ADDRESS, port))
    except OSError as exc:
        raise ConfigError(FLAG, f"cannot listen on port {port}: {exc.strerror or exc}") from None
    finally:
        probe.close()
