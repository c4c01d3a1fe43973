"""Feeding one GPU from several model threads at once.

The embed job's model replicas share one copy of the weights and call it from their own
threads. On a GPU each thread gets its own CUDA stream and its own page-locked (pinned) staging
buffer: a batch is assembled straight into pinned memory and copied with ``non_blocking``, so one
replica's batch assembly and host-to-device copy run while another's forward pass keeps the GPU
busy, instead of the GPU idling through every copy. On a CPU it is plain NumPy stacking.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Sequence

import numpy as np


class DeviceFeed:
    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.device = device
        self.local = threading.local()

    def stack(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """``np.stack(arrays)``, on a GPU into this thread's pinned buffer. The result is only
        valid until this thread's next ``stack``: by then its copy to the GPU has finished,
        because every batch ends by reading its results back.

        A batch that already lies in one array (the rows of a decode slab) is used as it lies:
        on a CPU always, on a GPU when that memory is pinned."""
        rows = consecutive_rows(arrays)
        if rows is not None and (not self.cuda or self.torch.from_numpy(rows).is_pinned()):
            return rows
        if not self.cuda:
            return np.stack(arrays)
        shape, dtype = (len(arrays), *arrays[0].shape), arrays[0].dtype
        size = int(np.prod(shape)) * dtype.itemsize
        buffer = thread_buffer(self.local, size, lambda n: self.torch.empty(n, dtype=self.torch.uint8,
                                                                            pin_memory=True))
        return np.stack(arrays, out=buffer.numpy().view(dtype).reshape(shape))

    def stream(self):
        """This thread's CUDA stream as a context (nothing on a CPU)."""
        if not self.cuda:
            return contextlib.nullcontext()
        stream = getattr(self.local, "stream", None)
        if stream is None:
            stream = self.local.stream = self.torch.cuda.Stream(self.device)
        return self.torch.cuda.stream(stream)


def consecutive_rows(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """``arrays`` as one (N, ...) array without a copy when they are consecutive rows of one
    buffer, in order; else None."""
    first = arrays[0]
    base = first.base
    if not isinstance(base, np.ndarray) or base.ndim != 1 or not first.flags.c_contiguous:
        return None
    size = first.nbytes
    start = first.__array_interface__["data"][0]
    for i, a in enumerate(arrays):
        if (a.base is not base or a.shape != first.shape or a.dtype != first.dtype
                or a.__array_interface__["data"][0] != start + i * size or not a.flags.c_contiguous):
            return None
    offset = start - base.__array_interface__["data"][0]
    if offset % size or base.nbytes % size:
        return None
    whole = base.view(first.dtype).reshape(-1, *first.shape)
    return whole[offset // size: offset // size + len(arrays)]


def thread_buffer(local: threading.local, numel: int, make: Callable[[int], object]):
    """The first ``numel`` elements of this thread's buffer kept in ``local``, made by
    ``make(numel)`` when it has none or one too small: reused batch after batch, so the heap does
    not grow with the number of batches."""
    buffer = getattr(local, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = local.buffer = make(numel)
    return buffer[:numel]
