"""Pieces every job's stage list uses: per-item error isolation, and the stage that reads items
and decodes them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable, Sequence

from ..records import Record, failed
from ..sources.options import read_item
from ..stage import ArrayField, Stage


def per_item(stage: str, fn: Callable[[Record], Record]):
    """A batch function that applies ``fn`` to each record, turning its failure into an error row."""
    def run(batch: Sequence[Record]) -> list[Record]:
        return [one_item(stage, fn, record) for record in batch]
    return run


def one_item(stage: str, fn: Callable[[Record], Record], record: Record) -> Record:
    """``fn(record)``, or its error twin naming the stage: one bad item never fails the job."""
    try:
        return fn(record)
    except (OSError, ValueError, EOFError) as exc:
        return failed(record, f"{stage}: {exc}")
    except Exception as exc:  # noqa: BLE001
        return failed(record, f"{stage}: {type(exc).__name__}: {exc}")


class ReadThenDecode:
    """The decode stage's batch function: reads each item's bytes, then decodes it with
    ``decode`` (per item; a failure is a ``read: …`` or ``decode: …`` error row).

    Reading is fused into decoding so that a decode worker process reads its own files: the
    process feeding the model then never touches an item's bytes. Reads that wait on a network
    (URLs, object stores) start together in ``read_workers`` threads when the batch arrives and
    are decoded as they land; a local file is read in turn, where a thread would cost more than
    the read."""

    def __init__(self, decode: Callable[[Record], Record], read_workers: int):
        self.decode = decode
        self.pool = ThreadPoolExecutor(read_workers, thread_name_prefix="mmpipe-read")

    def __call__(self, batch: Sequence[Record]) -> list[Record]:
        ahead = {i: self.pool.submit(_read, r) for i, r in enumerate(batch) if _waits(r)}
        out = []
        for i, record in enumerate(batch):
            record = ahead[i].result() if i in ahead else _read(record)
            out.append(record if record.error else one_item("decode", self.decode, record))
        return out


def decode_stage(decode: Callable[[Record], Record], *, workers: int, read_workers: int,
                 batch_size: int, in_processes: bool = False, shared: ArrayField | None = None) -> Stage:
    """Reading and decoding as one stateless stage; ``decode`` must pickle to run in processes."""
    return Stage("decode", partial(ReadThenDecode, decode, read_workers), batch_size=batch_size,
                 concurrency=workers, stateless=True, in_processes=in_processes, shared=shared)


def _read(record: Record) -> Record:
    return one_item("read", read_item, record)


def _waits(record: Record) -> bool:
    return getattr(getattr(record, "read", None), "waits", False)
