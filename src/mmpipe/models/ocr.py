"""Text in images and video frames: PP-OCR (detector + recogniser, ONNX) via RapidOCR.

Defaults differ from RapidOCR's for throughput: its detector scales the *short* side up to 736 px
(``limit_type: min``), which makes a 640x360 frame 1308x736; we cap the *long* side at 640
instead (frames are already at most 640 px), about a third of the pixels, and skip the 180°
angle classifier (captions and memes are upright).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OcrLine:
    text: str
    score: float
    box: list[list[float]]  # four (x, y) corners


class OcrReader:
    def __init__(self, threads: int | None = None, det_limit_side_len: int = 640,
                 min_score: float = 0.5, use_angle_cls: bool = False):
        from rapidocr_onnxruntime import RapidOCR

        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        logging.getLogger("OrtInferSession").setLevel(logging.ERROR)
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1} if threads else {}
        self.engine = RapidOCR(det_limit_side_len=det_limit_side_len, det_limit_type="max",
                               use_cls=use_angle_cls, text_score=min_score, **options)
        self.min_score = min_score

    def read(self, frame: np.ndarray) -> list[OcrLine]:
        # RapidOCR takes arrays as OpenCV's BGR.
        result, _ = self.engine(np.ascontiguousarray(frame[..., ::-1]))
        lines = [OcrLine(str(text), float(score), [list(map(float, p)) for p in box])
                 for box, text, score in (result or []) if float(score) >= self.min_score]
        # Reading order: by line (rows ~ half a line height apart), then left to right.
        return sorted(lines, key=lambda l: (round(_top(l) / max(_height(l), 1) * 2), _left(l)))

    def read_text(self, frame: np.ndarray) -> str:
        return "\n".join(line.text for line in self.read(frame))


def _top(line: OcrLine) -> float:
    return min(p[1] for p in line.box)


def _left(line: OcrLine) -> float:
    return min(p[0] for p in line.box)


def _height(line: OcrLine) -> float:
    return max(p[1] for p in line.box) - _top(line)
