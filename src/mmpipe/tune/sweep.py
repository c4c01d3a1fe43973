"""``mmpipe tune``: measure a task's configurations one after another and keep the best.

The search is greedy so that a sweep fits its budget. Each variant (a precision/runtime, measured
against the accuracy gate first) grows its batch size until throughput stops improving by more
than ``GAIN``; a variant measured after the first skips batch sizes far below the best one so far.
Then single changes of the other settings (workers, threads, replicas …) are tried around the best
point. Everything not measured is recorded with the reason, as is every gate failure.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import default
from ..engine.stats import usd_per_million
from ..errors import ConfigError
from ..models.accuracy import Gate

GAIN = 0.05  # a larger batch must beat the last one by this much, or the growth stops
FAR_BELOW = 4  # batch sizes below best / FAR_BELOW are not tried for later variants
Status = Literal["ok", "gate_failed", "skipped", "error"]


@dataclass(frozen=True)
class Measurement:
    items_per_s: float
    p50_ms: float | None  # per batch (jobs) or per request (serve)
    p99_ms: float | None
    peak_mib: float


@dataclass
class Trial:
    """One row of tune.json / tune.csv."""

    config: dict  # the settings tried, named as the task's config fields
    status: Status
    reason: str | None = None
    items_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_mib: float | None = None
    accuracy: dict = field(default_factory=dict)  # the variant's figures against fp32
    usd_per_million_items: float | None = None  # at the sweep's --price-per-hour, when given

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Gated:
    """A variant's accuracy figures and, when it is refused, why."""

    accuracy: dict
    failure: str | None = None


@dataclass(frozen=True)
class Task:
    """What ``sweep`` needs to know about one kind of workload."""

    name: str
    variants: list[dict]  # settings that change the model's numbers, gated before use
    batch_field: str
    batch_sizes: list[int]
    extras: list[dict]  # single changes tried around the best point
    gate: Callable[[dict], Gated]
    measure: Callable[[dict], Measurement]
    best_config: Callable[[dict], dict]  # a trial's config as the YAML its command's --config takes


class TuneOptions(BaseModel):
    """``mmpipe tune``'s options; field names are its flags with dashes."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    task: Literal["embed", "moderate", "serve"]
    budget_minutes: float = Field(10.0, gt=0, le=24 * 60)
    out: str | None = None  # default: ./tune-<task>
    items: int = Field(64, ge=4, le=100_000)  # sample items per job trial
    device: str = "cpu"
    min_cosine: float = Field(default(Gate, "min_mean_cosine"), ge=-1, le=1)  # the embedding accuracy gate
    rate: float = Field(20.0, gt=0)  # serve: offered requests/s
    seconds: float = Field(3.0, gt=0)  # serve: measured seconds per trial
    # Restrict the sweep (tests, quick looks): "fp32 eager", "int8 onnx" …; batch sizes to try.
    variants: list[str] | None = None
    batch_sizes: list[int] | None = None
    # USD an hour for the machine: trials then get a cost per million items and are ranked by it.
    price_per_hour: float | None = Field(None, gt=0)

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"tune-{self.task}")


def sweep(task: Task, budget_s: float, on_trial: Callable[[Trial], None] = lambda t: None,
          price_per_hour: float | None = None) -> list[Trial]:
    """Every trial of ``task`` in the order run; stops measuring when ``budget_s`` runs out. With
    ``price_per_hour`` each measured trial gets its cost per million items, and the best point
    that single changes are tried around is the cheapest."""
    deadline = time.monotonic() + budget_s
    trials: list[Trial] = []
    leading = partial(best, by_cost=price_per_hour is not None)

    def record(trial: Trial) -> Trial:
        trials.append(trial)
        on_trial(trial)
        return trial

    def run(config: dict, accuracy: dict) -> Trial:
        if time.monotonic() > deadline:
            return record(Trial(config, "skipped", "budget spent", accuracy=accuracy))
        try:
            m = task.measure(config)
        except Exception as exc:  # noqa: BLE001 - one broken configuration is a row, not the end
            return record(Trial(config, "error", f"{type(exc).__name__}: {exc}", accuracy=accuracy))
        cost = usd_per_million(price_per_hour, m.items_per_s) if price_per_hour else None
        return record(Trial(config, "ok", None, m.items_per_s, m.p50_ms, m.p99_ms, m.peak_mib, accuracy, cost))

    for variant in task.variants:
        if time.monotonic() > deadline:
            record(Trial(variant, "skipped", "budget spent"))
            continue
        try:
            gated = task.gate(variant)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot be built is a row too
            record(Trial(variant, "error", f"{type(exc).__name__}: {exc}"))
            continue
        if gated.failure:
            record(Trial(variant, "gate_failed", gated.failure, accuracy=gated.accuracy))
            continue
        leader = leading(trials)
        floor = leader.config[task.batch_field] / FAR_BELOW if leader else 0
        last: Trial | None = None  # this variant's last measured batch size
        stopped: str | None = None
        for size in task.batch_sizes:
            config = {**variant, task.batch_field: size}
            if size < floor:
                record(Trial(config, "skipped", "dominated: far below the best batch size so far, "
                                                f"{leader.config[task.batch_field]}", accuracy=gated.accuracy))
            elif stopped:
                record(Trial(config, "skipped", stopped, accuracy=gated.accuracy))
            else:
                trial = run(config, gated.accuracy)
                if trial.status == "skipped":  # the budget ran out
                    stopped = trial.reason
                elif trial.status == "error":  # e.g. out of memory: larger batches would fail too
                    stopped = f"not grown past {task.batch_field} {size}, which failed"
                elif last is not None and not _improves(trial, last):
                    stopped = (f"dominated: {task.batch_field} {size} was not > {GAIN:.0%} better "
                               f"than {last.config[task.batch_field]}")
                last = trial
    leader = leading(trials)
    if leader is not None:
        for extra in task.extras:
            config = {**leader.config, **extra}
            if not any(t.config == config for t in trials):
                run(config, leader.accuracy)
    return trials


def _improves(new: Trial, old: Trial) -> bool:
    """``new`` is faster than ``old`` by more than GAIN, or as fast with a clearly lower p99."""
    if new.status != "ok":
        return False
    if new.items_per_s > old.items_per_s * (1 + GAIN):
        return True
    return (new.items_per_s >= old.items_per_s * (1 - GAIN) and new.p99_ms is not None
            and old.p99_ms is not None and new.p99_ms < old.p99_ms * (1 - GAIN))


def best(trials: list[Trial], by_cost: bool = False) -> Trial | None:
    """The lowest p99 among the measured trials within GAIN of the highest throughput (at a fixed
    offered rate, every configuration that keeps up has the same throughput); ``by_cost``: the
    lowest cost per million items, then the lowest p99."""
    ok = [t for t in trials if t.status == "ok" and t.items_per_s]
    if not ok:
        return None
    if by_cost:
        return min(ok, key=lambda t: (t.usd_per_million_items, t.p99_ms if t.p99_ms is not None else float("inf")))
    top = max(t.items_per_s for t in ok)
    near = [t for t in ok if t.items_per_s >= top * (1 - GAIN)]
    return min(near, key=lambda t: (t.p99_ms if t.p99_ms is not None else float("inf"), -t.items_per_s))


def parse_variants(names: list[str]) -> list[dict]:
    """``["int8 onnx"]`` → ``[{"precision": "int8", "runtime": "onnx"}]``."""
    out = []
    for name in names:
        parts = name.split()
        if len(parts) != 2:
            raise ConfigError("--variants", f"expected 'PRECISION RUNTIME' like 'int8 onnx', not {name!r}")
        out.append({"precision": parts[0], "runtime": parts[1]})
    return out
