"""`mmpipe tune`."""

from __future__ import annotations

from typing import Optional

import typer

from ..config import default
from ..extras import require
from ..tune.sweep import TuneOptions
from .common import err

# What each task of `mmpipe tune` runs needs, beyond the tune extra.
TUNE_EXTRAS = {"moderate": ("moderate",), "serve": ("serve",)}


def tune(
    model: str = typer.Option(..., help="The model to tune: a CLIP spec for embed and serve "
                              "(path:DIR, hf:REPO, random:ViT-B-32); for moderate, any label (its models "
                              "come from the policy)."),
    task: str = typer.Option(..., help="embed, moderate or serve."),
    budget_minutes: float = typer.Option(default(TuneOptions, "budget_minutes"),
                                         help="Stop starting trials after this long."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Results folder (default: ./tune-TASK)."),
    items: int = typer.Option(default(TuneOptions, "items"), help="Sample items each job trial runs on."),
    device: str = typer.Option(default(TuneOptions, "device"), help="cpu, cuda or cuda:N."),
    min_cosine: float = typer.Option(default(TuneOptions, "min_cosine"),
                                     help="Embedding accuracy gate (mean cosine to eager fp32)."),
    rate: float = typer.Option(default(TuneOptions, "rate"),
                               help="serve: offered requests/s (Poisson) in every trial."),
    price_per_hour: Optional[float] = typer.Option(None, help="What the machine costs, USD an hour: each "
                                                   "trial gets its cost per million items, and the cheapest wins."),
    progress: Optional[bool] = typer.Option(None, help="A line per trial on stderr (default: on)."),
) -> None:
    """Sweep batch size, precision/runtime, workers, threads and replicas; write tune.json/csv, a
    Pareto plot and best.yaml (for embed/moderate/serve --config)."""
    require("mmpipe tune", "tune", *TUNE_EXTRAS.get(task, ()))
    from ..tune.run import tune as run

    result = run(model, task, budget_minutes=budget_minutes, out=out, items=items, device=device,
                 min_cosine=min_cosine, rate=rate, price_per_hour=price_per_hour, progress=progress)
    err.print(f"results: {result.out}; "
              + (f"best: {result.files['best']}" if result.best else "no configuration passed"), markup=False)
