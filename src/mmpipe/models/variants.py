"""Faster variants of a loaded embedder (any family): other precisions and runtimes behind the
same interface.

``TowerEmbedder`` stays the plain eager model. A variant wraps what it does with the weights:

- precision ``fp32`` / ``bf16`` / ``fp16`` (GPU) is the weights' dtype; ``int8`` stores the Linear
  layers' weights as int8 and quantises each batch's activations on the fly (dynamic
  quantisation), where the CPU spends its time in a transformer;
- runtime ``eager`` (PyTorch as written), ``compile`` (``torch.compile`` of each tower) or
  ``onnx`` (each tower exported once to ONNX and run by onnxruntime, see ``onnx_embedder``).

How far a variant strays from eager fp32 is measured and gated in ``models.gate``.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..errors import ConfigError
from .cache import cache_dir, cache_key
from .embedder import LoadedEmbedder

Precision = Literal["fp32", "bf16", "fp16", "int8"]
Runtime = Literal["eager", "compile", "onnx"]
PRECISIONS, RUNTIMES = get_args(Precision), get_args(Runtime)
# One line each for the CLI's help and the error messages.
PRECISION_HELP = ("fp32 (reference), bf16, fp16 (GPU only) or int8 (CPU: Linear layers in int8, "
                  "activations quantised per batch)")
RUNTIME_HELP = ("eager (PyTorch), compile (torch.compile; slow first batch) or onnx (towers exported "
                "once to ONNX and run by onnxruntime, CPU)")


@dataclass(frozen=True)
class Variant:
    precision: Precision = "fp32"
    runtime: Runtime = "eager"

    def __str__(self) -> str:
        return f"{self.precision} {self.runtime}"

    @property
    def is_reference(self) -> bool:
        """Eager fp32: what every other variant is measured against."""
        return self == Variant()

    @property
    def weights_precision(self) -> str:
        """The dtype the checkpoint loads in before the variant wraps it."""
        return "fp32" if self.precision == "int8" else self.precision

    def check(self, device: str, sentence_encoder: bool = False) -> None:
        """Refuse, naming the flag, what cannot run or would not be faster (``sentence_encoder``:
        for a ``text_encoder`` model, which runs eager fp32 or onnx)."""
        if self.precision not in PRECISIONS:
            raise ConfigError("--precision", f"must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.runtime not in RUNTIMES:
            raise ConfigError("--runtime", f"must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        gpu = device.startswith("cuda")
        if self.precision == "fp16" and not gpu:
            raise ConfigError("--precision", "fp16 needs --device cuda (CPUs lack fp16 arithmetic "
                                             "and emulate it slowly); on a CPU use bf16 or int8")
        if self.precision == "int8" and gpu:
            raise ConfigError("--precision", "int8 is a CPU variant (dynamic quantisation); on a GPU "
                                             "use fp16 or bf16")
        if self.runtime == "onnx" and gpu:
            raise ConfigError("--runtime", "onnx runs on the CPU (onnxruntime's CPU build); on a GPU "
                                           "use --runtime compile")
        if self.runtime == "onnx" and self.precision not in ("fp32", "int8"):
            raise ConfigError("--precision", f"--runtime onnx runs fp32 or int8, not {self.precision}")
        if sentence_encoder and not (self.is_reference or self.runtime == "onnx"):
            raise ConfigError("--runtime", f"a sentence encoder runs eager fp32 or onnx fp32 / int8, "
                                           f"not {self}")


@dataclass(frozen=True)
class EmbedderVariant(LoadedEmbedder):
    """A ``LoadedEmbedder`` whose workers run it as ``variant``; anything that takes a
    LoadedEmbedder takes this. ``accuracy`` is what it measured against eager fp32 (None for
    the reference)."""

    variant: Variant = Variant()
    cache: Path | None = None  # the checkpoint's cache folder (exported graphs, measured accuracy)
    accuracy: dict | None = None
    # The one image batch shape a compiled variant runs (the job's --batch-size): compiled during
    # the worker's setup, and shorter batches padded up to it.
    image_batch: int = 16

    @classmethod
    def wrap(cls, loaded: LoadedEmbedder, variant: Variant) -> "EmbedderVariant":
        base = {f.name: getattr(loaded, f.name) for f in fields(LoadedEmbedder)}
        return cls(**base, variant=variant, cache=None if variant.is_reference else checkpoint_cache(loaded))

    def make_embedder(self):
        """Loads the weights (once per model worker) and wraps them as ``variant``."""
        if self.variant.runtime == "onnx":
            from .onnx_embedder import OnnxEmbedder, onnx_towers

            return OnnxEmbedder(onnx_towers(self, self.variant.precision), self)
        embedder = super().make_embedder()
        if self.variant.precision == "int8":
            quantise_linear(embedder.model)
        if self.variant.runtime == "compile":
            compile_towers(embedder.model, self.family.towers, self.device)
            embedder.image_batch = self.image_batch
            crop = self.preprocessor.crop
            embedder.embed_images(np.zeros((self.image_batch, 3, crop, crop), np.uint8))
        return embedder

    def describe(self) -> dict:
        """The variant as a job's manifest records it."""
        return {"precision": self.variant.precision, "runtime": self.variant.runtime,
                "accuracy": self.accuracy}


def quantise_linear(model) -> None:
    """Dynamic int8 quantisation of every Linear layer of ``model``, in place.

    ``torch.ao`` rather than torchao: on this CPU (torch 2.13, torchao 0.18) torchao's dynamic
    int8 ran ViT-B/32's image tower at 0.46x fp32 eager (it quantises activations with unfused
    tensor ops) and 1.27x compiled, ``torch.ao``'s fused int8 kernels at 1.9x eager and 2.1x
    compiled. ``torch.ao`` warns that it is deprecated on every call."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def compile_towers(model, towers: tuple[str, ...], device: str) -> None:
    """``torch.compile`` each tower (``towers``: their attributes on ``model``), in the mode that
    pays on the device:

    - CPU: freezing, so the weights become constants prepacked once into oneDNN's blocked layouts
      instead of on every product: ViT-B/32's image tower at batch 16 ran 1.04-1.21x eager fp32
      on this project's 2-core CPU (docs/benchmarks.md), against 1.01x for a plain compile;
      max-autotune was no faster there and took twice as long to compile;
    - CUDA: max-autotune, Triton kernels tuned per shape and the forward replayed as a CUDA graph,
      so that the CPU launching kernels does not hold the GPU back.

    Each new input shape compiles again (seconds to a minute)."""
    import torch

    how = {"mode": "max-autotune"} if device.startswith("cuda") else {"options": {"freezing": True}}
    for name in towers:
        setattr(model, name, torch.compile(getattr(model, name), **how))


def checkpoint_cache(loaded: LoadedEmbedder) -> Path:
    """A folder for what this install derives from ``loaded``'s weights, keyed by the spec, the
    checkpoint's files (name, size, mtime: hashing gigabytes on every start would cost seconds)
    and the versions that shape the results."""
    import onnxruntime
    import torch
    import transformers

    if loaded.spec.kind == "random":
        files = loaded.family.random_archs[loaded.spec.target]
    else:
        folder = loaded.spec.local_dir()
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    source = hashlib.sha256(json.dumps([str(loaded.spec), files], default=str).encode()).hexdigest()
    key = cache_key(source, {"torch": torch.__version__, "transformers": transformers.__version__,
                             "onnxruntime": onnxruntime.__version__})
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(loaded.spec).rstrip("/").rsplit("/", 1)[-1])[-40:]
    return cache_dir("clip", f"{slug}-{key}")  # "clip" from before other families: caches stay valid
