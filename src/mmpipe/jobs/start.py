"""From a job's config to its input and the runner that fits it: the batch runner for a listing,
the follower (jobs.follow) for ``--follow``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..engine import Engine
from ..records import Item
from ..sources import open_source
from ..sources.follow import FolderFollower, FollowSource
from ..sources.kafka_url import is_kafka, parse_kafka_url
from .config import KAFKA_PARAMS, JobConfig
from .follow import follow_job
from .runner import JobResult, JobSpec, run_job

if TYPE_CHECKING:
    from ..sinks.kafka_emit import DecisionEmitter


def job_input(cfg: JobConfig, kinds: frozenset[str] = frozenset({"image"})) -> Iterable[Item] | FollowSource:
    options = cfg.source_options(kinds)
    if cfg.follow and is_kafka(cfg.input):
        from ..sources.kafka import KafkaFollower

        return KafkaFollower(parse_kafka_url(cfg.input, "INPUT", KAFKA_PARAMS), cfg.kafka_value, options,
                             poll_s=cfg.poll_s)
    if cfg.follow:
        return FolderFollower(cfg.input, options, settle_s=cfg.settle_s, poll_s=cfg.poll_s)
    return open_source(cfg.input, options)


def run_configured(job: JobSpec, cfg: JobConfig, engine: Engine, progress: bool | None,
                   emitter: DecisionEmitter | None = None, stop: threading.Event | None = None) -> JobResult:
    if isinstance(job.items, FollowSource):
        return follow_job(job, job.items, Path(cfg.out), shard_size=cfg.shard_size,
                          shard_seconds=cfg.shard_seconds, overwrite=cfg.overwrite,
                          progress=progress, engine=engine, price_per_hour=cfg.price_per_hour,
                          metrics_port=cfg.metrics_port, emitter=emitter, stop=stop)
    return run_job(job, Path(cfg.out), shard_size=cfg.shard_size, limit=cfg.limit,
                   overwrite=cfg.overwrite, progress=progress, engine=engine,
                   price_per_hour=cfg.price_per_hour)
