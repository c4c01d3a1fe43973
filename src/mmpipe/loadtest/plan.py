"""A load test's settings, checked, with its request bodies encoded once: rates, payloads, the
endpoint's URL."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..sample_data import SOURCES
from ..sample_moderation import COMMENTS

ENDPOINTS = ("moderations", "embeddings")

Payload = str | dict[str, Any]  # a text, or a whole request body sent as it is


@dataclass(frozen=True)
class Plan:
    """A run's validated settings, with the bodies encoded once."""

    url: str
    endpoint: str
    bodies: list[bytes]
    rate: float
    duration_s: float
    warmup_s: float
    timeout_s: float
    seed: int
    batch: int
    connections: int


def parse_rates(text: str) -> list[float]:
    """``"5,10,20"`` → ``[5.0, 10.0, 20.0]``; anything else is a ConfigError naming ``--sweep``."""
    try:
        rates = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError("--sweep", f"expected comma-separated rates like 5,10,20, got {text!r}") from None
    for rate in rates:
        check_rate("--sweep", rate)
    return rates


def default_payloads(endpoint: str) -> list[str]:
    """Short varied texts: comments, clean and offensive, for moderations; captions for embeddings."""
    _check_endpoint(endpoint)
    return list(COMMENTS) if endpoint == "moderations" else [s.caption for s in SOURCES]


def load_payloads(path: str | Path) -> list[Payload]:
    """Payloads from a file: a ``.jsonl`` file holds one request body (a JSON object with
    ``input``) per line, any other file one text per line. Blank lines are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--input-file", f"cannot read {path}: {exc}") from None
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise ConfigError("--input-file", f"{path} has no payloads")
    if path.suffix.lower() != ".jsonl":
        return [line for _, line in numbered]
    return [_body_line(path, n, line) for n, line in numbered]


def make_plan(url: str, endpoint: str, rate: float, duration_s: float, payloads: Sequence[Payload] | None,
          model: str | None, batch: int, timeout_s: float, warmup_s: float, seed: int,
          connections: int) -> Plan:
    _check_endpoint(endpoint)
    check_rate("--rate", rate)
    for flag, seconds in (("--duration", duration_s), ("--timeout", timeout_s)):
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(flag, f"must be > 0 seconds, got {seconds!r}")
    if not (math.isfinite(warmup_s) and warmup_s >= 0):
        raise ConfigError("--warmup", f"must be >= 0 seconds, got {warmup_s!r}")
    for flag, count in (("--batch", batch), ("--connections", connections)):
        if count < 1:
            raise ConfigError(flag, f"must be at least 1, got {count!r}")
    payloads = default_payloads(endpoint) if payloads is None else list(payloads)
    return Plan(_endpoint_url(url, endpoint), endpoint, _bodies(payloads, batch, model), float(rate),
                 float(duration_s), float(warmup_s), float(timeout_s), seed, batch, connections)


def _check_endpoint(endpoint: str) -> None:
    if endpoint not in ENDPOINTS:
        raise ConfigError("--endpoint", f"expected one of {', '.join(ENDPOINTS)}, got {endpoint!r}")


def check_rate(flag: str, rate: float) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError(flag, f"rates must be > 0 requests/s, got {rate!r}")


def _endpoint_url(url: str, endpoint: str) -> str:
    """The endpoint's URL from a base URL, with or without ``/v1`` (or the endpoint itself)."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port != 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError("URL", f"expected http(s)://HOST[:PORT], got {url!r}")
    base = url.rstrip("/")
    for suffix in (f"/v1/{endpoint}", "/v1"):
        base = base.removesuffix(suffix)
    return f"{base}/v1/{endpoint}"


def _bodies(payloads: list[Payload], batch: int, model: str | None) -> list[bytes]:
    """One encoded body per payload: request i takes texts i·batch … i·batch+batch-1 (cycling),
    so every text is sent and consecutive requests differ."""
    if not payloads:
        raise ConfigError("payloads", "no payloads given")
    if batch > 1 and not all(isinstance(p, str) for p in payloads):
        raise ConfigError("--batch", "applies to texts; request bodies are sent as they are")
    extra = {"model": model} if model else {}
    if batch == 1:
        bodies = [p if isinstance(p, dict) else {"input": p} for p in payloads]
    else:
        n = len(payloads)
        bodies = [{"input": [payloads[(i * batch + k) % n] for k in range(batch)]} for i in range(n)]
    return [json.dumps({**body, **extra}).encode() for body in bodies]


def _body_line(path: Path, n: int, line: str) -> dict[str, Any]:
    try:
        body = json.loads(line)
    except ValueError as exc:
        raise ConfigError("--input-file", f"{path.name} line {n}: invalid JSON ({exc})") from None
    if not isinstance(body, dict) or "input" not in body:
        raise ConfigError("--input-file", f"{path.name} line {n}: expected a JSON object with \"input\"")
    return body
