"""The continuous runner: a FollowSource's items through a job's stages into shards that roll on
size or time, until SIGTERM or Ctrl-C; then what is in flight is finished and committed.

Exactly once: each shard's commit-log line records what it consumed (sources.follow), and a
restart resumes from those lines alone. A shard is committed when ``shard_size`` rows have
arrived or ``shard_seconds`` after its first row, whichever comes first: the engine calls
``consume`` only when results arrive, so a clock thread commits a quiet stream's shard, the two
taking turns on the sink under one lock.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from ..engine import EngineStats, LocalEngine
from ..engine.streaming import Stream
from ..records import Record
from ..sinks import OutputDir, ParquetShardSink
from ..sinks.commit_log import Commit
from ..sinks.output_dir import MANIFEST
from ..sources.follow import FollowSource
from .follow_metrics import FollowMetrics
from .follow_stats import FollowStats
from .progress import JobProgress
from .runner import JobResult, JobSpec, tally

if TYPE_CHECKING:
    from ..sinks.kafka_emit import DecisionEmitter


def follow_job(job: JobSpec, source: FollowSource, out: str | Path, *, shard_size: int,
               shard_seconds: float, overwrite: bool, progress: bool | None = None,
               engine: LocalEngine | None = None, price_per_hour: float | None = None,
               metrics_port: int | None = None, emitter: DecisionEmitter | None = None,
               stop: threading.Event | None = None) -> JobResult:
    """``stop``: set it (from any thread) to stop as SIGTERM does; a follower in the main thread
    also stops on SIGTERM and Ctrl-C."""
    out_dir = OutputDir(source.output(Path(out)))
    commits = out_dir.open(job.signature, overwrite)
    source.resume(c.consumed if c.consumed is not None else FollowSource.consumed_of_ids(c.ids)
                  for c in commits)
    first_shard = out_dir.next_shard_index(commits)
    # Started here, on the log as it was read, so that it re-emits what a crash left undelivered.
    emitting = emitter.start(out_dir, commits) if emitter else nullcontext()
    del commits  # what resume needs now lives in the source, compactly
    manifest = {**job.manifest, "signature": job.signature, "status": "following"}
    out_dir.write_json(MANIFEST, manifest)

    live = EngineStats()
    figures = FollowStats(out_dir, live, price_per_hour)
    metrics = FollowMetrics(figures, source)
    reasons: Counter[str] = Counter()

    def on_commit(commit: Commit) -> None:
        latencies = figures.on_commit(len(commit.ids), commit.errors, source.committed(commit.ids))
        metrics.on_commit(commit.ids, latencies)
        if emitter:
            emitter.on_commit(commit)

    sink = ParquetShardSink(out_dir, job.to_table, shard_size, first_shard,
                            consumed_of=source.consumed, on_commit=on_commit)
    lock = threading.Lock()

    def forget(ids: Sequence[str]) -> None:  # rows of items the source gave up, not committed
        sink.drop(ids)
        metrics.forget(ids)

    source.bind(forget, lock)
    stop = stop or threading.Event()
    # The emitter closes last: after the final shard's commit, waiting for its deliveries.
    with emitting, JobProgress(job.label, progress) as bar, stop_on_signals(stop), closing(source), \
            metrics.serve(metrics_port) as served_port, \
            ShardClock(sink, lock, shard_seconds, stop) as clock:
        if served_port is not None:  # where to scrape, when port 0 let the system pick
            manifest["metrics_port"] = served_port
            out_dir.write_json(MANIFEST, manifest)

        def consume(records: list[Record]) -> None:
            with lock:  # owns() and add() together: a partition taken meanwhile adds nothing more
                kept = [r for r in records if source.owns(r.id)]
                metrics.on_results(kept)
                sink.add(kept)
            tally(kept, reasons, bar)

        stats = (engine or LocalEngine()).run(source.items(stop), job.stages, consume,
                                              Stream(source_stop=stop, stats=live))
        with lock:
            sink.flush()
    clock.raise_failure()
    figures.write()
    manifest.update(status="stopped", stopped_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    out_dir.write_json(MANIFEST, manifest)
    return JobResult(out=out_dir.path, ok=sink.rows - sink.errors, errors=sink.errors, skipped=0,
                     duplicates=0, stats=stats, top_errors=reasons.most_common(5), manifest=manifest,
                     cost=figures.cost(), latency_s=figures.latency_s())


class ShardClock:
    """Commits the open shard once it is ``shard_seconds`` old, whether or not rows arrive. A
    failed commit (a full disk) stops the follower and is raised in the caller's thread."""

    def __init__(self, sink: ParquetShardSink, lock: threading.Lock, shard_seconds: float,
                 stop: threading.Event):
        self.sink, self.lock, self.shard_seconds, self.stop = sink, lock, shard_seconds, stop
        self.done = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="mmpipe-shard-clock", daemon=True)

    def __enter__(self) -> "ShardClock":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        tick = min(0.2, self.shard_seconds / 20)  # a shard waits at most 5 % past its time
        while not self.done.wait(tick):
            try:
                with self.lock:
                    opened = self.sink.opened_at
                    if opened is not None and time.monotonic() - opened >= self.shard_seconds:
                        self.sink.flush()
            except BaseException as exc:  # noqa: BLE001 - raised again by raise_failure
                self.failure = exc
                self.stop.set()
                return


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (the source then ends and the pipeline drains); the
    handlers before are back once one arrives, so a second Ctrl-C interrupts as usual.
    Signals reach only the main thread: a follower started from another thread is stopped by
    whoever owns it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = (signal.SIGTERM, signal.SIGINT)
    before = {s: signal.getsignal(s) for s in names}

    def on_signal(signum, frame) -> None:
        stop.set()
        for s, handler in before.items():
            signal.signal(s, handler)

    for s in names:
        signal.signal(s, on_signal)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
