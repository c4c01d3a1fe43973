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
        because every batch ends by reading its results back."""
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


def thread_buffer(local: threading.local, numel: int, make: Callable[[int], object]):
    """The first ``numel`` elements of this thread's buffer kept in ``local``, made by
    ``make(numel)`` when it has none or one too small: reused batch after batch, so the heap does
    not grow with the number of batches."""
    buffer = getattr(local, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = local.buffer = make(numel)
    return buffer[:numel]
