"""The model stage's side of ``--decode-device cuda``: a batch's images become the model's uint8
crops on its own device. JPEGs the decode workers left as bytes are decoded there in one nvJPEG
call, turned upright, resized and cropped (``decode.gpu``); crops the workers made on the CPU
(formats the GPU cannot take) are copied in beside them, in order. A JPEG the GPU fails after all
(a file cut in its scan data passes the header check) takes the job's own CPU preprocessing here,
and only if that fails too is it an error row.

``agreement`` measures, before a job starts, how far vectors from GPU-decoded images stray from
the CPU path's on the package's evaluation set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..decode.gpu import DeviceCrops, NvJpeg, upright
from ..decode.jpeg_header import read_jpeg_header
from .media import jpeg

MIN_AGREEMENT = 0.999  # mean cosine to the CPU path's vectors below which GPU decoding is refused


@dataclass(frozen=True)
class GpuDecoding:
    """What a model worker needs to decode on its device; it pickles, and each worker builds its
    own ``GpuImages`` on the device it runs on."""

    backend: str
    resize_to: int
    crop: int
    cpu: Callable[[bytes], np.ndarray]  # the job's CPU preprocessing of one image's bytes

    def on(self, device) -> "GpuImages":
        return GpuImages(self, device)


class GpuImages:
    """``decode``: bytes → (3, H, W) uint8 tensors on ``device`` or None per item; nvJPEG by
    the spec's backend unless given."""

    def __init__(self, spec: GpuDecoding, device, decode: Callable[[Sequence[bytes]], list] | None = None):
        import torch

        self.torch, self.device, self.spec = torch, torch.device(device), spec
        self.decode = decode or NvJpeg(device, spec.backend)
        self.crops = DeviceCrops(spec.resize_to, spec.crop)

    def __call__(self, images: Sequence[np.ndarray | bytes]) -> tuple[object, list[str | None]]:
        """Each image a CPU-made crop (3, crop, crop) or JPEG bytes → one (N, 3, crop, crop) uint8
        batch on the device, in order, and for each image None or why it could not be decoded
        (its row is then left zero)."""
        torch, crop = self.torch, self.spec.crop
        out = torch.zeros((len(images), 3, crop, crop), dtype=torch.uint8, device=self.device)
        errors: list[str | None] = [None] * len(images)
        on_cpu = {i: x for i, x in enumerate(images) if not isinstance(x, bytes)}
        jpegs = [i for i, x in enumerate(images) if isinstance(x, bytes)]
        decoded_rows, decoded = [], []
        for i, image in zip(jpegs, self.decode([images[i] for i in jpegs])):
            if image is not None:
                decoded_rows.append(i)
                decoded.append(upright(image, _orientation(images[i])))
                continue
            try:
                on_cpu[i] = self.spec.cpu(images[i])
            except ValueError as exc:
                errors[i] = str(exc)
        if decoded:
            out[decoded_rows] = self.crops(decoded)
        if on_cpu:
            rows = list(on_cpu)
            out[rows] = torch.from_numpy(np.stack([on_cpu[i] for i in rows])).to(self.device)
        return out, errors


def _orientation(data: bytes) -> int:
    header = read_jpeg_header(data)
    return header.orientation if header else 1


def agreement(images: GpuImages, embed: Callable[[object], np.ndarray]) -> dict:
    """Mean and least cosine between the vectors of the evaluation set's images (as JPEGs of
    quality 90) decoded on the GPU and on the CPU (``images.spec.cpu``), by ``embed``."""
    from ..models.eval_set import evaluation_images

    jpegs = [jpeg(np.asarray(img), quality=90) for img in evaluation_images()]
    on_gpu, errors = images(jpegs)
    if any(errors):
        raise RuntimeError(f"the GPU decoder failed an evaluation image: {next(e for e in errors if e)}")
    gpu = embed(on_gpu)
    cpu = embed(np.stack([images.spec.cpu(j) for j in jpegs]))
    cosines = (gpu * cpu).sum(axis=1)
    return {"images": len(jpegs), "mean_cosine": round(float(cosines.mean()), 6),
            "min_cosine": round(float(cosines.min()), 6), "backend": images.spec.backend}
