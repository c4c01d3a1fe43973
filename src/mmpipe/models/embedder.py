"""Twin-tower embedders (an image tower and a text tower into one vector space) behind one
interface, whatever their family.

A family (CLIP, SigLIP) is one module declaring a ``Family``: its transformers classes, how its
checkpoint's preprocessing is read, the ``random:`` architectures it offers, and what pipeline
splitting and zero-shot scoring need from its weights. ``FAMILIES`` maps a checkpoint's
``model_type`` to that module; ``load_embedder`` picks the family from the checkpoint's
config.json (or the ``random:``/``zeros:`` architecture's name). Everything else — precision,
INT8, ONNX, compile, pipeline splitting, the stages — takes a ``LoadedEmbedder`` and never asks
which family it is.
"""

from __future__ import annotations

import importlib
import json
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from ..errors import ConfigError, ModelLoadError
from .byte_tokenizer import byte_tokenizer
from .checkpoint import read_checkpoint
from .spec import ModelSpec
from .towers import Preprocessor, TowerEmbedder

PRECISIONS = ("fp32", "bf16", "fp16")

# config.json's model_type → the module declaring that family as FAMILY.
FAMILIES = {"clip": "mmpipe.models.clip", "siglip": "mmpipe.models.siglip"}


class Embedder(Protocol):
    """What a model worker holds: unit vectors of uint8 image batches and of token id lists."""

    dim: int
    # (scale, bias) when the pair was trained with a sigmoid loss (SigLIP), else None (softmax).
    sigmoid: tuple[float, float] | None

    def embed_images(self, pixels) -> np.ndarray: ...

    def embed_texts(self, token_lists: Sequence[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Family:
    """What differs between twin-tower families. Functions are module-level, so that a
    ``LoadedEmbedder`` holding its family pickles to worker processes and Ray actors."""

    model_type: str  # config.json's
    config_class: str  # transformers' class names, imported when used
    model_class: str
    # preprocessor_config.json (a dict, empty when absent), config, tokenizer → Preprocessor
    preprocessor: Callable[[dict, object, object], Preprocessor]
    dim: Callable[[object], int]  # config → the width of the shared vector space
    # The image tower as (stem, encoder layers, head), for pipeline splitting: the stem maps
    # pixels to hidden states, each layer hidden states to hidden states (called with no mask),
    # the head hidden states to the projected image vector.
    vision_steps: Callable[[object], tuple]
    # Attributes of the model that only the image tower uses: a text-only worker drops them.
    image_modules: tuple[str, ...]
    # The two towers' attributes, compiled one by one.
    towers: tuple[str, ...] = ("vision_model", "text_model")
    # Published architectures ``random:<name>`` builds with random weights: config kwargs.
    random_archs: dict | None = None
    # model → (scale, bias) of a sigmoid-trained pair; None: softmax over prompts (CLIP).
    sigmoid: Callable[[object], tuple[float, float]] | None = None

    def transformers_class(self, name: str):
        import transformers

        return getattr(transformers, name)


def family(model_type: str) -> Family:
    return importlib.import_module(FAMILIES[model_type]).FAMILY


def checkpoint_family(folder: Path) -> Family | None:
    """The family of the checkpoint in ``folder`` by its config.json, or None (another
    architecture, or no config)."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
    return family(model_type) if model_type in FAMILIES else None


def random_arch_family(name: str) -> Family | None:
    return next((f for f in map(family, FAMILIES) if name in (f.random_archs or {})), None)


@dataclass(frozen=True)
class LoadedEmbedder:
    family: Family
    preprocessor: Preprocessor
    # Reads the weights onto the CPU: called once per model worker, so each replica owns its
    # weights, and a pipeline part can drop what it does not own before moving to the device.
    load_model: Callable[[], object]
    dim: int
    spec: ModelSpec
    device: str = "cpu"
    precision: str = "fp32"
    # What wraps the loaded model for the workers (``zeros:`` specs swap in ZeroEmbedder).
    embedder_class: type = TowerEmbedder

    def make_embedder(self) -> Embedder:
        return self.embedder_class(self.load_model(), self)


def load_embedder(spec: str | ModelSpec, device: str = "cpu", precision: str = "fp32",
                  allow_pickle: bool = False, device_here: bool = True) -> LoadedEmbedder:
    """Resolve ``spec`` and read everything but the weights; the weights load per worker.

    ``device_here=False`` when the workers run elsewhere (a Ray cluster whose driver may have
    no GPU): the device is then checked by the workers that use it."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    if device_here:
        check_device(device)
    if precision not in PRECISIONS:
        raise ConfigError("--precision", f"must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if spec.kind in ("random", "zeros"):
        return _load_random(spec, device, precision)
    folder = spec.local_dir()
    fam = checkpoint_family(folder)
    if fam is None:
        raise ModelLoadError(f"{spec} is not an image-text embedder checkpoint (config.json's "
                             f"model_type is none of {', '.join(FAMILIES)})")
    config, tokenizer = read_checkpoint(folder, fam.transformers_class(fam.config_class), allow_pickle,
                                        f"a {fam.model_type} checkpoint")
    pre = fam.preprocessor(_preprocessor_config(folder), config, tokenizer)
    load = partial(_from_pretrained, fam, folder, not allow_pickle)
    return LoadedEmbedder(fam, pre, load, fam.dim(config), spec, device, precision)


def check_device(device: str, flag: str = "--device") -> None:
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ConfigError(flag, f"expected cpu or cuda[:N], not {device!r}")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(flag, "CUDA is not available on this machine")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(flag, f"no CUDA device {index} "
                                    f"(this machine has {torch.cuda.device_count()})")


# One model built at a time in this process: stage workers load theirs in threads at once, and
# neither transformers' loading (it switches process-wide state, such as whether modules
# initialise their weights, while it builds a model) nor torch's global random generator (the
# random: weights) may be shared by two builds. Without it a pipeline part now and then got
# weights other than the checkpoint's.
_BUILDING = threading.Lock()


def _from_pretrained(fam: Family, folder: Path, safetensors: bool):
    with _BUILDING:
        return fam.transformers_class(fam.model_class).from_pretrained(folder, use_safetensors=safetensors)


def _random_model(fam: Family, config):
    import torch

    with _BUILDING:
        torch.manual_seed(0)  # every replica and every run gets the same random weights
        return fam.transformers_class(fam.model_class)(config)


def _load_random(spec: ModelSpec, device: str, precision: str) -> LoadedEmbedder:
    fam = random_arch_family(spec.target)
    if fam is None:
        known = [a for f in map(family, FAMILIES) for a in (f.random_archs or {})]
        raise ConfigError("--model", f"unknown {spec.kind} architecture {spec.target!r}; "
                                     f"known: {', '.join(known)}")
    arch = fam.random_archs[spec.target]
    tokenizer = byte_tokenizer(arch["text_config"]["max_position_embeddings"])
    config = fam.transformers_class(fam.config_class)(**arch)
    for key, token in (("bos_token_id", tokenizer.bos_token), ("eos_token_id", tokenizer.eos_token),
                       ("pad_token_id", tokenizer.pad_token)):
        setattr(config.text_config, key, tokenizer.convert_tokens_to_ids(token))
    pre = fam.preprocessor({}, config, tokenizer)
    dim = fam.dim(config)
    if spec.kind == "zeros":
        from .zeros import ZeroEmbedder

        # Its "model" is the vector size: partial(int, dim)() is dim, and unlike a lambda it pickles.
        return LoadedEmbedder(fam, pre, partial(int, dim), dim, spec, device, precision, ZeroEmbedder)
    return LoadedEmbedder(fam, pre, partial(_random_model, fam, config), dim, spec, device, precision)


def _preprocessor_config(folder: Path) -> dict:
    """preprocessor_config.json read directly: transformers' image processors need torchvision."""
    path = folder / "preprocessor_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
