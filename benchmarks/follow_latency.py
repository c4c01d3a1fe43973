"""Kafka follower under Poisson load: decision latency and consumer lag at 50 % and 150 % of the
batch job's throughput on the same items, in one run.

Items: the demo's images (photos with captions, images with rendered text, its 2 broken files)
and text comments, no videos (`mmpipe.sample_moderation`), a pool reused under fresh unique keys;
messages name the images by absolute path, so they stay small (the local broker keeps only the
last 5 MiB of each partition).

1. Batch: `mmpipe moderate` on the pool's manifest; its items/s (stats.json, model setup
   excluded) is the rate the phases are scaled to.
2. A broker (`mmpipe.local_kafka.LocalKafka` in this process, or `--brokers`), an input topic of 4
   partitions and a decisions topic, and the follower:
   `mmpipe moderate kafka://…?group=… --follow --shard-seconds 1 --metrics-port 0 --emit kafka://…`,
   warmed up with the pool once, at once, its decisions awaited (not measured).
3. Steady: Poisson arrivals at 0.5 x batch items/s for --steady-s. Decision latency of an item is
   the timestamp of its first decision message minus that of its input message (both set from this
   machine's clock); it is split at the commit of the item's shard (the shard file's mtime). On
   LocalKafka up to 0.1 s of it is the mock broker's: it answers a fetch at fetch.wait.max.ms
   (the follower's default, 100 ms) even when a message came meanwhile, where Kafka answers once
   there is one, so the figure errs on the safe side. Every second: the lag
   (`mmpipe_follow_lag_messages`) and the RSS of the follower and its decode processes.
4. Overload: Poisson at 1.5 x for --overload-s, then no more messages: the lag must grow while RSS
   stays flat, then drain to 0 with every key decided. The follower then gets SIGTERM (exit 0),
   and every committed shard under OUT is read: each key produced must have exactly one row.

Targets (issue): p99 <= 3 s at 50 %; lag bounded at 50 % (slope of a line fitted to the lag
<= 2 % of the arrivals a minute, the ramp of the first 10 % left out); at 150 % the lag grows
(slope above that) and RSS does not follow it (the overload's second half peaks at most
max(50 MiB, 10 %) above its first half: filling the pipeline's bounded queues is a step at the
start); the lag drains to 0; 0 missing, 0 duplicated, follower exit 0. Exit status 1 when one
is missed.

    .venv/bin/python benchmarks/follow_latency.py                       # 5 + 2 min of load
    .venv/bin/python benchmarks/follow_latency.py --steady-s 30 --overload-s 20 --photos 60
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from mmpipe.sample_moderation import make_moderation_samples

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
CONSUMER = "bench"  # the follower's ?consumer=, so its folder under OUT is known in advance
P99_TARGET_S = 3.0
# Lag "not growing": a fitted slope under 2 % of the arrivals a minute, i.e. the follower keeps
# up with at least 98 % of them; overload must grow faster than that.
SLOPE_TOLERANCE = 0.02
RSS_GROWTH = (50 * 2**20, 0.10)  # bytes, share: the larger of the two is allowed
# The local broker waits session.timeout.ms - 1 s before a rejoin; short, so a restart is quick.
SESSION = ["--storage-option", "session.timeout.ms=6000",
           "--storage-option", "heartbeat.interval.ms=1000"]
LAG_RE = re.compile(rb"^mmpipe_follow_lag_messages (\S+)$", re.M)
ROWS_RE = re.compile(rb"^mmpipe_follow_items_total (\S+)$", re.M)


def make_pool(data: Path, photos: int) -> tuple[Path, list[dict]]:
    """The demo's images and texts (no videos), images by absolute path, as a batch manifest."""
    manifest = make_moderation_samples(data / f"moderation-{photos}", n_photos=photos)
    pool = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row.get("image", "").startswith("videos/"):
            continue
        if row.get("image"):
            row["image"] = str(manifest.parent / row["image"])
        pool.append(row)
    items = data / f"follow-pool-{photos}.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in pool))
    return items, pool


def batch_rate(items: Path, work: Path, flags: list[str]) -> float:
    out = work / "batch-out"
    with open(work / "batch.log", "wb") as log:
        subprocess.run([sys.executable, "-m", "mmpipe.cli", "moderate", str(items), "--out", str(out),
                        "--no-progress", *flags], check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads((out / "stats.json").read_text())["items_per_s"]


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """RSS of the follower and its children (decode processes), and of the follower alone; shared
    pages count twice, which is the same at every sample."""
    main = proc.memory_info().rss
    total = main
    for p in proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total, main


class Decisions(threading.Thread):
    """Reads the decisions topic from its start; the first decision of each key counts (the
    emitter is at least once)."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(name="decisions", daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                                  "fetch.error.backoff.ms": 10})
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        self.first: dict[str, int] = {}  # key -> decision timestamp (ms)
        self.messages = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for m in self.consumer.consume(500, timeout=0.1):
                if m.error():
                    continue
                with self.lock:
                    self.messages += 1
                    self.first.setdefault(m.key().decode(), m.timestamp()[1])
        self.consumer.close()

    def have(self, keys) -> bool:
        with self.lock:
            return all(k in self.first for k in keys)


class Load:
    """Produces the pool's items under fresh keys; remembers each key's timestamp (ms)."""

    def __init__(self, bootstrap: str, topic: str, pool: list[dict], seed: int = 0):
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic, self.pool, self.rng = topic, pool, random.Random(seed)
        self.sent: dict[str, int] = {}
        self.phase_of: dict[str, str] = {}
        self.seq = 0

    def send(self, phase: str) -> str:
        row = self.pool[self.seq % len(self.pool)]
        key = f"{self.seq:07d}:{row['id']}"
        self.seq += 1
        value = {k: row[k] for k in ("image", "text") if row.get(k)}
        ms = int(time.time() * 1000)
        self.producer.produce(self.topic, json.dumps(value).encode(), key.encode(), timestamp=ms)
        self.producer.poll(0)
        self.sent[key], self.phase_of[key] = ms, phase
        return key

    def poisson(self, phase: str, rate: float, seconds: float) -> None:
        """Open loop: arrivals on a fixed exponential schedule, caught up at once when late."""
        start = time.monotonic()
        due = start + self.rng.expovariate(rate)
        while due < start + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            self.send(phase)
            due += self.rng.expovariate(rate)
        self.producer.flush(30)


class Sampler(threading.Thread):
    """Every `every` s: (seconds since start, phase, lag, RSS of the tree, RSS of the follower,
    rows committed)."""

    def __init__(self, proc: psutil.Process, metrics_url: str, every: float = 1.0):
        super().__init__(name="sampler", daemon=True)
        self.proc, self.url, self.every = proc, metrics_url, every
        self.phase = "warm-up"
        self.samples: list[tuple[float, str, float, int, int, float]] = []
        self.t0 = time.monotonic()
        self.stop = threading.Event()

    def metrics(self) -> tuple[float, float]:
        """The lag and the rows committed."""
        with urllib.request.urlopen(self.url, timeout=5) as r:
            text = r.read()
        return float(LAG_RE.search(text).group(1)), float(ROWS_RE.search(text).group(1))

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                lag, rows = self.metrics()
                self.samples.append((time.monotonic() - self.t0, self.phase, lag,
                                     *tree_rss(self.proc), rows))
            except (OSError, psutil.Error):
                pass  # the follower stopping: its last samples are already in

    def of(self, phase: str) -> list[tuple[float, str, float, int, int, float]]:
        return [s for s in self.samples if s[1] == phase]


def slope_per_min(samples) -> float:
    if len(samples) < 3:
        return float("nan")
    t = np.array([s[0] for s in samples])
    return float(np.polyfit(t / 60, [s[2] for s in samples], 1)[0])


def wait_for(what: str, ok, timeout: float, proc: subprocess.Popen, stderr: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if proc.poll() is not None:
            raise SystemExit(f"the follower exited ({proc.returncode}) waiting for {what}; see {stderr}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; see {stderr}")
        time.sleep(0.2)


def committed_rows(out: Path) -> tuple[Counter, dict[str, float]]:
    """Rows per id in every committed shard under OUT (each consumer's commit log names them),
    and each id's commit time (its shard's mtime: written just before its commit-log line)."""
    rows: Counter = Counter()
    committed_at: dict[str, float] = {}
    for log in sorted(out.glob("*/_commits.jsonl")):
        for line in log.read_text().splitlines():
            shard = log.parent / json.loads(line)["shard"]
            ids = pq.read_table(shard, columns=["id"]).column("id").to_pylist()
            rows.update(ids)
            mtime = shard.stat().st_mtime
            for i in ids:
                committed_at.setdefault(i, mtime)
    return rows, committed_at


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--photos", type=int, default=270,
                    help="Demo photos in the pool (pool = photos + 31 text images and comments). "
                         "Default: 270.")
    ap.add_argument("--data", type=Path, default=ROOT / "bench_data",
                    help="Cache folder for the demo items (made once). Default: bench_data/.")
    ap.add_argument("--work", type=Path, default=None,
                    help="Folder for the batch output, the follower's OUT and its stderr/stdout "
                         "(kept). Default: a fresh temporary folder, removed unless the run fails.")
    ap.add_argument("--steady-s", type=float, default=300, help="Seconds at 50 %% (default 300).")
    ap.add_argument("--overload-s", type=float, default=120, help="Seconds at 150 %% (default 120).")
    ap.add_argument("--steady-load", type=float, default=0.5,
                    help="Steady arrival rate as a share of the batch items/s. Default: 0.5.")
    ap.add_argument("--overload-load", type=float, default=1.5,
                    help="Overload arrival rate as a share of the batch items/s. Default: 1.5.")
    ap.add_argument("--drain-timeout-s", type=float, default=900,
                    help="Longest wait for the lag to drain after the overload. Default: 900.")
    ap.add_argument("--warmup", type=int, default=None,
                    help="Messages sent at once, and decided, before measuring. Default: the whole "
                         "pool once, so that each image size has been through the models (their "
                         "memory arenas grow with the first items, in the batch job too).")
    ap.add_argument("--brokers", default=None,
                    help="HOST:PORT[,…] of a real Kafka to use (topics created with unique names, "
                         "4 partitions) instead of a LocalKafka in this process.")
    ap.add_argument("--job-flag", action="append", default=[], metavar="FLAG",
                    help="A flag for both the batch job and the follower (repeat; e.g. "
                         "--job-flag=--no-ocr). Default: none, the default policy as users run it.")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the Poisson arrivals. Default: 0.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here as JSON.")
    args = ap.parse_args()

    items, pool = make_pool(args.data, args.photos)
    print(f"pool: {len(pool)} items ({sum(1 for r in pool if r.get('image'))} images, "
          f"{sum(1 for r in pool if not r.get('image'))} texts) from {items}")
    print(f"machine: {os.cpu_count()} CPUs; job flags: {args.job_flag or 'none'}", flush=True)

    work = args.work or Path(tempfile.mkdtemp(prefix="follow-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = run(args, items, pool, work)
    except BaseException as exc:
        # Kept for diagnosis: the follower's stderr is there.
        print(f"work folder kept: {work}", file=sys.stderr)
        if isinstance(exc, KeyboardInterrupt):
            sys.exit(130)
        raise
    if args.work is None:
        shutil.rmtree(work)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nfigures: {args.json}")
    if not all(results["pass"].values()):
        sys.exit(1)


def run(args, items: Path, pool: list[dict], work: Path) -> dict:
    t = time.perf_counter()
    batch = batch_rate(items, work, args.job_flag)
    print(f"batch job: {batch:.2f} items/s without model setup ({time.perf_counter() - t:.0f} s "
          f"whole call)", flush=True)

    local = None
    if args.brokers is None:
        from mmpipe.local_kafka import LocalKafka

        local = LocalKafka(partitions=PARTITIONS)
    bootstrap = args.brokers or local.bootstrap
    run_id = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"follow-bench-{run_id}", f"follow-bench-{run_id}-decisions"
    follower = decisions = sampler = load = None
    try:
        create_topics(local, bootstrap, [topic_in, topic_out])
        out = work / "follow-out"
        stderr_path = work / "follower.stderr"
        cmd = [sys.executable, "-m", "mmpipe.cli", "moderate",
               f"kafka://{bootstrap}/{topic_in}?group=bench-{run_id}&consumer={CONSUMER}",
               "--out", str(out), "--follow", "--shard-seconds", "1", "--metrics-port", "0",
               "--emit", f"kafka://{bootstrap}/{topic_out}", "--no-progress", *SESSION,
               *args.job_flag]
        with open(stderr_path, "wb") as err, open(work / "follower.stdout", "wb") as so:
            follower = subprocess.Popen(cmd, stdout=so, stderr=err)
        print(f"follower: pid {follower.pid}, stderr {stderr_path}", flush=True)

        decisions = Decisions(bootstrap, topic_out)
        decisions.start()
        load = Load(bootstrap, topic_in, pool, args.seed)
        warmup = len(pool) if args.warmup is None else args.warmup
        warm = [load.send("warm-up") for _ in range(warmup)]
        load.producer.flush(30)
        t = time.monotonic()
        wait_for("the warm-up's decisions", lambda: decisions.have(warm), 600, follower, stderr_path)
        print(f"warm-up: {len(warm)} decisions after {time.monotonic() - t:.1f} s", flush=True)
        port = json.loads((out / CONSUMER / "_manifest.json").read_text())["metrics_port"]
        sampler = Sampler(psutil.Process(follower.pid), f"http://127.0.0.1:{port}/metrics")
        sampler.start()

        steady_rate, over_rate = args.steady_load * batch, args.overload_load * batch
        sampler.phase = "steady"
        print(f"steady: {steady_rate:.2f} items/s for {args.steady_s:.0f} s", flush=True)
        load.poisson("steady", steady_rate, args.steady_s)
        sampler.phase = "overload"
        print(f"overload: {over_rate:.2f} items/s for {args.overload_s:.0f} s", flush=True)
        load.poisson("overload", over_rate, args.overload_s)
        sampler.phase = "drain"
        t = time.monotonic()
        print("drain: no more messages", flush=True)
        drained = False
        while time.monotonic() - t < args.drain_timeout_s and follower.poll() is None:
            last = sampler.of("drain")[-1:]
            if last and last[0][2] == 0 and decisions.have(load.sent):
                drained = True
                break
            time.sleep(0.2)
        drain_s = time.monotonic() - t
        sampler.stop.set()
        sampler.join()

        follower.send_signal(signal.SIGTERM)
        rc = follower.wait(300)  # it commits what is in flight first
        decisions.stop.set()
        decisions.join()
    finally:
        for thread in (sampler, decisions):
            if thread is not None and thread.is_alive():
                thread.stop.set()
                thread.join(5)
        if follower is not None and follower.poll() is None:
            follower.terminate()
            try:
                follower.wait(60)
            except subprocess.TimeoutExpired:
                follower.kill()
        if load is not None:
            load.producer = None  # destroyed now, before its broker goes
        if local is not None:
            local.close()

    rows, committed_at = committed_rows(out)
    return report(args, batch, load, decisions, sampler, rows, committed_at, drain_s if drained else None, rc)


def create_topics(local, bootstrap: str, topics: list[str]) -> None:
    if local is not None:
        for name in topics:
            local.create_topic(name)
        return
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, PARTITIONS) for n in topics]).values():
        future.result(30)


def report(args, batch, load, decisions, sampler, rows, committed_at, drain_s, rc) -> dict:
    def latencies(phase):
        keys = [k for k, p in load.phase_of.items() if p == phase and k in decisions.first]
        total = [(decisions.first[k] - load.sent[k]) / 1000 for k in keys]
        to_commit = [committed_at[k] - load.sent[k] / 1000 for k in keys if k in committed_at]
        return total, to_commit

    def rss(samples):
        return [s[3] for s in samples]

    steady, over = sampler.of("steady"), sampler.of("overload")
    steady_rate, over_rate = args.steady_load * batch, args.overload_load * batch
    lat, lat_commit = latencies("steady")
    lat_over, _ = latencies("overload")
    # The first 10 % of the steady phase is left out of its fit: the lag ramps up from 0 to the
    # items in flight there, which is not growth.
    s_slope = slope_per_min([s for s in steady if s[0] - steady[0][0] >= 0.1 * args.steady_s])
    o_slope = slope_per_min(over)
    # What the follower committed while overloaded: whether 150 % of the batch rate was more
    # than it could do (on a shared machine the two can differ).
    over_done = (over[-1][5] - over[0][5]) / (over[-1][0] - over[0][0]) if len(over) > 1 else float("nan")
    # A minute each, a quarter of the phase when it is shorter than 4 minutes (so they never overlap).
    window = min(60.0, args.steady_s / 4)
    first = [s[2] for s in steady if s[0] - steady[0][0] < window] if steady else []
    last = [s[2] for s in steady if steady[-1][0] - s[0] < window] if steady else []
    rss_start = rss(over)[0] if over else 0
    rss_max = max(rss(over), default=0)
    # Saturation fills the pipeline's bounded queues once (decoded frames waiting for OCR): a
    # step at the start of the overload. What must not happen is RSS following the lag, which
    # grows all phase long: the second half may not peak above the first half's peak.
    half = over[0][0] + args.overload_s / 2 if over else 0
    rss_first = max((s[3] for s in over if s[0] < half), default=0)
    rss_second = max((s[3] for s in over if s[0] >= half), default=0)
    rss_allowed = max(RSS_GROWTH[0], RSS_GROWTH[1] * rss_first)
    missing = [k for k in load.sent if rows[k] == 0]
    duplicated = [k for k in load.sent if rows[k] > 1]
    unknown = [k for k in rows if k not in load.sent]

    figures = {
        "batch_items_per_s": batch, "steady_rate": steady_rate, "overload_rate": over_rate,
        "steady_s": args.steady_s, "overload_s": args.overload_s, "pool": len(load.pool),
        "job_flags": args.job_flag,
        "steady_latency_s": {f"p{q}": pct(lat, q) for q in (50, 95, 99)} | {"n": len(lat)},
        "steady_commit_latency_s": {f"p{q}": pct(lat_commit, q) for q in (50, 95, 99)},
        "overload_latency_s": {f"p{q}": pct(lat_over, q) for q in (50, 99)} | {"n": len(lat_over)},
        "steady_lag": {"max": max((s[2] for s in steady), default=0),
                       "window_s": window,
                       "mean_first": float(np.mean(first)) if first else None,
                       "mean_last": float(np.mean(last)) if last else None,
                       "slope_per_min": s_slope},
        "steady_rss_mib": {"start": rss(steady)[0] / 2**20 if steady else None,
                           "end": rss(steady)[-1] / 2**20 if steady else None},
        "overload_lag": {"max": max((s[2] for s in over), default=0), "slope_per_min": o_slope},
        "overload_committed_per_s": over_done,
        "overload_rss_mib": {"start": rss_start / 2**20, "max": rss_max / 2**20,
                             "max_first_half": rss_first / 2**20, "max_second_half": rss_second / 2**20},
        "drain_s": drain_s, "follower_exit": rc,
        "produced": len(load.sent), "decided": len(decisions.first),
        "decision_messages": decisions.messages, "rows": sum(rows.values()),
        "missing": len(missing), "duplicated": len(duplicated), "unknown_rows": len(unknown),
        "samples": [{"t": round(s[0], 2), "phase": s[1], "lag": s[2], "rss": s[3], "rss_follower": s[4],
                     "rows": s[5]}
                    for s in sampler.samples],
    }
    figures["pass"] = {
        "p99 <= 3 s at 50 %": pct(lat, 99) <= P99_TARGET_S,
        "lag bounded at 50 %": s_slope <= SLOPE_TOLERANCE * steady_rate * 60,
        "lag grows at 150 %": o_slope > SLOPE_TOLERANCE * over_rate * 60,
        "RSS flat at 150 %": rss_second - rss_first <= rss_allowed,
        "drains to 0": drain_s is not None,
        "nothing lost or repeated": not missing and not duplicated and not unknown and rc == 0,
    }

    f = figures
    print(f"\n{'':<34}{'steady':>14}{'overload':>14}")
    print(f"{'arrivals (items/s, x batch)':<34}{f'{steady_rate:.2f} ({args.steady_load:g}x)':>14}"
          f"{f'{over_rate:.2f} ({args.overload_load:g}x)':>14}")
    print(f"{'committed (items/s)':<34}{'':>14}{f'{over_done:.2f} ({over_done / batch:.2f}x)':>14}")
    print(f"{'decisions measured':<34}{len(lat):>14}{len(lat_over):>14}")
    print(f"{'decision latency p50 / p99 (s)':<34}"
          f"{pct(lat, 50):>6.2f} / {pct(lat, 99):<5.2f}{pct(lat_over, 50):>6.2f} / {pct(lat_over, 99):<5.2f}")
    print(f"{'lag max (messages)':<34}{f['steady_lag']['max']:>14.0f}{f['overload_lag']['max']:>14.0f}")
    print(f"{'lag slope (messages/min)':<34}{s_slope:>14.1f}{o_slope:>14.1f}")
    print(f"{'RSS start -> max (MiB)':<34}"
          f"{f'{rss(steady)[0] / 2**20:.0f}->{max(rss(steady)) / 2**20:.0f}' if steady else '-':>14}"
          f"{f'{rss_start / 2**20:.0f}->{rss_max / 2**20:.0f}':>14}")
    print(f"{'RSS peak, 1st -> 2nd half (MiB)':<34}{'':>14}"
          f"{f'{rss_first / 2**20:.0f}->{rss_second / 2**20:.0f}':>14}")
    print(f"\nsteady latency p50/p95/p99: {pct(lat, 50):.2f} / {pct(lat, 95):.2f} / {pct(lat, 99):.2f} s, "
          f"of which input -> shard commit {pct(lat_commit, 50):.2f} / {pct(lat_commit, 95):.2f} / "
          f"{pct(lat_commit, 99):.2f} s")
    if first and last:
        print(f"steady lag mean, first vs last {window:.0f} s: {f['steady_lag']['mean_first']:.1f} vs "
              f"{f['steady_lag']['mean_last']:.1f} messages")
    print(f"drain: lag 0 and every key decided {drain_s:.1f} s after the load stopped" if drain_s
          is not None else f"drain: NOT drained after {args.drain_timeout_s:.0f} s", f"; follower exit {rc}",
          sep="")
    print(f"exactly once: produced {len(load.sent)}, rows {sum(rows.values())}, missing "
          f"{len(missing)}, duplicated {len(duplicated)}, rows of unknown keys {len(unknown)}; "
          f"decision messages {decisions.messages} for {len(decisions.first)} keys")
    print()
    for name, ok in figures["pass"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return figures


if __name__ == "__main__":
    main()
