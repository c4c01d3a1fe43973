"""Models behind one small interface, loaded from a spec string.

Specs: ``hf:<repo-or-dir>`` (a transformers checkpoint, downloaded when a hub is reachable),
``path:<dir>`` (a local safetensors checkpoint), ``pkg:<package>`` (a checkpoint shipped inside
an installed Python package), ``random:ViT-B-32`` (random weights, for benchmarks only),
``zeros:ViT-B-32`` (zero vectors without reading the input: a job's cost around its model).
"""

from .clip import ClipEmbedder, ClipPreprocessor, load_clip
from .spec import DEFAULT_CLIP, ModelSpec

__all__ = ["DEFAULT_CLIP", "ClipEmbedder", "ClipPreprocessor", "ModelSpec", "load_clip"]
