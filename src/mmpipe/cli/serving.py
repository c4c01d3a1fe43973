"""Serving: `mmpipe serve`, `mmpipe route` and `mmpipe loadtest`."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from ..config import default
from ..extras import require
from ..serve.config import Embeddings, Moderation, ServeConfig
from ..serve.route_config import RouteConfig
from .common import err


def serve(
    config: Optional[str] = typer.Option(None, help="Serve config YAML (models, batching, replicas, limits)."),
    host: Optional[str] = typer.Option(None, help="Address to listen on "
                                                  f"(default: {default(ServeConfig, 'host')})."),
    port: Optional[int] = typer.Option(None, help=f"Port (default: {default(ServeConfig, 'port')})."),
    policy: Optional[str] = typer.Option(None, help="Moderation policy YAML (default: the shipped policy)."),
    embedding_model: Optional[str] = typer.Option(
        None, help="CLIP model for /v1/embeddings: path:DIR, hf:REPO or random:ViT-B-32 (default: none)."),
    search_index: Optional[str] = typer.Option(
        None, help="Index folder (made by 'mmpipe index') for /v1/search; its model also serves "
                   "/v1/embeddings unless --embedding-model names one (default: none)."),
    max_batch_size: Optional[int] = typer.Option(None, help="Largest dynamic batch (default: "
                                                 f"{default(Moderation, 'max_batch_size')}, embeddings "
                                                 f"{default(Embeddings, 'max_batch_size')})."),
    max_wait_ms: Optional[float] = typer.Option(None, help="How long a request waits for others "
                                                f"(default: {default(Moderation, 'max_wait_ms'):g})."),
    replicas: Optional[int] = typer.Option(None, help="Workers sharing one copy of the weights "
                                           f"(default: {default(Moderation, 'replicas')})."),
    max_inflight_per_replica: Optional[int] = typer.Option(
        None, help="Requests one batch may hold (1: one at a time) (default: no limit)."),
) -> None:
    """Serve /v1/moderations and /v1/embeddings (OpenAI schema), and /v1/search, with the batch
    jobs' models."""
    require("mmpipe serve", "serve")
    import uvicorn

    from ..serve.app import create_app
    from ..serve.config import load_serve_config
    from ..serve.embeddings import variant_line

    cfg = load_serve_config(config, host=host, port=port, policy=policy, embedding_model=embedding_model,
                            search_index=search_index, max_batch_size=max_batch_size,
                            max_wait_ms=max_wait_ms, replicas=replicas,
                            max_inflight_per_replica=max_inflight_per_replica)
    err.print("loading models…", markup=False)
    app_ = create_app(cfg)
    if app_.state.embeddings:
        err.print(variant_line(app_.state.embeddings), markup=False)
    routes = "/v1/moderations" + (", /v1/embeddings" if cfg.embeddings or cfg.search else "") \
        + (", /v1/search" if cfg.search else "")
    err.print(f"serving {routes} on http://{cfg.host}:{cfg.port} (metrics: /metrics)", markup=False)
    uvicorn.run(app_, host=cfg.host, port=cfg.port, log_level="warning")


def loadtest(
    url: str = typer.Argument(..., help="Server base URL, e.g. http://127.0.0.1:8000 (…/v1 works too)."),
    endpoint: str = typer.Option("moderations", help="moderations or embeddings."),
    rate: float = typer.Option(10.0, help="Offered load in requests/s (Poisson arrivals)."),
    duration: float = typer.Option(10.0, help="Seconds of measured arrivals at each rate."),
    sweep: Optional[str] = typer.Option(None, help="Rates to run in turn, e.g. 5,10,20 (overrides --rate)."),
    json_path: str = typer.Option("loadtest.json", "--json", help="Where to write the results."),
    plot_path: str = typer.Option("loadtest.png", "--plot", help="Where to write the latency-vs-load plot (PNG)."),
    timeout: float = typer.Option(30.0, help="Seconds a request may take, from its scheduled send time."),
    warmup: float = typer.Option(0.0, help="Seconds of load sent first and left out of the results."),
    seed: int = typer.Option(0, help="Seed of the arrival times."),
    model: Optional[str] = typer.Option(None, help="model field of every request (default: the server's)."),
    input_file: Optional[str] = typer.Option(None, help="Payloads: request bodies (.jsonl) or one text per "
                                             "line (default: built-in texts)."),
    batch: int = typer.Option(1, help="Texts per request."),
    connections: int = typer.Option(1024, help="Most connections open at once, each with one request "
                                    "in flight; a request waits for a free one, in its latency."),
    progress: Optional[bool] = typer.Option(None, help="Progress bar (default: on a terminal)."),
) -> None:
    """Open-loop load test of a server: Poisson arrivals at fixed rates; throughput, latency, errors."""
    require("mmpipe loadtest", "serve")
    from .. import loadtest as lt

    rates = lt.parse_rates(sweep) if sweep is not None else [rate]
    payloads = lt.load_payloads(input_file) if input_file else None
    results = lt.run_sweep(url, endpoint, rates, duration, payloads=payloads, model=model, batch=batch,
                           timeout_s=timeout, warmup_s=warmup, seed=seed, connections=connections,
                           progress=progress)
    Console().print(lt.summary_table(results))
    for line in lt.problems(results):
        err.print(f"warning: {line}", style="yellow", markup=False)
    err.print(f"results: {lt.write_json(results, json_path)}, plot: {lt.plot(results, plot_path)}",
              markup=False)


def route(
    config: str = typer.Option(..., help="Route config YAML: backends in order of preference, "
                                         "spill threshold, probes."),
    host: Optional[str] = typer.Option(None, help="Address to listen on "
                                                  f"(default: {default(RouteConfig, 'host')})."),
    port: Optional[int] = typer.Option(None, help=f"Port (default: {default(RouteConfig, 'port')})."),
) -> None:
    """Route OpenAI-style requests over several mmpipe servers: preferred first, spill when busy, fail over."""
    require("mmpipe route", "serve")
    import uvicorn

    from ..serve.route_config import load_route_config
    from ..serve.router import create_router_app

    cfg = load_route_config(config, host=host, port=port)
    err.print(f"routing to {', '.join(b.name for b in cfg.backends)} on http://{cfg.host}:{cfg.port} "
              "(state: /routes)", markup=False)
    uvicorn.run(create_router_app(cfg), host=cfg.host, port=cfg.port, log_level="warning")
