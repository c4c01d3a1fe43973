"""An embedder's two towers (any family: each is exported through the model's
``get_image_features`` / ``get_text_features``) as ONNX graphs run by onnxruntime.

Each tower is exported once per checkpoint (dynamic batch; dynamic sequence length for text),
checked against eager fp32 on the evaluation set, and kept in the checkpoint's cache folder;
int8 is onnxruntime's dynamic quantisation of the exported fp32 graph. Files are written under
a temporary name and renamed, so workers exporting at once never read a half-written graph.

Imports torch on import: load it only where the onnx runtime is asked for.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import ModelLoadError
from .embedder import LoadedEmbedder
from .towers import PixelNormaliser, TowerEmbedder, projected, unit_rows

TOWERS = ("image", "text")
SIGMOID = "sigmoid.json"  # a sigmoid-trained pair's (scale, bias), or null
# An fp32 graph differs from eager fp32 only by the order of float operations.
EXPORT_MIN_COSINE = 0.9999


class OnnxEmbedder:
    """``TowerEmbedder``'s interface on two onnxruntime sessions."""

    def __init__(self, paths: dict[str, Path], loaded: LoadedEmbedder):
        import onnxruntime as ort

        self.sessions = {t: ort.InferenceSession(str(paths[t]), providers=["CPUExecutionProvider"])
                         for t in TOWERS}
        self.dim = loaded.dim
        self.preprocessor = loaded.preprocessor
        self.normalise = PixelNormaliser(loaded.preprocessor)
        # The graphs hold the towers only; a sigmoid pair's scale and bias are kept beside them.
        sigmoid = json.loads((paths["image"].parent / SIGMOID).read_text())
        self.sigmoid = tuple(sigmoid) if sigmoid else None

    def embed_images(self, pixels: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        x = self.normalise(np.ascontiguousarray(pixels)).numpy()
        return _unit(self.sessions["image"].run(None, {"pixel_values": x})[0])

    def embed_texts(self, token_lists: Sequence[np.ndarray]) -> np.ndarray:
        ids, mask = self.preprocessor.text_batch(token_lists)
        return _unit(self.sessions["text"].run(None, {"input_ids": ids, "attention_mask": mask})[0])


def onnx_towers(variant, precision: str) -> dict[str, Path]:
    """The two graphs of ``variant`` (an ``EmbedderVariant``) in ``precision`` (fp32 or int8),
    exported and quantised first when its cache folder lacks them."""
    folder: Path = variant.cache
    paths = _paths(folder, precision)
    if all(p.is_file() for p in paths.values()):
        return paths
    fp32 = _paths(folder, "fp32")
    if not all(p.is_file() for p in fp32.values()):
        export_towers(variant, fp32)
    if precision == "int8":
        for tower in TOWERS:
            with atomic_path(paths[tower]) as tmp:
                quantise_matmuls(fp32[tower], tmp)
    return paths


def export_towers(loaded: LoadedEmbedder, paths: dict[str, Path]) -> None:
    """Export both towers of ``loaded`` in fp32 and refuse a graph that disagrees with eager."""
    from .eval_set import evaluation_captions, evaluation_images

    model = loaded.load_model().float().eval()
    pre = loaded.preprocessor
    pixels = np.stack([pre.image(img) for img in evaluation_images(8)])
    tokens = [pre.text(c) for c in evaluation_captions(8)]
    ids, mask = (torch.from_numpy(a) for a in pre.text_batch(tokens))
    text_axes = {0: "batch", 1: "sequence"}
    for tower, module, args, axes in (
            ("image", _ImageTower(model), (PixelNormaliser(pre)(pixels),), {"pixel_values": {0: "batch"}}),
            ("text", _TextTower(model), (ids, mask), {"input_ids": text_axes, "attention_mask": text_axes})):
        with atomic_path(paths[tower]) as tmp:
            export_graph(module, args, axes, tmp)
    reference = TowerEmbedder(model, replace(loaded, device="cpu", precision="fp32"))
    with atomic_path(paths["image"].parent / SIGMOID) as tmp:
        tmp.write_text(json.dumps(reference.sigmoid))
    exported = OnnxEmbedder(paths, loaded)
    for tower, want, got in (("image", reference.embed_images(pixels), exported.embed_images(pixels)),
                             ("text", reference.embed_texts(tokens), exported.embed_texts(tokens))):
        worst = float((want * got).sum(axis=1).min())
        if worst < EXPORT_MIN_COSINE:
            for p in paths.values():
                p.unlink(missing_ok=True)
            raise ModelLoadError(f"the ONNX export of {loaded.spec}'s {tower} tower disagrees with "
                                 f"eager fp32 (min cosine {worst:.6f} < {EXPORT_MIN_COSINE})")


class _ImageTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return projected(self.model.get_image_features(pixel_values=pixel_values))


class _TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return projected(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def export_graph(module, args: tuple, dynamic: dict, path: Path) -> None:
    """``module`` (a wrapper around a model) to ONNX; ``dynamic``: each input's dynamic axes."""
    # The exporter puts the module in eval mode and, after, back in the mode it found it in,
    # recursively: a new wrapper is in training mode, so the model inside was left in training
    # mode, its dropout on. CLIP has no dropout; MiniLM's eager reference drifted to cosine
    # 0.93-0.96 from the (correct) graph, and differently on every run.
    module.eval()
    # The TorchScript exporter: deprecated, but the torch.export-based one (which would also need
    # onnxscript) wrote a text tower onnxruntime refused to load. Its tracer warnings are about
    # Python conditions on shapes, which the parity check covers.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(dynamic), output_names=["embedding"],
                          dynamic_axes={**dynamic, "embedding": {0: "batch"}}, opset_version=17,
                          dynamo=False)


def quantise_matmuls(src: Path, dst: Path) -> None:
    """Int8 weights for the MatMuls (where a transformer's time goes), activations quantised per
    batch. Not ``models.onnx_int8``'s dynamic setting, made for a conv net: unsigned weights ran
    ViT-B/32's MatMulInteger at 0.85x fp32 here, signed ones at 2x; and onnxruntime's symbolic
    shape inference, which its pre-processing needs, cannot finish on the text tower's graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"])


def _paths(folder: Path, precision: str) -> dict[str, Path]:
    return {t: folder / f"{t}.{precision}.onnx" for t in TOWERS}


def _unit(out: np.ndarray) -> np.ndarray:
    return unit_rows(torch.from_numpy(out))
