"""What every twin-tower embedder shares, whatever its family: the preprocessor, the pixel
normaliser and the eager embedder.

Split in two so each runs where it belongs: ``Preprocessor`` (resize, crop, tokenise; no weights,
cheap to share across decode threads) and ``TowerEmbedder`` (the weights, owned by one model
worker). Images leave the preprocessor as uint8 and are normalised where the model runs
(``PixelNormaliser``): a decoded image waits in queues, crosses to a GPU and travels between
processes at a quarter of its float32 size, and the float work is done on the GPU.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image

from ..decode.image import short_side_to
from .checkpoint import TokenIds
from .device_feed import DeviceFeed, thread_buffer

if TYPE_CHECKING:
    from .embedder import LoadedEmbedder


@dataclass(frozen=True)
class Preprocessor:
    resize_to: int  # shortest edge after resizing
    crop: int  # the square the model sees
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokenizer: object
    max_tokens: int
    # False: the whole image is squeezed into the square, its aspect ratio lost (SigLIP's
    # processor); True: the short side is resized and the centre cropped (CLIP's).
    centre_crop: bool = True
    # Batches of texts padded to ``max_tokens`` (pads masked): a model trained on padded texts
    # (SigLIP, whose text tower pools the last position) needs it; else to their longest text.
    pad_texts: bool = False
    token_ids: TokenIds = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "token_ids", TokenIds(self.tokenizer, self.max_tokens))

    def image(self, img: Image.Image, exact: bool = True, out: np.ndarray | None = None) -> np.ndarray:
        """RGB image → (3, crop, crop) uint8, resized and cropped as the family's reference image
        processor does it; ``PixelNormaliser`` does the rest where the model runs.

        ``exact=False`` resizes only the part of the image a centre crop keeps (Pillow's ``box``):
        the same filter over the same pixels, less work, though not bit-exact (Pillow places
        each output pixel from the box's edge: values differ by a level or a few). ``out``: a
        (3, crop, crop) uint8 array to write the result into (a decode slab's row)."""
        if not self.centre_crop:
            square = (self.crop, self.crop)
            return _chw(np.asarray(img if img.size == square else img.resize(square, Image.BICUBIC)), out)
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

    def text_batch(self, token_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention mask) of a batch of ``text`` results, as the text tower reads them."""
        return pad_tokens(token_lists, self.pad_id, self.max_tokens if self.pad_texts else 0)

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

    def __init__(self, pre: Preprocessor, device: str = "cpu", precision: str = "fp32"):
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


class TowerEmbedder:
    """Owns the weights; turns batches of preprocessed inputs into L2-normalised vectors with the
    model's ``get_image_features`` / ``get_text_features``, which every family has."""

    def __init__(self, model, loaded: "LoadedEmbedder"):
        import torch

        self.torch = torch
        self.device, self.dtype = placement(loaded.device, loaded.precision)
        self.model = model.to(self.device, self.dtype).eval()
        self.dim = loaded.dim
        pre = self.preprocessor = loaded.preprocessor
        # (scale, bias) of a family trained with a sigmoid loss, for zero-shot scoring.
        self.sigmoid = loaded.family.sigmoid(model) if loaded.family.sigmoid else None
        self.normalise = PixelNormaliser(pre, loaded.device, loaded.precision)
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
        ids, mask = self.preprocessor.text_batch(token_lists)
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


def pad_tokens(token_lists: Sequence[np.ndarray], pad_id: int, length: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask) padded to the longest text in the batch, or to ``length`` if
    longer (not to the model's limit unless trained so: the text tower costs per token)."""
    longest = max(length, *(len(t) for t in token_lists))
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


