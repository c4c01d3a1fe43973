"""Open-loop load runs against one server, shared by the serving benchmarks (serve_latency.py,
serve_peer.py): a run at one offered rate, a sweep that raises the rate until the server stops
keeping up, a bisection around the p99 budget, and the figures read off them.

Every run starts on a quiet CPU: the server and the load generator share the machine's cores, and
whatever else is still running (the previous server shutting down, a build, another benchmark)
would be measured too.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import psutil

from mmpipe.loadtest import LoadResult, run_load
from mmpipe.serve.process import server_process

BUDGET_MS = 150.0
QUIET_PERCENT = 15.0  # of all cores, over half a second
QUIET_WAIT_S = 60.0
WARMUP_S = 1.0  # of load before each measured run, unmeasured


def bodies(texts: Sequence[str], per_request: int) -> list[dict]:
    """Request bodies of ``per_request`` texts each, asking for base64 vectors. Request i takes
    texts i·n … i·n+n-1 (cycling), so every text is sent and consecutive requests differ. One
    text goes as a bare string, as most clients send it."""
    n = len(texts)
    return [{"input": texts[i] if per_request == 1
             else [texts[(i * per_request + k) % n] for k in range(per_request)],
             "encoding_format": "base64"}
            for i in range(n)]


def wait_quiet(limit_s: float = QUIET_WAIT_S) -> None:
    """Return once the CPU is quiet; after ``limit_s`` say that it is not and go on."""
    deadline = time.monotonic() + limit_s
    while (busy := psutil.cpu_percent(interval=0.5)) >= QUIET_PERCENT:
        if time.monotonic() > deadline:
            print(f"  (the CPU is still {busy:.0f} % busy after {limit_s:g} s; measuring anyway)",
                  flush=True)
            return


@dataclass(frozen=True)
class Target:
    """A server's base URL and the request bodies (see ``bodies``) its load runs send."""

    url: str
    bodies: list[dict]

    def load(self, rate: float, seconds: float) -> LoadResult:
        wait_quiet()
        return run_load(self.url, "embeddings", rate, seconds, payloads=self.bodies, warmup_s=WARMUP_S,
                        timeout_s=30, progress=False)

    def sweep(self, start: float, seconds: float, max_steps: int | None = None) -> list[LoadResult]:
        """Raise the offered rate by 25 % a step until the server stops keeping up (or for
        ``max_steps`` steps)."""
        runs, rate = [], start
        while max_steps is None or len(runs) < max_steps:
            r = self.load(rate, seconds)
            runs.append(r)
            show("sweep", r)
            # Against the arrivals the window drew, not the offered rate: at a few requests a
            # second a Poisson window holds 20 % fewer or more than the rate times its length.
            saturated = r.throughput < 0.9 * r.sent / r.duration_s or r.non_200_share > 0.01
            if saturated or (r.ok_latency.p99_ms or 0) > 4 * BUDGET_MS:
                break
            rate *= 1.25
        return runs

    def refine(self, runs: list[LoadResult], seconds: float, steps: int = 2) -> list[LoadResult]:
        """Bisect between the fastest rate within the budget and the next rate tried, which was
        not. The sweep's 25 % steps alone would quantise a throughput ratio to powers of 1.25
        (2.44 or 3.05, never anything between), whichever side of a step each server landed."""
        good = max((r.offered_rate for r in runs if in_budget(r)), default=None)
        bad = min((r.offered_rate for r in runs if good and r.offered_rate > good), default=None)
        extra = []
        for _ in range(steps if good and bad else 0):
            r = self.load((good * bad) ** 0.5, seconds)
            extra.append(r)
            show("refine", r)
            good, bad = (r.offered_rate, bad) if in_budget(r) else (good, r.offered_rate)
        return extra


def show(label: str, r: LoadResult) -> None:
    lat = r.ok_latency
    print(f"  {label:>10} offered {r.offered_rate:7.1f}/s  ok {r.throughput:7.1f}/s  "
          f"p50 {lat.p50_ms or 0:7.1f} ms  p99 {lat.p99_ms or 0:7.1f} ms  {r.statuses}"
          + ("  (client behind)" if r.client_behind else ""), flush=True)


def in_budget(r: LoadResult) -> bool:
    return r.non_200_share == 0 and (r.ok_latency.p99_ms or 1e9) <= BUDGET_MS


def within_budget(runs: list[LoadResult]) -> float:
    """The most 200 answers/s of any run with p99 <= BUDGET_MS and no other status."""
    return max((r.throughput for r in runs if in_budget(r)), default=0.0)


def capacity(runs: list[LoadResult]) -> float:
    """The most 200 answers/s of any run with at most 1 % other statuses (0: none had)."""
    return max((r.throughput for r in runs if r.non_200_share <= 0.01), default=0.0)


@contextmanager
def busy_cores(*pids: int) -> Iterator[list[float]]:
    """The cores that processes ``pids`` (this one included) kept busy on average while the block
    ran, user and system time over wall time: appended to the yielded list on the way out."""
    procs = [psutil.Process(pid) for pid in {*pids, psutil.Process().pid}]

    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    out: list[float] = []
    c0, t0 = cpu(), time.monotonic()
    yield out
    out.append((cpu() - c0) / (time.monotonic() - t0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refusal_floor(rate: float, seconds: float) -> dict:
    """What refusing requests costs at the least, whatever the server: ``rate`` requests/s at a
    bare uvicorn app that answers each 429 (``refuse_all.py``), CPU microseconds per request in
    that server and in this load generator."""
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [sys.executable, str(Path(__file__).with_name("refuse_all.py")), url.rsplit(":", 1)[1]]
    with tempfile.TemporaryDirectory() as tmp, server_process(cmd, url, Path(tmp) / "refuse_all.log") as proc:
        server, generator = psutil.Process(proc.pid), psutil.Process()
        before = [sum(p.cpu_times()[:2]) for p in (server, generator)]
        r = Target(url, bodies(["a cat on a mat"], 1)).load(rate, seconds)
        used = [sum(p.cpu_times()[:2]) - b for p, b in zip((server, generator), before)]
    sent = r.sent * (seconds + WARMUP_S) / seconds  # the warm-up's requests cost CPU too
    return {"rate": rate, "statuses": r.statuses, "server_us_per_request": used[0] * 1e6 / sent,
            "generator_us_per_request": used[1] * 1e6 / sent}
