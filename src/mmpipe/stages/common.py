"""Pieces every job's stage list uses: per-item error isolation and the read stage."""

from __future__ import annotations

from typing import Callable, Sequence

from ..records import Record, failed
from ..sources.options import read_item
from ..stage import Resources, Stage


def per_item(stage: str, fn: Callable[[Record], Record]):
    """A batch function that applies ``fn`` to each record, turning its failure into an error row."""
    def run(batch: Sequence[Record]) -> list[Record]:
        out = []
        for record in batch:
            try:
                out.append(fn(record))
            except (OSError, ValueError, EOFError) as exc:
                out.append(failed(record, f"{stage}: {exc}"))
            except Exception as exc:  # noqa: BLE001 - one bad item never fails the job
                out.append(failed(record, f"{stage}: {type(exc).__name__}: {exc}"))
        return out
    return run


def read_stage(workers: int) -> Stage:
    # Reading waits on disks and networks, not CPUs: many threads, a small CPU share each.
    return Stage("read", lambda: per_item("read", read_item), concurrency=workers,
                 resources=Resources(num_cpus=0.25), stateless=True)
