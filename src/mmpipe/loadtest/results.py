"""What one load test measured: latency percentiles and the run's counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# A p90 sending lag above this: the client machine could not keep up, and its own delay is in the
# latencies. (p90, not p99: a scheduler hiccup on a busy machine delays a few requests, not 10 %.)
BEHIND_MS = 10.0


@dataclass(frozen=True)
class Latency:
    """Percentiles of a set of latencies in milliseconds; None where the set is empty."""

    count: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        if not seconds:
            return cls(0, None, None, None, None)
        ms = np.asarray(seconds) * 1000
        p50, p90, p99 = (round(float(v), 3) for v in np.percentile(ms, [50, 90, 99]))
        return cls(len(ms), p50, p90, p99, round(float(ms.max()), 3))


@dataclass(frozen=True)
class LoadResult:
    """One load test at one offered rate. Only requests scheduled after the warm-up count."""

    url: str  # the endpoint's full URL
    endpoint: str
    offered_rate: float  # requests/s scheduled
    duration_s: float  # the measured arrival window
    warmup_s: float
    batch: int  # texts per request (1 for bodies sent as they are)
    seed: int
    timeout_s: float
    sent: int  # requests scheduled in the window; every one was sent
    completed: int  # answered with an HTTP status, whichever
    throughput: float  # 200 answers/s from the window's start to the last of them (at least the window)
    statuses: dict[str, int]  # "200", "429", …, "timeout", "connection_error"; they sum to `sent`
    non_200_share: float  # of `sent`, client-side failures included
    ok_latency: Latency  # 200 answers
    answered_latency: Latency  # every HTTP answer, errors included
    lag_p90_ms: float  # how late the sender started requests, against their schedule
    lag_p99_ms: float
    lag_max_ms: float
    client_behind: bool  # lag_p90_ms > BEHIND_MS: the client could not keep up with the rate
    elapsed_s: float  # wall time of the run: warm-up, window and the wait for the last answers
