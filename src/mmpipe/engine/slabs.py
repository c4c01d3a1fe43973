"""Batch-sized blocks of shared memory ("slabs") that worker processes write their outputs into.

A decode process writes a batch's uint8 crops as consecutive rows of one slab; the engine's
process gets one small message per batch and views the rows where they lie, so no pixel is
pickled, copied between processes or stacked again: a model reads the batch straight from the
slab (on a GPU, from page-locked memory, see ``pin``).

A slab goes back to the pool by itself once nothing views its rows any more: each batch's views
hang on a ctypes array over the slab, and a finalizer on that array fires when the last view
(the last record's pixels, a tensor made from them) is gone. The pool grows when every slab is
still in use, which the engine's bounded queues keep to the batches in flight.

Names start with ``mmpipe-<pid>-``: the multiprocessing resource tracker unlinks them if this
process is killed, and a new pool removes any left by a dead process whose tracker died with it.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import weakref
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from ..stage import ArrayField

SHM_DIR = "/dev/shm"
_PREFIX = "mmpipe-"
_names = itertools.count()


@dataclass
class Slab:
    shm: shared_memory.SharedMemory
    pinned: bool = False

    @property
    def name(self) -> str:
        return self.shm.name


class SlabPool:
    """Slabs of ``rows`` records' ``field`` arrays, shared by one stage's workers."""

    def __init__(self, field: ArrayField, rows: int, pin: bool = False):
        self.field, self.rows, self.pin = field, rows, pin
        self.row_bytes = int(np.prod(field.shape)) * np.dtype(field.dtype).itemsize
        self.size = self.row_bytes * rows
        self.lock = threading.Lock()
        self.free: list[Slab] = []
        self.slabs: list[Slab] = []
        remove_stale_slabs()

    def acquire(self) -> Slab | None:
        """A free slab, a new one when all are in use, or None when shared memory is short (the
        caller then pickles the arrays instead: slower, never wrong)."""
        with self.lock:
            if self.free:
                return self.free.pop()
            if not _room_for(self.size):
                return None
            slab = Slab(shared_memory.SharedMemory(f"{_PREFIX}{os.getpid()}-{next(_names)}",
                                                   create=True, size=self.size))
            if self.pin:
                slab.pinned = _cuda_register(slab.shm, self.size)
            self.slabs.append(slab)
            return slab

    def release(self, slab: Slab) -> None:
        with self.lock:
            self.free.append(slab)

    def rows_of(self, slab: Slab, n: int) -> np.ndarray:
        """The first ``n`` rows of ``slab`` as one array; the slab is released when the last
        view of it is gone."""
        owner = (ctypes.c_uint8 * (self.row_bytes * n)).from_buffer(slab.shm.buf)
        weakref.finalize(owner, self.release, slab)
        return np.frombuffer(owner, dtype=self.field.dtype).reshape(n, *self.field.shape)

    def close(self) -> None:
        """Unlink every slab. One still viewed (a record kept past the run) stays mapped, and so
        valid, until its last view goes; its name is gone from ``/dev/shm`` all the same."""
        with self.lock:
            slabs, self.slabs, self.free = self.slabs, [], []
        for slab in slabs:
            if slab.pinned:
                _cuda_unregister(slab.shm)
            try:
                slab.shm.close()
            except BufferError:
                # Still viewed: the mapping goes with its last view. Its object must not try to
                # close it again when collected (it would print the same error).
                slab.shm.close = lambda: None
            slab.shm.unlink()


class SlabReader:
    """A worker process's side: slabs attached by name, each once, viewed as rows."""

    def __init__(self, field: ArrayField, rows: int):
        self.field, self.rows = field, rows
        # The mapping must outlive the array: numpy keeps no hold on it, and a collected
        # SharedMemory unmaps its memory under the array's feet.
        self.attached: dict[str, tuple[shared_memory.SharedMemory, np.ndarray]] = {}

    def rows_of(self, name: str) -> np.ndarray:
        if name not in self.attached:
            shm = shared_memory.SharedMemory(name)
            self.attached[name] = shm, np.ndarray((self.rows, *self.field.shape), self.field.dtype,
                                                  buffer=shm.buf)
        return self.attached[name][1]

    def fits(self, value) -> bool:
        return (isinstance(value, np.ndarray) and value.shape == self.field.shape
                and value.dtype == np.dtype(self.field.dtype))


def _room_for(size: int) -> bool:
    """Whether ``/dev/shm`` can take ``size`` more bytes with room to spare. Containers often
    mount a 64 MB one: a slab written past it would kill its writer with SIGBUS."""
    try:
        stat = os.statvfs(SHM_DIR)
    except OSError:
        return True  # no /dev/shm to ask (macOS): shm_open has no such small default cap
    return stat.f_bavail * stat.f_frsize >= 2 * size


def remove_stale_slabs() -> None:
    """Unlink slabs whose process is gone (killed with its resource tracker)."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        pid = name[len(_PREFIX):].split("-", 1)[0] if name.startswith(_PREFIX) else ""
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _address(shm: shared_memory.SharedMemory) -> int:
    view = ctypes.c_char.from_buffer(shm.buf)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def _cuda_register(shm: shared_memory.SharedMemory, size: int) -> bool:
    """Page-lock the slab for CUDA, so that a model copies a batch to the GPU straight from it,
    asynchronously; False (an ordinary, slower copy) if the driver refuses."""
    import torch

    # Portable (flag 1): pinned for every GPU of the node, whichever model worker reads it.
    return int(torch.cuda.cudart().cudaHostRegister(_address(shm), size, 1)) == 0


def _cuda_unregister(shm: shared_memory.SharedMemory) -> None:
    import torch

    torch.cuda.cudart().cudaHostUnregister(_address(shm))
