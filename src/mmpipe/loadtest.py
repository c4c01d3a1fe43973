"""Open-loop load tests of an OpenAI-style server (``mmpipe serve``, ``mmpipe route`` or any other
that answers ``POST /v1/moderations`` or ``POST /v1/embeddings``).

Requests arrive as a Poisson process at the offered rate: exponential gaps drawn from a seeded RNG,
each request sent at its scheduled time whether or not earlier ones have been answered. A tester
that waits for an answer before sending more slows down with the server and so never sees the
queue a real population of users builds up ("coordinated omission"); here a slow server only makes
requests pile up. Latency counts from the *scheduled* send time, so a client that falls behind
cannot hide the delay either; how far behind it fell is measured (``lag_p90_ms`` …) and flagged
(``client_behind``) because then the numbers describe the client as much as the server.

    results = run_sweep("http://127.0.0.1:8000", "moderations", [5, 10, 20], duration_s=10)
    write_json(results, "loadtest.json")
    plot(results, "loadtest.png")
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import random
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import ConfigError
from .sample_data import SOURCES
from .sample_moderation import COMMENTS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

ENDPOINTS = ("moderations", "embeddings")
# A p90 sending lag above this: the client machine could not keep up, and its own delay is in the
# latencies. (p90, not p99: a scheduler hiccup on a busy machine delays a few requests, not 10 %.)
BEHIND_MS = 10.0
CONNECT_CHECK_S = 5.0
_PROGRESS_EVERY_S = 0.2
_HEADERS = {"Content-Type": "application/json"}

Payload = str | dict[str, Any]  # a text, or a whole request body sent as it is


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


@dataclass(frozen=True)
class _Plan:
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


@dataclass(frozen=True)
class _Shot:
    """One request's fate; times are the event loop's clock."""

    scheduled: float
    lag_s: float  # how late the sender started it
    status: str  # the HTTP status, "timeout" or "connection_error"
    latency_s: float  # from `scheduled` to the answer or the failure

    @property
    def answered(self) -> bool:
        return self.status.isdigit()


@dataclass
class _Tally:
    """Running counts for the progress bar."""

    sent: int = 0
    finished: int = 0
    ok: int = 0


def run_load(url: str, endpoint: str, rate: float, duration_s: float, *,
             payloads: Sequence[Payload] | None = None, model: str | None = None, batch: int = 1,
             timeout_s: float = 30.0, warmup_s: float = 0.0, seed: int = 0, connections: int = 1024,
             progress: bool | None = None) -> LoadResult:
    """Offer ``rate`` requests/s to ``url``'s ``endpoint`` for ``duration_s`` seconds (after
    ``warmup_s`` seconds of unmeasured load) and wait for every answer, each up to ``timeout_s``
    from its scheduled time.

    ``url`` is the server's base URL (``…/v1`` is accepted too). ``payloads`` cycle in order: a
    string is a text (``batch`` of them per request), a dict a whole body; the default is
    ``default_payloads(endpoint)``. ``model``, when given, is set in every body. ``connections``
    caps the client's connection pool; requests beyond it wait for a connection, and that wait is
    in their latency. ``progress`` draws a bar on stderr (default: on a terminal).

    Before the first request one GET goes to the endpoint (any answer will do), and the objects
    that exist before the run are kept out of the garbage collector until it ends. Raises
    ``ConfigError`` for a bad argument and for a server that does not accept connections.
    """
    plan = _plan(url, endpoint, rate, duration_s, payloads, model, batch, timeout_s, warmup_s, seed,
                 connections)
    with _frozen_heap():
        return asyncio.run(_load(plan, _Bar(plan, progress)))


def run_sweep(url: str, endpoint: str, rates: Sequence[float], duration_s: float, *,
              payloads: Sequence[Payload] | None = None, model: str | None = None, batch: int = 1,
              timeout_s: float = 30.0, warmup_s: float = 0.0, seed: int = 0, connections: int = 1024,
              progress: bool | None = None) -> list[LoadResult]:
    """``run_load`` at each rate in turn (same seed, so the same arrival pattern scaled); every
    rate is checked before the first one runs."""
    if not rates:
        raise ConfigError("--sweep", "no rates given")
    for rate in rates:
        _check_rate("--rate", rate)
    return [run_load(url, endpoint, rate, duration_s, payloads=payloads, model=model, batch=batch,
                     timeout_s=timeout_s, warmup_s=warmup_s, seed=seed, connections=connections,
                     progress=progress)
            for rate in rates]


def parse_rates(text: str) -> list[float]:
    """``"5,10,20"`` → ``[5.0, 10.0, 20.0]``; anything else is a ConfigError naming ``--sweep``."""
    try:
        rates = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError("--sweep", f"expected comma-separated rates like 5,10,20, got {text!r}") from None
    for rate in rates:
        _check_rate("--sweep", rate)
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


def write_json(results: Sequence[LoadResult], path: str | Path) -> Path:
    """``{"results": [LoadResult as a dict, …]}``, indented; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": [asdict(r) for r in results]}, indent=2) + "\n")
    return path


def plot(results: Sequence[LoadResult], path: str | Path) -> Path:
    """A PNG of latency (p50/p90/p99 of 200 answers) and achieved throughput against offered
    load, above the share of non-200 answers by kind; returns the path."""
    # The figure's own Agg canvas, not pyplot: no global backend switch, no GUI, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("no results to plot")
    runs = sorted(results, key=lambda r: r.offered_rate)
    fig = Figure(figsize=(9.5, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    _plot_latency(top, runs)
    _plot_errors(bottom, runs)
    behind = [f"{r.offered_rate:g}" for r in runs if r.client_behind]
    fig.suptitle(f"{runs[0].endpoint} load test: {runs[0].url}"
                 + (f"\nthe client fell behind at {', '.join(behind)} req/s" if behind else ""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def summary_table(results: Sequence[LoadResult]) -> Table:
    """One row per rate: throughput, latency of 200 answers, sending lag, status counts."""
    title = f"{results[0].endpoint} load test: {results[0].url}" if results else None
    table = Table(title=title, caption="rate: offered requests/s; latency of 200 answers and lag in ms",
                  box=box.SIMPLE_HEAD, collapse_padding=True, show_edge=False)
    for name in ("rate", "sent", "200/s", "p50", "p90", "p99", "max", "non-200", "lag p99"):
        table.add_column(name, justify="right")
    table.add_column("statuses")
    for r in results:
        lat, lag = r.ok_latency, _ms(r.lag_p99_ms)
        table.add_row(f"{r.offered_rate:g}", str(r.sent), f"{r.throughput:.1f}",
                      *(_ms(v) for v in (lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.max_ms)),
                      f"{r.non_200_share:.1%}", f"[red]{lag}[/]" if r.client_behind else lag,
                      ", ".join(f"{k}: {v}" for k, v in r.statuses.items()))
    return table


def problems(results: Sequence[LoadResult]) -> list[str]:
    """Sentences about runs whose numbers need care: a client that fell behind, no 200 at all."""
    lines = []
    for r in results:
        if r.client_behind:
            lines.append(f"at {r.offered_rate:g} req/s the client fell behind its schedule (lag p90 "
                         f"{r.lag_p90_ms:.1f} ms, max {r.lag_max_ms:.1f} ms): this machine cannot send "
                         "that fast, so latencies include its own delay; use a lower rate or more clients")
        if r.sent and not r.statuses.get("200"):
            lines.append(f"at {r.offered_rate:g} req/s no request got a 200 ("
                         + ", ".join(f"{k}: {v}" for k, v in r.statuses.items()) + ")")
    return lines


def _plan(url: str, endpoint: str, rate: float, duration_s: float, payloads: Sequence[Payload] | None,
          model: str | None, batch: int, timeout_s: float, warmup_s: float, seed: int,
          connections: int) -> _Plan:
    _check_endpoint(endpoint)
    _check_rate("--rate", rate)
    for flag, seconds in (("--duration", duration_s), ("--timeout", timeout_s)):
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(flag, f"must be > 0 seconds, got {seconds!r}")
    if not (math.isfinite(warmup_s) and warmup_s >= 0):
        raise ConfigError("--warmup", f"must be >= 0 seconds, got {warmup_s!r}")
    for flag, count in (("--batch", batch), ("connections", connections)):
        if count < 1:
            raise ConfigError(flag, f"must be at least 1, got {count!r}")
    payloads = default_payloads(endpoint) if payloads is None else list(payloads)
    return _Plan(_endpoint_url(url, endpoint), endpoint, _bodies(payloads, batch, model), float(rate),
                 float(duration_s), float(warmup_s), float(timeout_s), seed, batch, connections)


def _check_endpoint(endpoint: str) -> None:
    if endpoint not in ENDPOINTS:
        raise ConfigError("--endpoint", f"expected one of {', '.join(ENDPOINTS)}, got {endpoint!r}")


def _check_rate(flag: str, rate: float) -> None:
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


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keeps the objects that exist before the run (torch and the rest: ~100k) out of the
    collector while it runs; a full collection over them stalled the sender ~50 ms."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _load(plan: _Plan, bar: _Bar) -> LoadResult:
    loop = asyncio.get_running_loop()
    tally = _Tally()
    # aiohttp rather than httpx: httpx's pool costs grow with open connections, and at a few
    # hundred requests per second in flight the client, not the server, set the latency.
    # No timeout here: _shoot enforces one deadline from the scheduled time. trust_env=False: a
    # proxy from the environment would be load-tested instead of the server.
    connector = aiohttp.TCPConnector(limit=plan.connections)
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=None)) as client:
        await _check_reachable(client, plan.url, plan.timeout_s)
        with bar:
            start = loop.time()
            ticker = asyncio.create_task(bar.tick(tally, start)) if bar.enabled else None
            window = start + plan.warmup_s
            warm, measured = [], []
            for i, at in enumerate(_arrivals(plan.rate, start, window + plan.duration_s, plan.seed)):
                await asyncio.sleep(at - loop.time())  # at once (after one yield) when late
                tally.sent += 1
                task = asyncio.create_task(_shoot(client, plan, plan.bodies[i % len(plan.bodies)], at, tally))
                (measured if at >= window else warm).append(task)
            await asyncio.gather(*warm)
            shots = await asyncio.gather(*measured)
            if ticker:
                ticker.cancel()
            bar.show(tally, loop.time() - start)
    return _summarise(plan, shots, window, loop.time() - start)


def _arrivals(rate: float, start: float, end: float, seed: int) -> Iterator[float]:
    """Poisson arrival times in [start, end): exponential gaps, independent of any answer."""
    rng = random.Random(seed)
    at = start + rng.expovariate(rate)
    while at < end:
        yield at
        at += rng.expovariate(rate)


async def _shoot(client: aiohttp.ClientSession, plan: _Plan, body: bytes, at: float,
                 tally: _Tally) -> _Shot:
    loop = asyncio.get_running_loop()
    lag = loop.time() - at
    try:
        # The deadline, like the latency, counts from the scheduled time.
        async with asyncio.timeout_at(at + plan.timeout_s):
            async with client.post(plan.url, data=body, headers=_HEADERS) as answer:
                await answer.read()
                status = str(answer.status)
    except TimeoutError:
        status = "timeout"
    except aiohttp.ClientError:  # refused, reset, closed mid-answer: failed below HTTP
        status = "connection_error"
    tally.finished += 1
    tally.ok += status == "200"
    return _Shot(at, lag, status, loop.time() - at)


async def _check_reachable(client: aiohttp.ClientSession, url: str, timeout_s: float) -> None:
    """Fails fast, in one sentence, where every request would be a connection error. A GET (any
    answer will do, 405 included) rather than a bare connect: it also pays the client's first-use
    costs and opens a connection, which would otherwise show as sending lag at the start."""
    limit = min(timeout_s, CONNECT_CHECK_S)
    try:
        async with client.get(url, timeout=aiohttp.ClientTimeout(total=limit)) as answer:
            await answer.read()
    except TimeoutError:
        raise ConfigError("URL", f"cannot connect to {url}: no answer within {limit:g} s") from None
    except aiohttp.ClientError as exc:
        raise ConfigError("URL", f"cannot connect to {url}: {exc or type(exc).__name__}") from None


def _summarise(plan: _Plan, shots: Sequence[_Shot], window: float, elapsed_s: float) -> LoadResult:
    statuses = dict(sorted(Counter(s.status for s in shots).items()))
    ok = [s for s in shots if s.status == "200"]
    lags = np.asarray([s.lag_s for s in shots] or [0.0]) * 1000
    lag_p90, lag_p99 = (round(float(v), 3) for v in np.percentile(lags, [90, 99]))
    # Over the window alone, answers still queued at its end would be left out; a server that
    # queues then looks as fast as the offered rate.
    last = max((s.scheduled + s.latency_s - window for s in ok), default=0.0)
    return LoadResult(
        url=plan.url, endpoint=plan.endpoint, offered_rate=plan.rate, duration_s=plan.duration_s,
        warmup_s=plan.warmup_s, batch=plan.batch, seed=plan.seed, timeout_s=plan.timeout_s,
        sent=len(shots), completed=sum(s.answered for s in shots),
        throughput=round(len(ok) / max(plan.duration_s, last), 3), statuses=statuses,
        non_200_share=round(1 - len(ok) / len(shots), 4) if shots else 0.0,
        ok_latency=Latency.of([s.latency_s for s in ok]),
        answered_latency=Latency.of([s.latency_s for s in shots if s.answered]),
        lag_p90_ms=lag_p90, lag_p99_ms=lag_p99, lag_max_ms=round(float(lags.max()), 3),
        client_behind=lag_p90 > BEHIND_MS,
        elapsed_s=round(elapsed_s, 3))


class _Bar:
    """The run on stderr: time through warm-up and window, requests sent, 200s, in flight."""

    def __init__(self, plan: _Plan, enabled: bool | None):
        console = Console(stderr=True)
        self.enabled = console.is_terminal if enabled is None else enabled
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                 console=console, disable=not self.enabled)
        self.task = self.progress.add_task(f"{plan.rate:g} req/s", total=plan.warmup_s + plan.duration_s,
                                           counts="")

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    async def tick(self, tally: _Tally, start: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.show(tally, loop.time() - start)
            await asyncio.sleep(_PROGRESS_EVERY_S)

    def show(self, tally: _Tally, elapsed_s: float) -> None:
        total = self.progress.tasks[0].total
        self.progress.update(self.task, completed=min(elapsed_s, total),
                             counts=f"{tally.sent} sent, {tally.ok} ok, "
                                    f"{tally.sent - tally.finished} in flight")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _plot_latency(ax: Axes, runs: Sequence[LoadResult]) -> None:
    rates = [r.offered_rate for r in runs]
    for name, style, color in (("p50", "-", "tab:blue"), ("p90", "--", "tab:orange"), ("p99", ":", "tab:red")):
        values = [getattr(r.ok_latency, f"{name}_ms") for r in runs]
        ax.plot(rates, [math.nan if v is None else v for v in values], style, color=color, marker="o",
                label=f"{name} latency")
    ax.set_ylabel("latency of 200 answers (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.plot(rates, [r.throughput for r in runs], color="black", marker="s", label="throughput (200/s)")
    # What was sent, not the nominal rate: a Poisson sample of a short run is off by a few percent.
    right.plot(rates, [r.sent / r.duration_s for r in runs], color="gray", linestyle=":",
               label="sent/s (ideal throughput)")
    right.set_ylabel("requests/s")
    right.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    # Outside the axes: a rising throughput line and flat latencies would both run under it.
    ax.figure.legend(handles + more_handles, labels + more_labels, loc="outside right upper",
                     fontsize="small")


def _plot_errors(ax: Axes, runs: Sequence[LoadResult]) -> None:
    rates = [r.offered_rate for r in runs]
    kinds = sorted({k for r in runs for k in r.statuses if k != "200"})
    for kind in kinds:
        ax.plot(rates, [100 * r.statuses.get(kind, 0) / max(r.sent, 1) for r in runs], marker="o", label=kind)
    if not kinds:
        ax.plot(rates, [0.0] * len(rates), marker="o", color="tab:gray", label="none")
    ax.set_ylabel("non-200 (%)")
    ax.set_ylim(0, 105)
    ax.set_xlim(left=0)
    ax.set_xlabel("offered load (requests/s)")
    ax.grid(alpha=0.3)
    ax.figure.legend(*ax.get_legend_handles_labels(), title="non-200", loc="outside right lower",
                     fontsize="small")
