"""``mmpipe serve`` settings (a YAML file and/or flags), validated before anything loads."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    policy: str | None = None  # the moderation policy; None: the default
    clip_model: str | None = None  # for zero-shot policy categories
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)
    replicas: int = Field(1, ge=1, le=64)
    max_queue: int = Field(256, ge=1)  # items admitted at once; beyond it: 429
    request_timeout_s: float = Field(30.0, gt=0)  # beyond it: 504
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)  # beyond it: 413
    allow_private_urls: bool = False
    max_pixels: int = Field(64_000_000, ge=1)
    model_threads: int = Field(1, ge=1, le=256)


def load_serve_config(path: str | None, **overrides) -> ServeConfig:
    data = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", f"no config file {path!r}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(p.name, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(p.name, "a serve config is a YAML mapping")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServeConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "config"
        where = Path(path).name if path and field not in overrides else f"--{field.replace('_', '-')}"
        raise ConfigError(where, f"{field}: {err['msg']}" if where != f"--{field.replace('_', '-')}"
                          else err["msg"]) from None
