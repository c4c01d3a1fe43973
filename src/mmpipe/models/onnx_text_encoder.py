"""A sentence encoder (``text_encoder``) as one ONNX graph run by onnxruntime, in fp32 or int8.

The graph holds the transformer and the pooling, so it maps padded ids and their mask to the
unit vectors. It is exported once per checkpoint into the checkpoint's cache folder and checked
against eager fp32, int8 quantised from it, as ``onnx_embedder`` does CLIP's towers; a variant
is measured on the evaluation set's captions and gated as CLIP's are (``gate``).

Imports torch on import: load it only where the onnx runtime is asked for.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import ModelLoadError
from . import eval_set
from .accuracy import Gate, embedding_accuracy
from .gate import BATCH, accuracy_path, enforced, measured
from .onnx_embedder import EXPORT_MIN_COSINE, export_graph, quantise_matmuls
from .text_encoder import LoadedTextEncoder, TextEncoder, padded, pooled
from .variants import Variant, checkpoint_cache

# Padded positions are masked out of attention and pooling, so their id never reaches a vector.
PAD_ID = 0


class OnnxTextEncoder:
    """``TextEncoder``'s interface on an onnxruntime session; ``threads``: its intra-op threads
    (None: onnxruntime's default, one per core). Several threads may call it at once."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def embed_texts(self, token_lists: Sequence[np.ndarray]) -> np.ndarray:
        ids, mask = padded(token_lists, PAD_ID)
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def gated_text_encoder(loaded: LoadedTextEncoder, variant: Variant, device: str = "cpu",
                       gate: Gate = Gate(), threads: int | None = None) -> LoadedTextEncoder:
    """``loaded`` run as ``variant`` (eager fp32, or onnx fp32 / int8, on ``threads`` intra-op
    threads) with its accuracy against eager fp32; raises ``AccuracyGateError`` with the failing
    figure when it is below ``gate``."""
    variant.check(device, sentence_encoder=True)
    if variant.is_reference:
        return loaded
    cache = checkpoint_cache(loaded)
    path = onnx_graph(loaded, cache, variant.precision)
    wrapped = replace(loaded, make_encoder=lambda: OnnxTextEncoder(path, threads))
    figures = measured(accuracy_path(cache, variant, "cpu"),
                       lambda: {"text": embedding_accuracy(*_embed_captions(loaded, wrapped))})
    return replace(wrapped, variant={"precision": variant.precision, "runtime": variant.runtime,
                                     "accuracy": enforced(figures, variant, loaded.spec, gate)})


def onnx_graph(loaded: LoadedTextEncoder, cache: Path, precision: str) -> Path:
    """The graph in ``precision`` (fp32 or int8), exported and quantised first when ``cache``
    lacks it."""
    path, fp32 = cache / f"text-encoder.{precision}.onnx", cache / "text-encoder.fp32.onnx"
    if path.is_file():
        return path
    if not fp32.is_file():
        export_text_encoder(loaded, fp32)
    if precision == "int8":
        with atomic_path(path) as tmp:
            quantise_matmuls(fp32, tmp)
    return path


def export_text_encoder(loaded: LoadedTextEncoder, path: Path) -> None:
    """Export ``loaded`` in fp32 and refuse a graph that disagrees with eager."""
    encoder = loaded.make_encoder()
    tokens = [loaded.tokenize(c) for c in eval_set.evaluation_captions(8)]
    axes = {0: "batch", 1: "sequence"}
    with atomic_path(path) as tmp:
        # Traced on a padded batch, so the mask's path through the graph is the one padding takes.
        export_graph(_Pooled(encoder), tuple(torch.from_numpy(a) for a in padded(tokens, PAD_ID)),
                     {"input_ids": axes, "attention_mask": axes}, tmp)
        worst = float((encoder.embed_texts(tokens) * OnnxTextEncoder(tmp).embed_texts(tokens)).sum(1).min())
        if worst < EXPORT_MIN_COSINE:
            raise ModelLoadError(f"the ONNX export of {loaded.spec} disagrees with eager fp32 "
                                 f"(min cosine {worst:.6f} < {EXPORT_MIN_COSINE})")


def _embed_captions(reference: LoadedTextEncoder, variant: LoadedTextEncoder) -> tuple[np.ndarray, np.ndarray]:
    tokens = [reference.tokenize(c) for c in eval_set.evaluation_captions()]
    batches = [tokens[i: i + BATCH] for i in range(0, len(tokens), BATCH)]
    return tuple(np.concatenate([encoder.embed_texts(b) for b in batches])
                 for encoder in (reference.make_encoder(), variant.make_encoder()))


class _Pooled(torch.nn.Module):
    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.model, self.pooling = encoder.model, encoder.pooling

    def forward(self, input_ids, attention_mask):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pooled(hidden, attention_mask, self.pooling)
