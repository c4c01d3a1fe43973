"""``mmpipe.tune(...)``: sweep one task's configurations on sample data and write the results."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..config import job_flag, validate
from . import report
from .sweep import Trial, TuneOptions, best, sweep
from .trials import TASKS, scratch


@dataclass
class TuneResult:
    out: Path
    trials: list[Trial]
    best: Trial | None
    best_config: dict | None  # what best.yaml holds; None when nothing passed
    files: dict[str, Path]


def tune(model: str, task: str, *, progress: bool | None = None, **options) -> TuneResult:
    """Measure configurations of ``task`` (embed, moderate or serve) for ``model`` within
    ``budget_minutes`` and write tune.json, tune.csv, pareto.png and best.yaml into ``out``
    (default ./tune-<task>). Options are the fields of ``TuneOptions``."""
    opts = validate(TuneOptions, {"model": model, "task": task, **options}, flag_of=job_flag)
    out = opts.out_dir
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, highlight=False, soft_wrap=True, quiet=progress is False)
    started = time.monotonic()
    with console.status(f"tune {opts.task}: preparing sample data and the model…"):
        job = TASKS[opts.task](opts, scratch(out))
    trials: list[Trial] = []

    def show(t: Trial) -> None:
        figures = (f"{t.items_per_s:,.1f} items/s, p50 {t.p50_ms} ms, p99 {t.p99_ms} ms, {t.peak_mib} MiB"
                   + (f", ${t.usd_per_million_items:,.4g} per million items" if t.usd_per_million_items else "")
                   if t.status == "ok" else f"{t.status}: {t.reason}")
        console.print(f"[{len(trials)}] {report.label(t.config) or 'default'}: {figures}", markup=False)

    try:
        sweep(job, opts.budget_minutes * 60 - (time.monotonic() - started),
              on_trial=lambda t: (trials.append(t), show(t)), price_per_hour=opts.price_per_hour)
    finally:  # an interrupted sweep still leaves what it measured
        winner = best(trials, by_cost=opts.price_per_hour is not None)
        chosen = job.best_config(winner.config) if winner else None
        meta = {"task": opts.task, "model": opts.model, "options": opts.model_dump(mode="json"),
                "best": chosen, "elapsed_s": round(time.monotonic() - started, 1)}
        files = {"json": report.write_json(trials, meta, out / "tune.json"),
                 "csv": report.write_csv(trials, out / "tune.csv"),
                 "plot": report.plot(trials, opts.task, out / "pareto.png")}
        (out / "best.yaml").unlink(missing_ok=True)  # never leave an earlier sweep's winner
        if chosen is not None:
            files["best"] = report.write_best(chosen, out / "best.yaml")
    terminal = Console(quiet=progress is False)
    if not terminal.is_terminal:  # a log file: wide enough that the reasons stay on one line
        terminal.width = 180
    terminal.print(report.table(trials, opts.task, winner))
    return TuneResult(out, trials, winner, chosen, files)
