"""What an engine measured while running: throughput and where the time went."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


def usd_per_million(price_per_hour: float, items_per_s: float) -> float:
    """What a million items cost at ``items_per_s`` on a machine of ``price_per_hour`` USD."""
    return round(price_per_hour / 3600 / items_per_s * 1e6, 6)


@dataclass
class StageStats:
    name: str
    concurrency: int
    items: int = 0
    batches: int = 0
    busy_s: float = 0.0
    # Each batch's time in the stage's function, for latency percentiles (the local engine's).
    batch_s: list[float] = field(default_factory=list, repr=False)

    def batch_ms(self, q: float) -> float | None:
        """The ``q``-th percentile of the time one batch took, in ms; None when not measured."""
        return round(float(np.percentile(self.batch_s, q)) * 1000, 3) if self.batch_s else None

    def busy_share(self, wall_s: float) -> float:
        """Fraction of the stage's worker-time spent working rather than waiting."""
        return self.busy_s / (wall_s * self.concurrency) if wall_s > 0 else 0.0


@dataclass
class EngineStats:
    wall_s: float = 0.0  # from the end of setup (model loading) to the last record
    setup_s: float = 0.0
    # CPU seconds of the engine's own process (the one that feeds the models; worker processes
    # not included) over ``wall_s``: per item, it bounds how many items/s one process can feed.
    cpu_s: float = 0.0
    items: int = 0
    stages: list[StageStats] = field(default_factory=list)

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_item(self) -> float:
        return 1000 * self.cpu_s / self.items if self.items else 0.0

    @property
    def bottleneck(self) -> str | None:
        """The stage whose workers were busiest: adding workers there is what would help."""
        if not self.stages:
            return None
        return max(self.stages, key=lambda s: s.busy_share(self.wall_s)).name

    def busy_summary(self) -> str:
        """"read 0%, decode 8%, embed 100%": where the time went, in one line."""
        return ", ".join(f"{s.name} {s.busy_share(self.wall_s):.0%}" for s in self.stages)

    def to_dict(self) -> dict:
        return {
            "wall_s": round(self.wall_s, 3),
            "setup_s": round(self.setup_s, 3),
            "items": self.items,
            "items_per_s": round(self.items_per_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "cpu_ms_per_item": round(self.cpu_ms_per_item, 4),
            "bottleneck": self.bottleneck,
            "stages": [
                {**{k: v for k, v in asdict(s).items() if k != "batch_s"}, "busy_s": round(s.busy_s, 3),
                 "busy_share": round(s.busy_share(self.wall_s), 4),
                 "batch_p50_ms": s.batch_ms(50), "batch_p99_ms": s.batch_ms(99)}
                for s in self.stages
            ],
        }
