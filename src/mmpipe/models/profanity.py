"""Offensive-language score of texts: alt-profanity-check (a linear SVM over word n-grams).

Its model is two joblib pickles inside the pinned, installed package: loading them trusts that
package exactly as much as importing its Python code does. Weights a *user* supplies are still
only accepted as safetensors or ONNX.
"""

from __future__ import annotations

import numpy as np


class ProfanityScorer:
    def __init__(self):
        from profanity_check import predict_prob

        self.predict_prob = predict_prob

    def score(self, texts: list[str]) -> np.ndarray:
        """P(offensive) per text, in one vectorised call; blank texts are 0 without asking."""
        out = np.zeros(len(texts), np.float32)
        todo = [i for i, t in enumerate(texts) if t and t.strip()]
        if todo:
            out[todo] = self.predict_prob([texts[i] for i in todo])
        return out
