"""What every batch job shares: resume, dedupe, limit, progress, shards, manifest and stats."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import pyarrow as pa

from ..engine import Engine, EngineStats, LocalEngine
from ..engine.stats import usd_per_million
from ..records import Item, Record
from ..sinks import OutputDir, ParquetShardSink
from ..sinks.output_dir import MANIFEST, STATS
from ..sources.follow import FollowSource
from ..stage import Stage
from .progress import JobProgress


@dataclass
class JobResult:
    out: Path
    ok: int  # rows written without error, this run
    errors: int  # error rows written this run
    skipped: int  # ids already committed by an earlier run
    duplicates: int  # repeated ids in the input, listed once
    stats: EngineStats
    top_errors: list[tuple[str, int]] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    cost: dict | None = None  # price_per_hour and usd_per_million_items, when a price was given
    latency_s: dict | None = None  # a follower's end-to-end latency percentiles (p50, p95, p99)

    @property
    def items_per_s(self) -> float:
        return self.stats.items_per_s


@dataclass
class JobSpec:
    """One job's parts; the runner does the rest."""

    label: str
    signature: dict  # what produced the output; a resume with another one is refused
    # A listing, or (--follow) an endless source that jobs.follow runs.
    items: Iterable[Item] | FollowSource
    stages: Sequence[Stage]
    to_table: Callable[[Sequence[Record]], pa.Table]
    manifest: dict  # job-specific manifest fields (model, dimension…)


def run_job(job: JobSpec, out: str | Path, *, shard_size: int, limit: int | None,
            overwrite: bool, progress: bool | None = None, engine: Engine | None = None,
            price_per_hour: float | None = None) -> JobResult:
    out_dir = OutputDir(out)
    commits = out_dir.open(job.signature, overwrite)
    done = {i for c in commits for i in c.ids}
    manifest = {**job.manifest, "signature": job.signature, "status": "running"}
    out_dir.write_json(MANIFEST, manifest)

    sink = ParquetShardSink(out_dir, job.to_table, shard_size, out_dir.next_shard_index(commits))
    reasons: Counter[str] = Counter()
    counts = Counter()
    started = time.time()
    with JobProgress(job.label, progress) as bar:
        def consume(records: list[Record]) -> None:
            sink.add(records)
            tally(records, reasons, bar)

        pending = _pending(job.items, done, limit, counts, bar)
        stats = (engine or LocalEngine()).run(pending, job.stages, consume)
        sink.flush()

    commits = out_dir.log.read()
    total_errors = sum(c.errors for c in commits)
    total_rows = sum(len(c.ids) for c in commits)
    manifest.update(status="complete", shards=len(commits),
                    counts={"rows": total_rows, "ok": total_rows - total_errors, "errors": total_errors},
                    finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    out_dir.write_json(MANIFEST, manifest)
    cost = run_cost(stats, price_per_hour) if price_per_hour and stats.items else None
    # A rerun that found everything committed measured nothing: keep the last real run's figures.
    if stats.items or not (out_dir.path / STATS).exists():
        out_dir.write_json(STATS, {**stats.to_dict(), **(cost or {}), "started_at": started,
                                   "skipped_committed": counts["skipped"]})
    return JobResult(out=out_dir.path, ok=sink.rows - sink.errors, errors=sink.errors,
                     skipped=counts["skipped"], duplicates=counts["duplicates"], stats=stats,
                     top_errors=reasons.most_common(5), manifest=manifest, cost=cost)


def run_cost(stats: EngineStats, price_per_hour: float) -> dict:
    """What the run's items cost at ``price_per_hour``: the whole run's time (model setup
    included, as the machine is paid for it) per million items."""
    items_per_s = stats.items / (stats.setup_s + stats.wall_s)
    return {"price_per_hour": price_per_hour,
            "usd_per_million_items": usd_per_million(price_per_hour, items_per_s)}


def _pending(items: Iterable[Item], done: set[str], limit: int | None, counts: Counter,
             bar: JobProgress) -> Iterator[Item]:
    """Items still to do: the first ``limit`` listed, minus committed ids, each id once."""
    seen: set[str] = set()
    for n, item in enumerate(items):
        if limit is not None and n >= limit:
            break
        if item.id in seen:
            counts["duplicates"] += 1
            continue
        seen.add(item.id)
        if item.id in done:
            counts["skipped"] += 1
            continue
        bar.on_listed()
        yield item
    bar.on_listing_done()


def tally(records: Sequence[Record], reasons: Counter, bar: JobProgress) -> None:
    """A chunk of results just handed to the sink: its errors by kind, and the progress bar."""
    failures = [r.error for r in records if r.error is not None]
    reasons.update(reason_kind(e) for e in failures)
    bar.on_done(len(records), len(failures))


def reason_kind(error: str) -> str:
    """Group error messages by stage and kind ("decode: corrupt image"), without details."""
    return ":".join(error.split(":")[:2]).strip()
