"""A follower's figures, rewritten to stats.json at every commit: throughput, where the time goes
and the end-to-end latency (a file's modification time to the commit of its shard)."""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from ..engine import EngineStats
from ..engine.stats import usd_per_million
from ..sinks import OutputDir
from ..sinks.output_dir import STATS

# Latencies of the most recent items only: the percentiles follow the stream, memory stays flat.
LATENCY_WINDOW = 10_000


class FollowStats:
    def __init__(self, out: OutputDir, engine: EngineStats, price_per_hour: float | None = None):
        self.out, self.engine, self.price_per_hour = out, engine, price_per_hour
        self.started_at = time.time()
        self.clock_start = time.perf_counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.shards = self.rows = self.errors = 0

    def on_commit(self, rows: int, errors: int, arrived: list[float]) -> list[float]:
        """A shard committed; returns each item's latency (seconds), for the metrics' histogram."""
        now = time.time()
        latencies = [now - t for t in arrived]
        self.shards += 1
        self.rows += rows
        self.errors += errors
        self.latencies.extend(latencies)
        self.write()
        return latencies

    def latency_s(self) -> dict[str, float] | None:
        if not self.latencies:
            return None
        values = np.percentile(np.fromiter(self.latencies, float), [50, 95, 99])
        return {f"p{q}": round(float(v), 3) for q, v in zip((50, 95, 99), values)}

    def running_s(self) -> float:
        """Seconds since the models were ready (the engine's setup is not throughput)."""
        return max(time.perf_counter() - self.clock_start - self.engine.setup_s, 0.0)

    def items_per_s(self, running_s: float) -> float:
        return self.rows / running_s if running_s > 0 else 0.0

    def cost(self) -> dict | None:
        """What the items cost at ``price_per_hour``: the whole run (setup and quiet spells
        included, as the machine is paid for them) per million items."""
        paid_s = self.engine.setup_s + self.running_s()
        if not self.price_per_hour or not self.rows or paid_s <= 0:
            return None
        return {"price_per_hour": self.price_per_hour,
                "usd_per_million_items": usd_per_million(self.price_per_hour, self.rows / paid_s)}

    def to_dict(self) -> dict:
        running = self.running_s()
        return {**(self.cost() or {}),
                "follow": True, "started_at": self.started_at, "updated_at": time.time(),
                "setup_s": round(self.engine.setup_s, 3), "running_s": round(running, 3),
                "shards": self.shards, "items": self.rows, "errors": self.errors,
                "items_per_s": round(self.items_per_s(running), 3),
                "latency_s": self.latency_s(), "latency_window": len(self.latencies),
                "stages": [{"name": s.name, "items": s.items, "busy_share": round(s.busy_share(running), 4)}
                           for s in self.engine.stages]}

    def write(self) -> None:
        self.out.write_json(STATS, self.to_dict())
