"""How long a model's batch takes, learnt from the batches it runs: what latency-aware admission
turns a queue of items into a wait in seconds with, and the default delay budget is made of."""

from __future__ import annotations

# Weight of the newest batch: about the last ten batches count, so the estimate follows the
# machine getting busier (overload, other processes) within a fraction of a second.
ALPHA = 0.1
# Below this spread of recent batch sizes (a variance, in items²) there is no slope to fit: a
# quiet server runs batches of one or two. The cost is then taken as all fixed, the optimistic
# reading: the proportional one made a quiet MiniLM server expect 4x a batch of 1 for a batch of
# 4 (truly ~1.5x) and refuse requests at a quarter of its capacity. The first bigger batches of a
# burst correct it, and ``max_queue`` bounds what gets in meanwhile.
MIN_SIZE_VARIANCE = 0.1


class BatchTimes:
    """Seconds for a batch of ``n`` items, ``a + b·n``: a fixed cost per batch and one per item,
    fitted by exponentially weighted least squares (four running means, no history kept). Both
    terms matter: small batches pay the fixed cost per few items, and a wait made of batches of
    different sizes is mispredicted by either term alone."""

    def __init__(self):
        self.batches = 0
        self.n = self.d = self.nn = self.nd = 0.0  # weighted means of n, d, n², n·d

    def observe(self, n: int, seconds: float) -> None:
        self.batches += 1
        # The first batches weigh 1/k each, so the estimate starts at the measurements, not at 0.
        w = max(ALPHA, 1.0 / self.batches)
        self.n += w * (n - self.n)
        self.d += w * (seconds - self.d)
        self.nn += w * (n * n - self.nn)
        self.nd += w * (n * seconds - self.nd)

    def seconds(self, n: int) -> float | None:
        """The expected duration of a batch of ``n`` items; None before any batch ran."""
        if not self.batches:
            return None
        variance = self.nn - self.n * self.n
        if variance < MIN_SIZE_VARIANCE:
            return self.d
        # A negative slope is noise (bigger batches do not run faster); so is one steeper than
        # the batches' own average cost per item, which would make the fixed cost negative.
        per_item = min(max((self.nd - self.n * self.d) / variance, 0.0), self.d / self.n)
        return self.d + per_item * (n - self.n)
