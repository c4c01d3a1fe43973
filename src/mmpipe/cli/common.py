"""What the commands share: the error console, the --config help, a job's options from its flags, the summaries they print."""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console

# typer vendors its own click; its exception classes are only reachable here.
from typer._click.core import ParameterSource

from ..jobs.runner import JobResult

err = Console(stderr=True, highlight=False, soft_wrap=True)
CONFIG_HELP = ("YAML mapping of this command's options (names with underscores, e.g. batch_size: 32), "
               "such as the best.yaml of 'mmpipe tune'; flags given here win over it.")


def auto(options: dict) -> dict:
    """``options`` without the flags left at None, whose config default is worked out then
    (the cores of the machine the job runs on)."""
    return {k: v for k, v in options.items() if not (k == "decode_workers" and v is None)}


def given(ctx: typer.Context) -> set[str]:
    """The job options set on the command line, which win over a --config file's."""
    names = {n for n in ctx.params if ctx.get_parameter_source(n) is not ParameterSource.DEFAULT}
    return names | ({"storage_options"} if "storage_option" in names else set())


@contextmanager
def following(follow: bool) -> Iterator[None]:
    """A follower runs for days: what it logs (partitions handed over, brokers away) goes to
    stderr with the time. It is stopped with SIGTERM, also while its models still load: nothing
    is read or written yet then, so it exits 0 at once (an exception raised into an import that
    is under way would break the import, not stop the command). jobs.follow takes the signal over
    once it follows."""
    if not follow:
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("mmpipe")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def early(signum, frame) -> None:
        err.print("mmpipe: stopped (SIGTERM); what was committed stays, the same command goes on from there")
        os._exit(0)

    before = signal.signal(signal.SIGTERM, early)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def parse_storage_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, not {pair!r}", param_hint="'--storage-option'")
        options[key] = value
    return options


def print_summary(verb: str, result: JobResult) -> None:
    random = " [yellow](random weights: benchmark only, not meaningful)[/]" if result.manifest.get("random_weights") else ""
    err.print(f"{verb} {result.ok + result.errors} items: {result.ok} ok, {result.errors} errors, "
              f"{result.items_per_s:.1f} items/s"
              + (f", {result.skipped} already done" if result.skipped else "")
              + (f", {result.duplicates} duplicate ids ignored" if result.duplicates else "")
              + f" → {result.out}{random}")
    if result.latency_s:
        err.print("latency (arrival → shard committed): " + ", ".join(
            f"{q} {v:.2f} s" for q, v in result.latency_s.items()), markup=False)
    if result.cost:
        err.print(f"cost: ${result.cost['usd_per_million_items']:,.4g} per million items at "
                  f"${result.cost['price_per_hour']:g}/h (the whole run, model setup included)", markup=False)
    for reason, count in result.top_errors:
        err.print(f"  {count} × {reason}")


def print_moderation(result: JobResult) -> None:
    actions = result.manifest.get("actions", {})
    err.print("actions: " + ", ".join(f"{actions.get(a, 0)} {a}" for a in ("allow", "review", "block"))
              + f"; review queue: {result.out / 'review.jsonl'}", markup=False)
    err.print(f"report: {result.out / 'report.html'}", markup=False)
