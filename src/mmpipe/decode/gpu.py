"""JPEG decoding on the GPU (``--decode-device cuda``): a batch of JPEG bytes decoded with nvJPEG,
then turned upright, resized and centre-cropped on the device, so that the CPU only reads bytes.

nvJPEG comes through whichever library is installed: torchvision's batched ``decode_jpeg(...,
device="cuda")`` or NVIDIA nvImageCodec. Which files go here is decided from their bytes by
``jpeg_header.gpu_decodable``; the rest, and any file the GPU fails, take the CPU path.

The resize is PyTorch's antialiased bicubic, which uses Pillow's kernel (a = -0.5): the crops
match the CPU path's to within rounding (measured in the tests, and gated by the job on the
package's evaluation set before it starts).
"""

from __future__ import annotations

from typing import Sequence

from .image import short_side_to

BACKENDS = ("torchvision", "nvimgcodec")


def nvjpeg_backend() -> str | None:
    """The first library that can run nvJPEG here, or None (no CUDA, neither installed)."""
    import torch

    if not torch.cuda.is_available():
        return None
    for name in BACKENDS:
        try:
            if name == "torchvision":
                from torchvision.io import decode_jpeg  # noqa: F401
            else:
                from nvidia import nvimgcodec  # noqa: F401
            return name
        except Exception:  # noqa: BLE001 - a broken install (torchvision built for another torch) counts as none
            continue
    return None


class NvJpeg:
    """Decodes a batch of JPEG bytes on ``device``: a (3, H, W) uint8 RGB tensor per item as
    stored (EXIF orientation not applied), or None where the GPU could not decode it."""

    def __init__(self, device, backend: str):
        import torch

        self.torch, self.device, self.backend = torch, torch.device(device), backend
        if backend == "nvimgcodec":
            from nvidia import nvimgcodec

            self.decoder = nvimgcodec.Decoder(device_id=self.device.index or 0)
            self.params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.RGB,
                                                  apply_exif_orientation=False)

    def __call__(self, datas: Sequence[bytes]) -> list:
        if not datas:
            return []
        if self.backend == "nvimgcodec":
            images = self.decoder.decode(list(datas), params=self.params)
            # HWC on the decoder's stream; DLPack makes torch's stream wait for it.
            return [None if im is None else self.torch.from_dlpack(im).permute(2, 0, 1) for im in images]
        try:
            return self._torchvision(datas)
        except RuntimeError:  # one bad file fails the whole call: find it item by item
            out = []
            for data in datas:
                try:
                    out.extend(self._torchvision([data]))
                except RuntimeError:
                    out.append(None)
            return out

    def _torchvision(self, datas: Sequence[bytes]) -> list:
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [self.torch.frombuffer(bytearray(d), dtype=self.torch.uint8) for d in datas]
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)


def upright(image, orientation: int):
    """A (C, H, W) image turned as its EXIF orientation says, as PIL's ``exif_transpose`` does."""
    import torch

    h, w = 1, 2
    if orientation == 2:
        return image.flip(w)
    if orientation == 3:
        return image.flip(h).flip(w)
    if orientation == 4:
        return image.flip(h)
    if orientation == 5:
        return image.transpose(h, w)
    if orientation == 6:
        return torch.rot90(image, -1, (h, w))
    if orientation == 7:
        return image.transpose(h, w).flip(h).flip(w)
    if orientation == 8:
        return torch.rot90(image, 1, (h, w))
    return image


class DeviceCrops:
    """Upright (3, H, W) uint8 images → (N, 3, crop, crop) uint8: the short side resized to
    ``resize_to`` (antialiased bicubic) and the centre cut out, with ``Preprocessor.image``'s
    geometry. Images of one size are resized together, in one call."""

    def __init__(self, resize_to: int, crop: int):
        import torch

        self.torch, self.resize_to, self.crop = torch, resize_to, crop

    def __call__(self, images: Sequence) -> object:
        torch = self.torch
        out = torch.empty((len(images), 3, self.crop, self.crop), dtype=torch.uint8,
                          device=images[0].device if images else "cpu")
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(tuple(image.shape[1:]), []).append(i)
        for (h, w), rows in groups.items():
            batch = torch.stack([images[i] for i in rows]).float()
            out[rows] = self._crop(self._resize(batch, h, w))
        return out

    def _resize(self, batch, h: int, w: int):
        size = short_side_to((w, h), self.resize_to)[::-1]  # (H, W)
        if size != (h, w):
            batch = self.torch.nn.functional.interpolate(batch, size=size, mode="bicubic",
                                                         antialias=True, align_corners=False)
        return batch.round_().clamp_(0, 255).to(self.torch.uint8)

    def _crop(self, batch):
        h, w = batch.shape[2:]
        top, left = max((h - self.crop) // 2, 0), max((w - self.crop) // 2, 0)
        return batch[:, :, top: top + self.crop, left: left + self.crop]
