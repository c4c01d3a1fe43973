"""Prometheus metrics of one server. Each app gets its own registry, so that several servers in
one process (tests, a router beside its backends) do not mix their counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("mmpipe_request_seconds", "Request latency, by route and status",
                                 ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("mmpipe_queue_depth", "Items admitted and not yet answered",
                                 ["model"], registry=r)
        self.batch_size = Histogram("mmpipe_batch_size", "Items per model batch (padding excluded)",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.padded = Counter("mmpipe_padded_items", "Padding items added to reach a shape bucket",
                              ["model"], registry=r)
        self.tokens = Counter("mmpipe_batch_tokens", "Tokens of the texts in model batches (kind "
                              "text) and pad tokens bringing each to its batch's longest (padding)",
                              ["model", "kind"], registry=r)
        self.estimated_wait = Gauge("mmpipe_estimated_wait_seconds",
                                    "Estimated wait of a new one-item request (batches ahead and "
                                    "its own), what the delay budget is compared with",
                                    ["model"], registry=r)
        self.busy = Gauge("mmpipe_replica_busy", "1 while the replica runs a batch",
                          ["model", "replica"], registry=r)
        self.errors = Counter("mmpipe_errors", "Requests answered with an error, by reason",
                              ["reason"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
