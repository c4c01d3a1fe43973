"""An embedder split into pipeline parts: the text tower alone, and the image tower in K
consecutive parts.

The image tower is a chain of steps its family declares (``Family.vision_steps``): the stem
(patch embedding, and CLIP's pre-layernorm), the encoder layers, the head (CLIP: post-layernorm
on the class token + projection; SigLIP: post-layernorm + attention pooling). The stem belongs
to the first part and the head to the last. ``split_vision`` times each step on the job's
device and cuts the layers so that the slowest part is as fast as possible: a pipeline runs at
the pace of its slowest part, and the end parts carry extra work, so equal layer counts are not
balanced.
Each ``VisionPart`` keeps only its steps, so its weights are about 1/K of the tower's.

Imports torch on import: load it only where a pipeline is asked for.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .embedder import LoadedEmbedder
from .towers import PixelNormaliser, TowerEmbedder, placement, unit_rows


def split_vision(loaded: LoadedEmbedder, parts: int, batch_size: int) -> list[range]:
    """The image tower's layers in ``parts`` consecutive ranges, balanced by measured time."""
    model = loaded.load_model()
    layers = len(loaded.family.vision_steps(model)[1])
    if parts > layers:
        raise ConfigError("--pipeline-stages", f"{parts} parts, but the image tower of {loaded.spec} "
                                               f"has only {layers} layers")
    return balanced_split(layer_times(loaded, model, batch_size), parts)


def balanced_split(times: Sequence[float], parts: int) -> list[range]:
    """Cut ``times`` into ``parts`` non-empty consecutive ranges minimising the largest sum
    (exact dynamic programming: towers have tens of layers)."""
    n = len(times)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot cut {n} layers into {parts} parts")
    prefix = np.concatenate([[0.0], np.cumsum(times)])
    # worst[j][i]: the smallest possible largest part when the first i layers form j parts;
    # cut[j][i]: where the last of those parts starts.
    worst = np.full((parts + 1, n + 1), np.inf)
    cut = np.zeros((parts + 1, n + 1), dtype=int)
    worst[0][0] = 0.0
    for j in range(1, parts + 1):
        for i in range(j, n + 1):
            for s in range(j - 1, i):
                w = max(worst[j - 1][s], prefix[i] - prefix[s])
                if w < worst[j][i]:
                    worst[j][i], cut[j][i] = w, s
    bounds = [n]
    for j in range(parts, 0, -1):
        bounds.append(int(cut[j][bounds[-1]]))
    bounds.reverse()
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def layer_times(loaded: LoadedEmbedder, model, batch_size: int, rounds: int = 3) -> list[float]:
    """Seconds each encoder layer of ``model``'s image tower (``loaded``'s weights) takes on a
    batch on its device, the stem counted with the first layer and the head with the last.

    Each step's time is its best over ``rounds`` passes through the whole tower, so a burst of
    load from elsewhere on the machine has to hit the same step every time to skew the split.
    Steps visit the device one at a time, so a tower too big for one device is measured too;
    ``model`` is left in pieces and should be dropped afterwards.
    """
    dev, dtype = placement(loaded.device, loaded.precision)
    size = loaded.preprocessor.crop
    pixels = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    steps = vision_steps(loaded, model)
    runs: list[list[float]] = [[] for _ in steps]
    with torch.inference_mode():
        for _ in range(rounds + 1):  # the first pass only warms caches and kernels up
            h = pixels.to(dev, dtype)
            for step, seconds in zip(steps, runs):
                step.to(dev, dtype)
                t0 = time.perf_counter()
                h = step(h)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                seconds.append(time.perf_counter() - t0)
                step.to("cpu")
    times = [min(seconds[1:]) for seconds in runs]
    times[1] += times.pop(0)
    times[-2] += times.pop()
    return times


def vision_steps(loaded: LoadedEmbedder, model) -> list[torch.nn.Module]:
    """The image tower of ``model`` as modules that each map one tensor to the next: stem,
    layers, head."""
    stem, layers, head = loaded.family.vision_steps(model)
    return [stem, *(_Layer(layer) for layer in layers), head]


class VisionPart:
    """Owns layers ``layers`` of the image tower (plus the stem in the first part and the head in
    the last) and nothing else of the model."""

    def __init__(self, loaded: LoadedEmbedder, layers: range):
        steps = vision_steps(loaded, loaded.load_model())
        count = len(steps) - 2
        self.first, self.last = layers.start == 0, layers.stop == count
        # steps[0] is the stem and steps[i + 1] layer i; the rest of the model is freed on return.
        keep = steps[0 if self.first else layers.start + 1: layers.stop + 1 + self.last]
        self.device, self.dtype = placement(loaded.device, loaded.precision)
        self.steps = torch.nn.Sequential(*keep).to(self.device, self.dtype).eval()
        self.normalise = PixelNormaliser(loaded.preprocessor, loaded.device, loaded.precision)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """uint8 pixels (first part) or hidden states → hidden states, or in the last part unit
        image vectors exactly as ``TowerEmbedder.embed_images`` gives them."""
        with torch.inference_mode():
            x = self.normalise(x) if self.first else torch.from_numpy(x).to(self.device, self.dtype)
            out = self.steps(x)
            # float32 carries bf16/fp16 activations exactly, and NumPy has no bf16.
            return unit_rows(out) if self.last else out.float().cpu().numpy()

    @property
    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.steps.parameters())


def text_embedder(loaded: LoadedEmbedder) -> TowerEmbedder:
    """A ``TowerEmbedder`` holding the text tower only (``embed_texts``), for the text stage."""
    model = loaded.load_model()
    for name in loaded.family.image_modules:
        setattr(model, name, None)
    return TowerEmbedder(model, loaded)


class _Layer(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer(h, None)  # image tokens all attend to each other: no mask


class FirstToken(torch.nn.Module):
    """Hidden states → the first (class) token's, for a head that reads only it."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, 0, :]
