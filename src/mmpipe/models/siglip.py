"""The SigLIP family (image-text pairs trained with a sigmoid loss) as transformers'
``SiglipModel`` holds it.

Where it differs from CLIP: the image is squeezed whole into the model's square (no centre
crop) and normalised with mean and std 0.5; texts are padded to the model's length (64, pads
masked), as transformers' SigLIP pipeline tokenises them (``padding="max_length"``): the model
was trained so, and its text tower pools the last position; the towers' outputs are the
vectors (no projection; the image tower ends in an attention-pooling head); and a pair's score
is sigmoid(scale · cosine + bias) with the learnt ``logit_scale``/``logit_bias``.
"""

from __future__ import annotations

from .embedder import Family
from .towers import Preprocessor

MEAN = STD = (0.5, 0.5, 0.5)

# Architectures ``random:`` can build: the published configs, with random weights; the vocabulary
# is the byte tokenizer's (its ids reach CLIP's 49408) instead of SigLIP's 32000 pieces.
RANDOM_ARCHS = {
    "SigLIP-B-16": dict(
        text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                         num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=64),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                           num_hidden_layers=12, patch_size=16, image_size=224)),
}


def preprocessor(raw: dict, config, tokenizer) -> Preprocessor:
    """As SiglipImageProcessor reads preprocessor_config.json (size as height and width); the
    config's image size where absent."""
    image_size = int(config.vision_config.image_size)
    size = raw.get("size", image_size)
    side = int(size.get("height", image_size) if isinstance(size, dict) else size)
    return Preprocessor(resize_to=side, crop=side, mean=tuple(raw.get("image_mean", MEAN)),
                        std=tuple(raw.get("image_std", STD)), tokenizer=tokenizer,
                        max_tokens=int(config.text_config.max_position_embeddings),
                        centre_crop=False, pad_texts=True)


def dim(config) -> int:
    return int(config.vision_config.hidden_size)


def vision_steps(model) -> tuple:
    """Stem: patch embedding (with positions); head: post-layernorm + attention pooling."""
    import torch

    vision = model.vision_model
    return (vision.embeddings, list(vision.encoder.layers),
            torch.nn.Sequential(vision.post_layernorm, vision.head))


def sigmoid(model) -> tuple[float, float]:
    return float(model.logit_scale.detach().exp()), float(model.logit_bias.detach())


FAMILY = Family(model_type="siglip", config_class="SiglipConfig", model_class="SiglipModel",
                preprocessor=preprocessor, dim=dim, vision_steps=vision_steps,
                image_modules=("vision_model",), random_archs=RANDOM_ARCHS, sigmoid=sigmoid)
