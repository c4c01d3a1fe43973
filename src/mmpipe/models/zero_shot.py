"""Zero-shot categories with CLIP: a category is positive and negative text prompts.

Per category: softmax over (image · prompt) × temperature for its prompts; the score is the
probability mass on the positive prompts. Prompts are embedded once, when the scorer is built.
"""

from __future__ import annotations

import numpy as np


class ZeroShotClip:
    def __init__(self, embedder, preprocessor, categories: dict[str, tuple[list[str], list[str]]],
                 temperature: float | dict[str, float] = 100.0):
        """``temperature``: one logit scale for all categories, or one per category name;
        ``embedder`` embeds the prompts, once."""
        self.categories = {}
        for name, (positive, negative) in categories.items():
            prompts = [*positive, *negative]
            vectors = embedder.embed_texts([preprocessor.text(p) for p in prompts])
            scale = temperature[name] if isinstance(temperature, dict) else temperature
            self.categories[name] = (np.asarray(vectors, np.float32), len(positive), scale)

    def score_vectors(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Each category's score of images already embedded (unit rows): the moderation job's
        clip stage embeds every frame once and shares the vectors with a bank's matching."""
        images = np.asarray(images, np.float32)
        out = {}
        for name, (prompts, n_positive, scale) in self.categories.items():
            logits = images @ prompts.T * scale
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            out[name] = probs[:, :n_positive].sum(axis=1).astype(np.float32)
        return out
