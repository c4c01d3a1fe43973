"""The CLIP family (OpenAI's contrastive image-text pairs, softmax-trained) as transformers'
``CLIPModel`` holds it: its preprocessing (short side resized, centre cropped, OpenAI's mean and
std), its ``random:`` architectures and its image tower's steps for pipeline splitting."""

from __future__ import annotations

from .embedder import Family
from .towers import Preprocessor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Architectures ``random:`` can build: the published configs, with random weights.
RANDOM_ARCHS = {
    "ViT-B-32": dict(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                         num_hidden_layers=12, max_position_embeddings=77),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                           num_hidden_layers=12, patch_size=32, image_size=224),
        projection_dim=512),
}


def preprocessor(raw: dict, config, tokenizer) -> Preprocessor:
    """As CLIPImageProcessor reads preprocessor_config.json; the config's image size where absent."""
    image_size = int(config.vision_config.image_size)
    size = raw.get("size", image_size)
    crop = raw.get("crop_size", image_size)
    return Preprocessor(
        resize_to=int(size.get("shortest_edge", image_size) if isinstance(size, dict) else size),
        crop=int(crop.get("height", image_size) if isinstance(crop, dict) else crop),
        mean=tuple(raw.get("image_mean", OPENAI_MEAN)),
        std=tuple(raw.get("image_std", OPENAI_STD)),
        tokenizer=tokenizer,
        max_tokens=int(config.text_config.max_position_embeddings),
    )


def dim(config) -> int:
    return int(config.projection_dim)


def vision_steps(model) -> tuple:
    """Stem: patch embedding + pre-layernorm; head: post-layernorm on the class token (which
    stands for the image) + projection."""
    import torch

    from .pipeline import FirstToken

    vision = model.vision_model
    return (torch.nn.Sequential(vision.embeddings, vision.pre_layrnorm), list(vision.encoder.layers),
            torch.nn.Sequential(FirstToken(), vision.post_layernorm, model.visual_projection))


FAMILY = Family(model_type="clip", config_class="CLIPConfig", model_class="CLIPModel",
                preprocessor=preprocessor, dim=dim, vision_steps=vision_steps,
                image_modules=("vision_model", "visual_projection"), random_archs=RANDOM_ARCHS)
