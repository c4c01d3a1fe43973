"""A load test's results as JSON, a plot, a table and the sentences that warn about them."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rich import box
from rich.table import Table

from .results import LoadResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def write_json(results: Sequence[LoadResult], path: str | Path) -> Path:
    """``{"results": [LoadResult as a dict, …]}``, indented; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": [asdict(r) for r in results]}, indent=2) + "\n")
    return path


def plot(results: Sequence[LoadResult], path: str | Path) -> Path:
    """A PNG of latency (p50/p90/p99 of 200 answers) and achieved throughput against offered
    load, above the share of non-200 answers by kind; returns the path."""
    # The figure's own Agg canvas, not pyplot: no global backend switch, no GUI, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("no results to plot")
    runs = sorted(results, key=lambda r: r.offered_rate)
    fig = Figure(figsize=(9.5, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    _plot_latency(top, runs)
    _plot_errors(bottom, runs)
    behind = [f"{r.offered_rate:g}" for r in runs if r.client_behind]
    fig.suptitle(f"{runs[0].endpoint} load test: {runs[0].url}"
                 + (f"\nthe client fell behind at {', '.join(behind)} req/s" if behind else ""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def summary_table(results: Sequence[LoadResult]) -> Table:
    """One row per rate: throughput, latency of 200 answers, sending lag, status counts."""
    title = f"{results[0].endpoint} load test: {results[0].url}" if results else None
    table = Table(title=title, caption="rate: offered requests/s; latency of 200 answers and lag in ms",
                  box=box.SIMPLE_HEAD, collapse_padding=True, show_edge=False)
    for name in ("rate", "sent", "200/s", "p50", "p90", "p99", "max", "non-200", "lag p99"):
        table.add_column(name, justify="right")
    table.add_column("statuses")
    for r in results:
        lat, lag = r.ok_latency, _ms(r.lag_p99_ms)
        table.add_row(f"{r.offered_rate:g}", str(r.sent), f"{r.throughput:.1f}",
                      *(_ms(v) for v in (lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.max_ms)),
                      f"{r.non_200_share:.1%}", f"[red]{lag}[/]" if r.client_behind else lag,
                      ", ".join(f"{k}: {v}" for k, v in r.statuses.items()))
    return table


def problems(results: Sequence[LoadResult]) -> list[str]:
    """Sentences about runs whose numbers need care: a client that fell behind, no 200 at all."""
    lines = []
    for r in results:
        if r.client_behind:
            lines.append(f"at {r.offered_rate:g} req/s the client fell behind its schedule (lag p90 "
                         f"{r.lag_p90_ms:.1f} ms, max {r.lag_max_ms:.1f} ms): this machine cannot send "
                         "that fast, so latencies include its own delay; use a lower rate or more clients")
        if r.sent and not r.statuses.get("200"):
            lines.append(f"at {r.offered_rate:g} req/s no request got a 200 ("
                         + ", ".join(f"{k}: {v}" for k, v in r.statuses.items()) + ")")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _plot_latency(ax: Axes, runs: Sequence[LoadResult]) -> None:
    rates = [r.offered_rate for r in runs]
    for name, style, color in (("p50", "-", "tab:blue"), ("p90", "--", "tab:orange"), ("p99", ":", "tab:red")):
        values = [getattr(r.ok_latency, f"{name}_ms") for r in runs]
        ax.plot(rates, [math.nan if v is None else v for v in values], style, color=color, marker="o",
                label=f"{name} latency")
    ax.set_ylabel("latency of 200 answers (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.plot(rates, [r.throughput for r in runs], color="black", marker="s", label="throughput (200/s)")
    # What was sent, not the nominal rate: a Poisson sample of a short run is off by a few percent.
    right.plot(rates, [r.sent / r.duration_s for r in runs], color="gray", linestyle=":",
               label="sent/s (ideal throughput)")
    right.set_ylabel("requests/s")
    right.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    # Outside the axes: a rising throughput line and flat latencies would both run under it.
    ax.figure.legend(handles + more_handles, labels + more_labels, loc="outside right upper",
                     fontsize="small")


def _plot_errors(ax: Axes, runs: Sequence[LoadResult]) -> None:
    rates = [r.offered_rate for r in runs]
    kinds = sorted({k for r in runs for k in r.statuses if k != "200"})
    for kind in kinds:
        ax.plot(rates, [100 * r.statuses.get(kind, 0) / max(r.sent, 1) for r in runs], marker="o", label=kind)
    if not kinds:
        ax.plot(rates, [0.0] * len(rates), marker="o", color="tab:gray", label="none")
    ax.set_ylabel("non-200 (%)")
    ax.set_ylim(0, 105)
    ax.set_xlim(left=0)
    ax.set_xlabel("offered load (requests/s)")
    ax.grid(alpha=0.3)
    ax.figure.legend(*ax.get_legend_handles_labels(), title="non-200", loc="outside right lower",
                     fontsize="small")
