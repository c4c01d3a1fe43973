"""Models behind one small interface, loaded from a spec string.

Specs: ``hf:<repo-or-dir>`` (a transformers checkpoint, downloaded when a hub is reachable),
``path:<dir>`` (a local safetensors checkpoint), ``pkg:<package>`` (a checkpoint shipped inside
an installed Python package), ``random:ViT-B-32`` (random weights, for benchmarks only),
``zeros:ViT-B-32`` (zero vectors without reading the input: a job's cost around its model).

A twin-tower (image-text) checkpoint's family is read from its config.json: CLIP or SigLIP
(``models.embedder.FAMILIES``).
"""

from .embedder import Embedder, LoadedEmbedder, load_embedder
from .spec import DEFAULT_CLIP, ModelSpec
from .towers import Preprocessor, TowerEmbedder

__all__ = ["DEFAULT_CLIP", "Embedder", "LoadedEmbedder", "ModelSpec", "Preprocessor", "TowerEmbedder",
           "load_embedder"]
