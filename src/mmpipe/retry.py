"""Retry arithmetic shared by mmpipe's HTTP clients: which answers to retry and how long to wait.

The judge client and ``mmpipe.client`` both retry busy or broken servers; they back off the same way
(exponential with full jitter) and read Retry-After the same way, from here.
"""

from __future__ import annotations

import math
import random
import time
from datetime import timezone
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_EXPONENT = 62  # 2**retries beyond this would only overflow; every sane cap is far smaller


def retry_after_seconds(header: str | None, now: float | None = None) -> float | None:
    """The wait a Retry-After header asks for (delay-seconds or an HTTP-date), None when absent or unreadable.

    ``now`` is the Unix time an HTTP-date is measured from; the current time by default.
    """
    if not header or not header.strip():
        return None
    try:
        seconds = float(header)
    except ValueError:
        return _seconds_until(header, time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _seconds_until(http_date: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT even when they fail to say so
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


def backoff_delay(retries: int, base_s: float, max_s: float, at_least_s: float = 0.0) -> float:
    """Seconds to wait before retry number ``retries + 1``: uniform(0, min(max_s, base_s * 2**retries)).

    Full jitter spreads the retries of many callers hit by the same outage; ``at_least_s`` (a
    server's Retry-After) wins when it is longer.
    """
    ceiling = min(max_s, base_s * 2.0 ** min(retries, MAX_EXPONENT))
    return max(random.uniform(0.0, ceiling), at_least_s)
