"""``mmpipe serve`` settings (a YAML file and/or flags), validated before anything loads.

Example::

    port: 8000
    moderation:            # always served; the shipped policy unless `policy` names a file
      policy: my-policy.yaml
      max_batch_size: 16
      replicas: 2
    embeddings:            # optional: /v1/embeddings answers once a CLIP model is named
      model: path:/models/clip-vit-base-patch32
      precision: int8      # fp32, bf16, fp16 (GPU), int8 (CPU); gated against fp32
      runtime: onnx        # eager, compile, onnx (default: onnx for a sentence encoder)
      max_batch_size: 32
      buckets: [1, 4, 16, 32]
      max_queue_delay_ms: 100  # 429 for a request that would wait longer (default: 3 batches' time)
    search:                # optional: /v1/search over an index made by `mmpipe index`
      index: /data/index   # queries are embedded by `embeddings` (default: the index's model)
      max_k: 100
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config import default, read_yaml, validate
from ..decode.image import DEFAULT_MAX_PIXELS
from ..models.accuracy import Gate
from ..models.variants import Precision, Runtime

_STRICT = ConfigDict(extra="forbid", protected_namespaces=())


class Batching(BaseModel):
    """How one model's requests are batched and how many workers serve it."""

    model_config = _STRICT

    max_batch_size: int = Field(16, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)
    # Worker threads sharing one copy of the weights (several replicas keep a GPU busy while
    # one of them is between batches).
    replicas: int = Field(1, ge=1, le=64)
    # Requests one batch may hold (1: each request alone, as big generative models need).
    max_inflight_per_replica: int | None = Field(None, ge=1)
    # Static shapes: batches are padded up to the next of these sizes (compilers such as
    # TensorRT or Neuron build one graph per shape). Padding never reaches a response.
    buckets: list[int] | None = None
    max_queue: int = Field(256, ge=1)  # items admitted at once; beyond it: 429
    # Latency-aware admission: a request whose estimated wait (the batches ahead of it and its
    # own, timed on the replicas' recent batches) exceeds this gets 429 too, so that what an
    # admitted request waits is bounded in time, whatever the batch size. None: three full batches'
    # time as lately measured (batcher.delay_budget), which follows the model and the machine; a
    # number here is a fixed budget instead, and one below a few batch times refuses load the
    # server could have answered in time.
    max_queue_delay_ms: float | None = Field(None, gt=0, le=600_000)

    @model_validator(mode="after")
    def _buckets_cover_batches(self):
        if self.buckets is not None:
            if not self.buckets or any(b < 1 for b in self.buckets) or sorted(set(self.buckets)) != self.buckets:
                raise ValueError("buckets must be increasing positive sizes, e.g. [1, 4, 16]")
            if self.buckets[-1] < self.max_batch_size:
                raise ValueError(f"the largest bucket ({self.buckets[-1]}) must be at least "
                                 f"max_batch_size ({self.max_batch_size})")
        return self


class Moderation(Batching):
    policy: str | None = None  # the moderation policy; None: the shipped default
    clip_model: str | None = None  # for zero-shot policy categories
    model_threads: int = Field(1, ge=1, le=256)
    nsfw_precision: Literal["fp32", "int8"] = "fp32"  # as `mmpipe moderate --nsfw-precision`


class Embeddings(Batching):
    model: str  # a CLIP spec, as `mmpipe embed --model` takes
    name: str | None = None  # the id clients pass as `model`; default: derived from the spec
    device: str = "cpu"
    precision: Precision = "fp32"  # as `mmpipe embed --precision`
    # As `mmpipe embed --runtime`. None: onnx for a sentence encoder on the CPU (the same vectors
    # as eager, min cosine 0.9999999, in less time a request: docs/benchmarks.md), eager for
    # everything else.
    runtime: Runtime | None = None
    # The accuracy gate, as `mmpipe embed --min-cosine`.
    min_cosine: float = Field(default(Gate, "min_mean_cosine"), ge=-1, le=1)
    allow_pickle: bool = False
    # Matryoshka-trained models keep their meaning when cut short; CLIP does not, so a request's
    # `dimensions` is refused unless this is set.
    truncatable: bool = False
    # None: for a sentence encoder run by onnx on the CPU, one replica per core, each on one core
    # (one session; onnxruntime runs a call on the calling thread), else 1. The model alone runs
    # as fast either way, but one replica's batch work in Python (padding, records, answers) then
    # overlaps the other's model time, and a request that arrives while one replica is busy finds
    # the other free: MiniLM's server answered a quarter more at capacity on two cores.
    replicas: int | None = Field(None, ge=1, le=64)


class Search(BaseModel):
    model_config = _STRICT

    index: str  # a folder made by `mmpipe index`
    max_k: int = Field(100, ge=1, le=10_000)  # the most results one request may ask for


class ServeConfig(BaseModel):
    model_config = _STRICT

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    moderation: Moderation = Field(default_factory=Moderation)
    embeddings: Embeddings | None = None
    search: Search | None = None
    request_timeout_s: float = Field(30.0, gt=0)  # beyond it: 504
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)  # beyond it: 413
    allow_private_urls: bool = False
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)  # decompression bombs stop here


# Flags that set a field in every model section rather than at the top level.
PER_MODEL_FLAGS = ("max_batch_size", "max_wait_ms", "replicas", "max_inflight_per_replica")


def load_serve_config(path: str | None, **flags) -> ServeConfig:
    """The config file (if any) with the command line's flags on top; a bad value stops here
    with one line naming the file or flag and the field."""
    data = read_yaml(path) if path else {}
    flags = {k: v for k, v in flags.items() if v is not None}
    given = set(flags)
    if "policy" in flags:
        data.setdefault("moderation", {})["policy"] = flags.pop("policy")
    if "search_index" in flags:
        data["search"] = {**(data.get("search") or {}), "index": flags.pop("search_index")}
    if "embedding_model" in flags:
        data["embeddings"] = {**(data.get("embeddings") or {}), "model": flags.pop("embedding_model")}
    for key in PER_MODEL_FLAGS:
        if key in flags:
            value = flags.pop(key)
            for section in ("moderation", "embeddings"):
                if section == "moderation" or data.get(section):
                    data.setdefault(section, {})[key] = value
    data.update(flags)
    return validate(ServeConfig, data, Path(path or "config").name, partial(_flag_of, given))


def _flag_of(given: set[str], loc: tuple) -> str | None:
    """The flag a bad value came from: flags set a field wherever it sits (--max-batch-size in
    every model section), and --embedding-model is ``embeddings.model``."""
    leaf = str(loc[-1]) if loc else ""
    flag = "embedding_model" if leaf == "model" else leaf
    return f"--{flag.replace('_', '-')}" if flag in given else None
