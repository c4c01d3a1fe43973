"""Zero-shot categories with an image-text embedder: a category is positive and negative text
prompts. Prompts are embedded once, when the scorer is built.

How an image's score follows from its cosines to the prompts depends on how the pair was
trained, which the embedder tells (``Embedder.sigmoid``):

- softmax (CLIP): softmax over (image · prompt) × temperature for the category's prompts; the
  score is the probability mass on the positive prompts;
- sigmoid (SigLIP): each prompt's own probability, sigmoid(scale · cosine + bias) with the
  model's learnt scale and bias; the score is the most probable positive prompt's. Prompts are
  not played against each other, so negative prompts and the temperature do not enter.
"""

from __future__ import annotations

import numpy as np


class ZeroShotClip:
    def __init__(self, embedder, preprocessor, categories: dict[str, tuple[list[str], list[str]]],
                 temperature: float | dict[str, float] = 100.0):
        """``temperature``: one logit scale for all categories, or one per category name (softmax
        pairs only); ``embedder`` embeds the prompts, once."""
        self.sigmoid = embedder.sigmoid
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
            cosines = images @ prompts.T
            if self.sigmoid is not None:
                out[name] = sigmoid_scores(cosines[:, :n_positive], *self.sigmoid)
                continue
            logits = cosines * scale
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            out[name] = probs[:, :n_positive].sum(axis=1).astype(np.float32)
        return out


def sigmoid_scores(cosines: np.ndarray, scale: float, bias: float) -> np.ndarray:
    """(images, positive prompts) cosines → each image's most probable positive prompt's
    sigmoid probability."""
    return (1 / (1 + np.exp(-(cosines * scale + bias)))).max(axis=1).astype(np.float32)
