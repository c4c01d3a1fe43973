"""What ``mmpipe tune`` leaves behind: a terminal table, tune.json, tune.csv, a Pareto plot
(throughput against p99) and best.yaml, the winning configuration as its command's --config."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import yaml
from rich import box
from rich.table import Table

from .sweep import Trial

_FIGURES = {"items_per_s": "items/s", "p50_ms": "p50", "p99_ms": "p99", "peak_mib": "MiB",
            "usd_per_million_items": "$/M items"}


def table(trials: Sequence[Trial], task: str, best: Trial | None) -> Table:
    keys = _config_keys(trials)
    figures = _figures(trials)
    accuracy = sorted({k for t in trials for k in t.accuracy})
    out = Table(title=f"mmpipe tune: {task}", box=box.SIMPLE_HEAD, show_edge=False,
                caption="p50/p99: per batch (jobs) or per request (serve), ms; ★ best.yaml")
    for name in ["", *keys, *(_FIGURES[f] for f in figures), *accuracy, "status"]:
        out.add_column(name, justify="left" if name in ("status", "") else "right")
    for t in trials:
        status = t.status if not t.reason else f"{t.status}: {t.reason}"
        out.add_row("★" if t is best else "", *[_cell(t.config.get(k)) for k in keys],
                    *[_cell(getattr(t, f)) for f in figures], *[_cell(t.accuracy.get(k)) for k in accuracy],
                    status, style={"ok": None, "skipped": "dim", "gate_failed": "red", "error": "red"}[t.status])
    return out


def _figures(trials: Sequence[Trial]) -> list[str]:
    """The figure columns: the cost only when the sweep had a price."""
    return [f for f in _FIGURES if f != "usd_per_million_items" or any(t.usd_per_million_items for t in trials)]


def write_json(trials: Sequence[Trial], meta: dict, path: Path) -> Path:
    path.write_text(json.dumps({**meta, "trials": [t.to_dict() for t in trials]}, indent=2) + "\n")
    return path


def write_csv(trials: Sequence[Trial], path: Path) -> Path:
    keys = _config_keys(trials)
    accuracy = sorted({k for t in trials for k in t.accuracy})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        figures = _figures(trials)
        w.writerow([*keys, *figures, *accuracy, "status", "reason"])
        for t in trials:
            w.writerow([*[t.config.get(k) for k in keys], *[getattr(t, f) for f in figures],
                        *[t.accuracy.get(k) for k in accuracy], t.status, t.reason or ""])
    return path


def write_best(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pareto(trials: Sequence[Trial]) -> list[Trial]:
    """Measured trials no other beats on both throughput (higher) and p99 (lower)."""
    ok = [t for t in trials if t.status == "ok" and t.p99_ms is not None]
    return [t for t in ok if not any(o.items_per_s >= t.items_per_s and o.p99_ms <= t.p99_ms
                                     and (o.items_per_s, o.p99_ms) != (t.items_per_s, t.p99_ms)
                                     for o in ok)]


def plot(trials: Sequence[Trial], task: str, path: Path) -> Path:
    """Throughput against p99 for every measured trial, the Pareto front joined, gate failures
    as x on the axis (they were never run, so they have no figures)."""
    # The figure's own Agg canvas, as in loadtest.plot: no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ok = [t for t in trials if t.status == "ok" and t.p99_ms is not None]
    ax.scatter([t.p99_ms for t in ok], [t.items_per_s for t in ok], color="tab:blue", label="measured")
    front = sorted(pareto(trials), key=lambda t: t.p99_ms)
    ax.plot([t.p99_ms for t in front], [t.items_per_s for t in front], "-o", color="tab:orange",
            label="Pareto front")
    for t in front:
        ax.annotate(label(t.config), (t.p99_ms, t.items_per_s), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    failed = [t for t in trials if t.status == "gate_failed"]
    if failed:
        x = min((t.p99_ms for t in ok), default=1.0)
        ax.scatter([x] * len(failed), [0] * len(failed), marker="x", color="tab:red", s=60,
                   label="refused by the accuracy gate: " + "; ".join(label(t.config) for t in failed))
    ax.set(xlabel="p99 latency (ms; per batch for jobs, per request for serve)", ylabel="items/s",
           title=f"mmpipe tune: {task}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def _config_keys(trials: Sequence[Trial]) -> list[str]:
    return list(dict.fromkeys(k for t in trials for k in t.config))


def label(config: dict) -> str:
    return " ".join(f"{v}" if k in ("precision", "runtime") else f"{k}={v}" for k, v in config.items())


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1.5 else f"{value:,.1f}"
    return str(value)
