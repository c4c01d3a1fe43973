"""The Ray engine: the same stage list as a streaming Ray Data pipeline, on a Ray cluster.

Records enter through a bounded queue fed by the job's listing (so the input is never held
whole: at most a block of listed records at a time), stateless stages (reading, decoding) run as CPU tasks
spread over the cluster, every model stage is an elastic actor pool whose actors each call the
stage's ``setup`` once and own their model, and results stream back to this process, where the
job's sink writes shards and the commit log as with the local engine: the output layout and the
exactly-once resume are the same.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
import pandas as pd
import ray
import ray.data
from ray.data import Datasource
from ray.data.block import BlockMetadata
from ray.data.datasource import ReadTask
from ray.util.queue import Full, Queue

from ..errors import ConfigError
from ..records import Record
from ..stage import Resources, Stage
from .local import apply_to_healthy
from .stats import EngineStats, StageStats

_END = "__mmpipe_end__"
_TASK_CPUS = 1.0  # what Ray Data's own tasks (block cutting) ask for
T = TypeVar("T")
RECORD = "record"


class RayEngine:
    def __init__(self, address: str | None = None, chunk: int = 64, queued_chunks: int = 8):
        self.address = address
        # Records travel in chunks: one queue round trip per chunk, one block per chunk.
        self.chunk = chunk
        self.queued_chunks = queued_chunks
        self.started_ray = False

    def run_once(self, fn: Callable[[], T], resources: Resources) -> T:
        """``fn()`` where a model stage would run (a GPU node when it needs one): the driver
        may have no GPU, as on a KubeRay head."""
        self._connect()
        task = ray.remote(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)(_call)
        try:
            return ray.get(task.remote(fn))
        except ray.exceptions.RayTaskError as exc:
            raise exc.cause from None  # the task's own error (a ConfigError stays one)

    def run(self, records: Iterable[Record], stages: Sequence[Stage],
            consume: Callable[[list[Record]], None]) -> EngineStats:
        self._connect()
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # the job's own bar counts what reaches the sink
            ctx.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            cluster = ray.cluster_resources()
            inbox = Queue(maxsize=self.queued_chunks)
            stop = threading.Event()
            failures: list[BaseException] = []
            feeder = threading.Thread(target=self._feed, args=(records, inbox, stop, failures),
                                      name="mmpipe-ray-feed", daemon=True)
            stats = EngineStats(stages=[StageStats(s.name, _workers(s, cluster)) for s in stages])
            # Ray Data gathers a read task's output into blocks of up to 128 MiB (a whole listing
            # of small records) and would then cut a lone read task's output into 200 pieces;
            # blocks of one chunk each instead give every decode task a useful share.
            ds = ray.data.read_datasource(_QueueSource(inbox), num_cpus=0, override_num_blocks=1)
            ds = ds.repartition(target_num_rows_per_block=self.chunk)
            fit = cpu_fit(stages, cluster.get("CPU", 0))
            for group in _fused(stages):
                ds = _map(ds, group, fit)
            start, cpu_start = time.perf_counter(), time.process_time()
            feeder.start()
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    chunk = list(batch[RECORD])
                    consume(chunk)
                    stats.items += len(chunk)
                    for s in stats.stages:
                        _account(s, batch)
            finally:
                stop.set()
                feeder.join()
            if failures:  # the listing failed: the pipeline ended early, the job must not
                raise failures[0]
            # Actors load their models while the first blocks are already flowing: there is
            # no separate setup phase, so the wall time includes it.
            stats.wall_s = time.perf_counter() - start
            stats.cpu_s = time.process_time() - cpu_start
            return stats
        finally:
            if self.started_ray:
                ray.shutdown()
                self.started_ray = False

    def _connect(self) -> None:
        if not ray.is_initialized():
            self.started_ray = connect(self.address)

    def _feed(self, records: Iterable[Record], inbox: Queue, stop: threading.Event,
              failures: list[BaseException]) -> None:
        def put(value) -> bool:
            while not stop.is_set():
                try:
                    inbox.put(value, timeout=0.5)
                    return True
                except Full:
                    continue
            return False

        chunk: list[Record] = []
        try:
            for record in records:
                chunk.append(record)
                if len(chunk) == self.chunk:
                    if not put(chunk):
                        return
                    chunk = []
            if chunk:
                put(chunk)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread
            failures.append(exc)
        finally:
            put(_END)


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or RAY_ADDRESS, or a running one), else start a local
    one. True when this call started Ray, so the caller shuts it down again."""
    if ray.is_initialized():
        return False
    # Ray's C++ core logs an error line about actor constructor arguments kept in the object
    # store (our stage definitions) on every run; it is not an error for a batch job.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError("--ray-address", f"cannot connect to a Ray cluster at {address!r}: "
                          f"{str(exc).splitlines()[0]}") from None
    return True


def cpu_fit(stages: Sequence[Stage], cpus: float) -> float:
    """The factor on the model stages' CPU requests that leaves room for tasks.

    Model actors hold their CPUs for the whole run; tasks (reading, decoding, and Ray Data's
    own block cutting, which takes a whole CPU) come and go. On a cluster smaller than one actor
    per model stage plus one task (a laptop) the tasks would wait forever, so the actors' requests
    shrink to leave one task's worth free: Ray's CPUs are logical, and the cores are shared as
    the local engine's threads share them. On a cluster big enough the requests stay as the
    stages say.
    """
    task_room = max([_TASK_CPUS] + [s.resources.num_cpus for s in stages if s.stateless])
    actors = sum(s.resources.num_cpus for s in stages if not s.stateless)
    if cpus <= task_room:
        raise ConfigError("--engine", f"the Ray cluster has {cpus:g} CPUs; it needs more than "
                                      f"{task_room:g}")
    return min(1.0, (cpus - task_room) / actors) if actors > 0 else 1.0


def _workers(stage: Stage, cluster: dict) -> int:
    """How many workers a stage can have on the cluster as it is now (for busy shares)."""
    if stage.stateless:
        return max(1, int(cluster.get("CPU", 1) / max(stage.resources.num_cpus, 0.01)))
    if stage.resources.num_gpus:
        return max(1, int(cluster.get("GPU", 0) / stage.resources.num_gpus))
    return stage.concurrency


def _fused(stages: Sequence[Stage]) -> list[list[Stage]]:
    """Consecutive stateless stages run in one task (reading then decoding a block, with no
    trip through the object store between them); each model stage is a group of its own."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if stage.stateless and groups and groups[-1][-1].stateless:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def _map(ds: ray.data.Dataset, group: list[Stage], fit: float) -> ray.data.Dataset:
    cpus = max(s.resources.num_cpus for s in group) * (1.0 if group[0].stateless else fit)
    args = dict(batch_format="numpy", zero_copy_batch=True, num_cpus=cpus)
    if group[0].stateless:
        # Whole blocks: per-item stages gain nothing from smaller calls. No concurrency cap:
        # tasks spread over every free CPU, as many as the cluster has.
        return ds.map_batches(_StatelessStages(group), batch_size=None, **args)
    stage = group[0]
    if stage.resources.num_gpus:
        # No upper bound: the pool grows with the GPUs an autoscaling cluster adds.
        args["num_gpus"] = stage.resources.num_gpus
        pool = ray.data.ActorPoolStrategy(min_size=1)
    else:
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=stage.concurrency)
    # max_restarts: a replica lost with its node (preemption, OOM) is restarted and reloads its
    # model. Setting it also keeps Ray Data from fusing CPU decoding into the model's actors,
    # where it would run in turn with the forward pass instead of beside it. Ray 2.60 has no
    # named parameter for it yet and warns about the generic ones; the pinned version works.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(_StatefulStage, fn_constructor_args=(stage,), batch_size=stage.batch_size,
                              compute=pool, max_restarts=-1, **args)


def _call(fn: Callable[[], T]) -> T:
    return fn()


class _StatelessStages:
    """Runs as a plain task: each stage's ``setup`` is cheap, so it is called per block."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages

    def __call__(self, batch: dict) -> dict:
        for stage in self.stages:
            batch = _apply(stage.name, stage.setup(), batch)
        return batch


class _StatefulStage:
    """One actor of a model stage's pool: ``setup`` (the model) once, then batch after batch."""

    def __init__(self, stage: Stage):
        self.name = stage.name
        self.fn = stage.setup()

    def __call__(self, batch: dict) -> dict:
        return _apply(self.name, self.fn, batch)


def _apply(name: str, fn, batch: dict) -> dict:
    """The stage on a batch of records, with its busy time and healthy count riding along as
    columns so that the driver can account per-stage throughput like the local engine."""
    records = list(batch[RECORD])
    healthy = np.array([r.error is None for r in records])
    t0 = time.perf_counter()
    out = apply_to_healthy(name, fn, records) if healthy.any() else records
    busy = time.perf_counter() - t0
    column = np.empty(len(out), dtype=object)
    column[:] = out
    return {**batch, RECORD: column, f"busy:{name}": np.full(len(out), busy / max(len(out), 1)),
            f"healthy:{name}": healthy, f"batch:{name}": np.full(len(out), 1 / max(len(out), 1))}


def _account(stats: StageStats, batch: dict) -> None:
    stats.busy_s += float(batch[f"busy:{stats.name}"].sum())
    stats.items += int(batch[f"healthy:{stats.name}"].sum())
    stats.batches += round(float(batch[f"batch:{stats.name}"].sum()))


class _QueueSource(Datasource):
    """One read task that streams chunks of records out of a queue actor as blocks."""

    def __init__(self, inbox: Queue):
        self.inbox = inbox

    def estimate_inmemory_data_size(self) -> None:
        return None  # unknown: the listing is still running

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        inbox = self.inbox
        meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(lambda: _read_chunks(inbox), meta)]


def _read_chunks(inbox: Queue):
    while True:
        chunk = inbox.get()
        if isinstance(chunk, str) and chunk == _END:
            return
        column = np.empty(len(chunk), dtype=object)
        column[:] = chunk
        yield pd.DataFrame({RECORD: column})
