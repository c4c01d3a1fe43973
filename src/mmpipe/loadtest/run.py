"""Sending a load test's requests on their schedule and timing the answers."""

from __future__ import annotations

import asyncio
import gc
import random
from collections import Counter
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import ConfigError
from .client import Pool, Shot, request_bytes
from .plan import Payload, Plan, check_rate, make_plan
from .results import BEHIND_MS, Latency, LoadResult

CONNECT_CHECK_S = 5.0
_PROGRESS_EVERY_S = 0.2


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
    plan = make_plan(url, endpoint, rate, duration_s, payloads, model, batch, timeout_s, warmup_s, seed,
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
        check_rate("--rate", rate)
    return [run_load(url, endpoint, rate, duration_s, payloads=payloads, model=model, batch=batch,
                     timeout_s=timeout_s, warmup_s=warmup_s, seed=seed, connections=connections,
                     progress=progress)
            for rate in rates]


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


async def _load(plan: Plan, bar: _Bar) -> LoadResult:
    loop = asyncio.get_running_loop()
    await _check_reachable(plan.url, plan.timeout_s)
    raws = [request_bytes(plan.url, body=body) for body in plan.bodies]
    pool = Pool(plan.url, plan.connections)
    try:
        with bar:
            start = loop.time()
            ticker = asyncio.create_task(bar.tick(pool, start)) if bar.enabled else None
            window = start + plan.warmup_s
            shots, lags = [], []
            for i, at in enumerate(_arrivals(plan.rate, start, window + plan.duration_s, plan.seed)):
                await asyncio.sleep(at - loop.time())  # at once (after one yield) when late
                lags.append(loop.time() - at)
                shots.append(Shot(raws[i % len(raws)], at, at + plan.timeout_s))
                pool.send(shots[-1])  # the deadline, like the latency, counts from the scheduled time
            await pool.settle_all()
            if ticker:
                ticker.cancel()
            bar.show(pool, loop.time() - start)
    finally:
        pool.close()
    measured = [(shot, lag) for shot, lag in zip(shots, lags) if shot.scheduled >= window]
    return _summarise(plan, measured, window, loop.time() - start)


def _arrivals(rate: float, start: float, end: float, seed: int) -> Iterator[float]:
    """Poisson arrival times in [start, end): exponential gaps, independent of any answer."""
    rng = random.Random(seed)
    at = start + rng.expovariate(rate)
    while at < end:
        yield at
        at += rng.expovariate(rate)


async def _check_reachable(url: str, timeout_s: float) -> None:
    """Fails fast, in one sentence, where every request would be a connection error. A GET: any
    answer will do, 405 included."""
    loop = asyncio.get_running_loop()
    limit = min(timeout_s, CONNECT_CHECK_S)
    pool, shot = Pool(url, 1), Shot(request_bytes(url, "GET"), loop.time(), loop.time() + limit)
    try:
        pool.send(shot)
        await pool.settle_all()
    finally:
        pool.close()
    if shot.status == "timeout":
        raise ConfigError("URL", f"cannot connect to {url}: no answer within {limit:g} s")
    if shot.status == "connection_error":
        raise ConfigError("URL", f"cannot connect to {url}: {shot.error}")


def _summarise(plan: Plan, measured: Sequence[tuple[Shot, float]], window: float,
               elapsed_s: float) -> LoadResult:
    """The window's shots, each with its sending lag, summed up."""
    shots = [shot for shot, _ in measured]
    statuses = dict(sorted(Counter(s.status for s in shots).items()))
    ok = [s for s in shots if s.status == "200"]
    lags = np.asarray([lag for _, lag in measured] or [0.0]) * 1000
    lag_p90, lag_p99 = (round(float(v), 3) for v in np.percentile(lags, [90, 99]))
    # Over the window alone, answers still queued at its end would be left out; a server that
    # queues then looks as fast as the offered rate.
    last = max((s.ended - window for s in ok), default=0.0)
    return LoadResult(
        url=plan.url, endpoint=plan.endpoint, offered_rate=plan.rate, duration_s=plan.duration_s,
        warmup_s=plan.warmup_s, batch=plan.batch, seed=plan.seed, timeout_s=plan.timeout_s,
        sent=len(shots), completed=sum(s.status.isdigit() for s in shots),
        throughput=round(len(ok) / max(plan.duration_s, last), 3), statuses=statuses,
        non_200_share=round(1 - len(ok) / len(shots), 4) if shots else 0.0,
        ok_latency=Latency.of([s.ended - s.scheduled for s in ok]),
        answered_latency=Latency.of([s.ended - s.scheduled for s in shots if s.status.isdigit()]),
        lag_p90_ms=lag_p90, lag_p99_ms=lag_p99, lag_max_ms=round(float(lags.max()), 3),
        client_behind=lag_p90 > BEHIND_MS,
        elapsed_s=round(elapsed_s, 3))


class _Bar:
    """The run on stderr: time through warm-up and window, requests sent, 200s, in flight."""

    def __init__(self, plan: Plan, enabled: bool | None):
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

    async def tick(self, pool: Pool, start: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.show(pool, loop.time() - start)
            await asyncio.sleep(_PROGRESS_EVERY_S)

    def show(self, pool: Pool, elapsed_s: float) -> None:
        total = self.progress.tasks[0].total
        self.progress.update(self.task, completed=min(elapsed_s, total),
                             counts=f"{pool.sent} sent, {pool.ok} ok, "
                                    f"{pool.sent - pool.finished} in flight")
