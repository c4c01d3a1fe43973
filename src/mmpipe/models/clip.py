"""CLIP twin-tower embeddings with transformers, without torchvision.

Split in two so each runs where it belongs: ``ClipPreprocessor`` (resize, crop, tokenise; no
weights, cheap to share across decode threads) and ``ClipEmbedder`` (the weights, owned by one
model worker). Images leave the preprocessor as uint8 and are normalised where the model runs
(``PixelNormaliser``): a decoded image waits in queues, crosses to a GPU and travels between
processes at a quarter of its float32 size, and the float work is done on the GPU.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..decode.image import short_side_to
from ..errors import ConfigError
from .byte_tokenizer import byte_tokenizer
from .checkpoint import TokenIds, read_checkpoint
from .device_feed import DeviceFeed, thread_buffer
from .spec import ModelSpec

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PRECISIONS = ("fp32", "bf16", "fp16")

# Architectures ``random:`` can build: the published configs, with random weights.
RANDOM_ARCHS = {
    "ViT-B-32": dict(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                         num_hidden_layers=12, max_position_embeddings=77),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                           num_hidden_layers=12, patch_size=32, image_size=224),
        projection_dim=512),
}


@dataclass(frozen=True)
class ClipPreprocessor:
    resize_to: int  # shortest edge after resizing
    crop: int  # square centre crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokenizer: object
    max_tokens: int
    token_ids: TokenIds = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "token_ids", TokenIds(self.tokenizer, self.max_tokens))

    def image(self, img: Image.Image, exact: bool = True, out: np.ndarray | None = None) -> np.ndarray:
        """RGB image → (3, crop, crop) uint8, resized and cropped as CLIP's reference image
        processor does it; ``PixelNormaliser`` does the rest where the model runs.

        ``exact=False`` resizes only the part of the image the crop keeps (Pillow's ``box``):
        the same filter over the same pixels, less work, though not bit-exact (Pillow places
        each output pixel from the box's edge: values differ by a level or a few). ``out``: a
        (3, crop, crop) uint8 array to write the result into (a decode slab's row)."""
        w, h = img.size
        size = short_side_to(img.size, self.resize_to)
        top, left = max((size[1] - self.crop) // 2, 0), max((size[0] - self.crop) // 2, 0)
        if not exact and size != img.size:
            kept = (min(self.crop, size[0]), min(self.crop, size[1]))
            sx, sy = w / size[0], h / size[1]
            box = (left * sx, top * sy, (left + kept[0]) * sx, (top + kept[1]) * sy)
            return _chw(np.asarray(img.resize(kept, Image.BICUBIC, box=box)), out)
        if size != img.size:
            img = img.resize(size, Image.BICUBIC)
        return _chw(np.asarray(img)[top: top + self.crop, left: left + self.crop], out)

    def text(self, text: str) -> np.ndarray:
        return self.token_ids(text)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)


def _chw(hwc: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) → a new (3, H, W) array, or into ``out`` when it has that shape."""
    chw = hwc.transpose(2, 0, 1)
    if out is None or out.shape != chw.shape:
        return np.ascontiguousarray(chw)
    np.copyto(out, chw)
    return out


class PixelNormaliser:
    """uint8 (N, 3, H, W) images → the model's input on its device: scaled to [0, 1], minus the
    mean, over the standard deviation, in float32, then cast to the model's dtype.

    The float32 batch is written into a buffer each thread reuses: a fresh ~10 MB tensor per
    batch made glibc's heap grow with the number of batches (peak RSS on 10x the images rose
    from 1.07x to 1.2x that on 1x)."""

    def __init__(self, pre: ClipPreprocessor, device: str = "cpu", precision: str = "fp32"):
        import torch

        self.torch = torch
        self.device, self.dtype = placement(device, precision)
        mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = (1 / (255 * std)).to(self.device)
        self.shift = (-mean / std).to(self.device)
        self.local = threading.local()

    def __call__(self, pixels):
        """``pixels``: an array, or a tensor (on the model's device when decoded there). The
        result is valid until this thread's next call."""
        torch = self.torch
        x = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels)
        x = x.to(self.device, non_blocking=True)
        out = thread_buffer(self.local, x.numel(), lambda n: torch.empty(n, dtype=torch.float32,
                                                                          device=self.device)).view(x.shape)
        torch.mul(x, self.scale, out=out)
        return out.add_(self.shift).to(self.dtype)


class ClipEmbedder:
    """Owns the weights; turns batches of preprocessed inputs into L2-normalised vectors."""

    def __init__(self, model, pre: ClipPreprocessor, device: str = "cpu", precision: str = "fp32"):
        import torch

        self.torch = torch
        self.device, self.dtype = placement(device, precision)
        self.model = model.to(self.device, self.dtype).eval()
        self.dim = int(model.config.projection_dim)
        self.pad_id = pre.pad_id
        self.normalise = PixelNormaliser(pre, device, precision)
        self.feed = DeviceFeed(self.device)
        # Set for a compiled image tower: it then sees only batches of exactly this many images,
        # the shape it was compiled for (any other shape would compile again, for seconds to a
        # minute; the job's last, shorter batch would pay that).
        self.image_batch: int | None = None

    def embed_images(self, pixels) -> np.ndarray:
        """Unit vectors of a uint8 batch (N, 3, H, W): an array, a tensor (already on the GPU when
        decoded there), or a list of images, stacked here (on a GPU straight into pinned
        memory). Safe to call from several threads at once."""
        if isinstance(pixels, (list, tuple)):
            pixels = self.feed.stack(pixels)
        if self.image_batch is not None:
            return in_fixed_batches(self._embed_images, pixels, self.image_batch)
        return self._embed_images(pixels)

    def _embed_images(self, pixels: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode(), self.feed.stream():
            return self._normalised(self.model.get_image_features(pixel_values=self.normalise(pixels)))

    def embed_texts(self, token_lists: Sequence[np.ndarray]) -> np.ndarray:
        torch = self.torch
        ids, mask = pad_tokens(token_lists, self.pad_id)
        with torch.inference_mode(), self.feed.stream():
            out = self.model.get_text_features(input_ids=torch.from_numpy(ids).to(self.device),
                                               attention_mask=torch.from_numpy(mask).to(self.device))
            return self._normalised(out)

    def _normalised(self, out) -> np.ndarray:
        return unit_rows(projected(out))


def in_fixed_batches(fn: Callable[[np.ndarray], np.ndarray], x, size: int) -> np.ndarray:
    """``fn`` over ``x`` (an array or a tensor) in batches of exactly ``size`` rows, the last one
    padded with zeros whose results are dropped."""
    out = []
    for i in range(0, len(x), size):
        chunk = x[i: i + size]
        n = len(chunk)
        if n < size:
            pad = (size - n, *chunk.shape[1:])
            if isinstance(chunk, np.ndarray):
                chunk = np.concatenate([chunk, np.zeros(pad, chunk.dtype)])
            else:
                import torch

                chunk = torch.cat([chunk, chunk.new_zeros(pad)])
        out.append(fn(chunk)[:n])
    return np.concatenate(out)


def pad_tokens(token_lists: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask) padded to the longest text in the batch (not to 77): the text
    tower costs per token."""
    longest = max(len(t) for t in token_lists)
    ids = np.full((len(token_lists), longest), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, t in enumerate(token_lists):
        ids[i, : len(t)] = t
        mask[i, : len(t)] = 1
    return ids, mask


def projected(out):
    """The projected vector of ``get_image_features`` / ``get_text_features``: transformers 5
    returns an output object whose pooler_output holds it."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def placement(device: str, precision: str):
    """(torch device, dtype) for ``--device`` and ``--precision``."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.device(device), dtype


def unit_rows(feats) -> np.ndarray:
    """L2-normalised float32 rows on the CPU: what every embedding output holds."""
    feats = feats.float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return feats.cpu().numpy()


@dataclass(frozen=True)
class LoadedClip:
    preprocessor: ClipPreprocessor
    # Reads the weights onto the CPU: called once per model worker, so each replica owns its
    # weights, and a pipeline part can drop what it does not own before moving to the device.
    load_model: Callable[[], object]
    dim: int
    spec: ModelSpec
    device: str = "cpu"
    precision: str = "fp32"
    # What wraps the loaded model for the workers (``zeros:`` specs swap in ZeroEmbedder).
    embedder_class: type = ClipEmbedder

    def make_embedder(self) -> ClipEmbedder:
        return self.embedder_class(self.load_model(), self.preprocessor, self.device, self.precision)


def load_clip(spec: str | ModelSpec, device: str = "cpu", precision: str = "fp32",
              allow_pickle: bool = False, device_here: bool = True) -> LoadedClip:
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
    from transformers import CLIPConfig

    folder = spec.local_dir()
    config, tokenizer = read_checkpoint(folder, CLIPConfig, allow_pickle, "a CLIP checkpoint")
    pre = _preprocessor(folder, config, tokenizer)

    def load():
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(folder, use_safetensors=not allow_pickle)

    return LoadedClip(pre, load, int(config.projection_dim), spec, device, precision)


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


def _load_random(spec: ModelSpec, device: str, precision: str) -> LoadedClip:
    from transformers import CLIPConfig

    arch = RANDOM_ARCHS.get(spec.target)
    if arch is None:
        raise ConfigError("--model", f"unknown {spec.kind} architecture {spec.target!r}; "
                                     f"known: {', '.join(RANDOM_ARCHS)}")
    tokenizer = byte_tokenizer(arch["text_config"]["max_position_embeddings"])
    config = CLIPConfig(**arch)
    for key, token in (("bos_token_id", tokenizer.bos_token), ("eos_token_id", tokenizer.eos_token),
                       ("pad_token_id", tokenizer.pad_token)):
        setattr(config.text_config, key, tokenizer.convert_tokens_to_ids(token))
    pre = _preprocessor(None, config, tokenizer)
    dim = int(config.projection_dim)
    if spec.kind == "zeros":
        from .zeros import ZeroEmbedder

        # Its "model" is the vector size: partial(int, dim)() is dim, and unlike a lambda it pickles.
        return LoadedClip(pre, partial(int, dim), dim, spec, device, precision, ZeroEmbedder)

    def load():
        import torch
        from transformers import CLIPModel

        torch.manual_seed(0)  # every replica and every run gets the same random weights
        return CLIPModel(config)

    return LoadedClip(pre, load, dim, spec, device, precision)


def _preprocessor(folder: Path | None, config, tokenizer) -> ClipPreprocessor:
    """Read preprocessor_config.json directly: transformers' CLIP processor needs torchvision."""
    image_size = int(config.vision_config.image_size)
    raw = {}
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        raw = json.loads((folder / "preprocessor_config.json").read_text())
    size = raw.get("size", image_size)
    crop = raw.get("crop_size", image_size)
    return ClipPreprocessor(
        resize_to=int(size.get("shortest_edge", image_size) if isinstance(size, dict) else size),
        crop=int(crop.get("height", image_size) if isinstance(crop, dict) else crop),
        mean=tuple(raw.get("image_mean", OPENAI_MEAN)),
        std=tuple(raw.get("image_std", OPENAI_STD)),
        tokenizer=tokenizer,
        max_tokens=int(config.text_config.max_position_embeddings),
    )
