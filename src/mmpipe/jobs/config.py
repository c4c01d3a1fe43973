"""Options every batch job has: where to read and write, how to read it, resume and caps."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config import job_flag, layered, read_yaml, usable_cores, validate
from ..errors import ConfigError
from ..extras import require
from ..decode.image import DEFAULT_MAX_PIXELS
from ..sources import SourceOptions
from ..sources.kafka_url import is_kafka, parse_kafka_url
from ..sources.options import DEFAULT_MAX_BYTES
from .follow_metrics import check_port_free

KAFKA_PARAMS = ("group", "consumer")  # what a followed kafka:// INPUT's query may say


class JobConfig(BaseModel):
    """Field names are the CLI flags with dashes; a job's config adds its own fields."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    input: str
    out: str
    decode_workers: int = Field(default_factory=usable_cores, ge=1, le=256)
    # The decode workers as processes (local engine; see engine.child_process), so that this
    # process only feeds the models; False: threads in this process.
    decode_processes: bool = True
    read_workers: int = Field(8, ge=1, le=256)
    device: str = "cpu"
    limit: int | None = Field(None, ge=0)
    overwrite: bool = False
    shard_size: int = Field(10_000, ge=1)
    id_column: str | None = None
    image_column: str | None = None
    text_column: str | None = None
    allow_private_urls: bool = False
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1)
    allow_pickle: bool = False
    storage_options: dict = Field(default_factory=dict)
    # What the machine costs (USD an hour): stats.json and the summary then give the cost per
    # million items.
    price_per_hour: float | None = Field(None, gt=0)
    # Where the stages run: this process (threads) or a Ray cluster; output and resume are the same.
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: connect to a running cluster if any, else start one
    # Keep following INPUT (a folder or prefix) for new files until SIGTERM/Ctrl-C (jobs.follow).
    follow: bool = False
    # Following: a shard commits at most this long after its first row, however few rows it has.
    shard_seconds: float = Field(10.0, gt=0, le=86_400)
    # Following: a file is read once its size has stayed the same this long (a writer is done).
    settle_s: float = Field(2.0, ge=0, le=3600)
    poll_s: float = Field(1.0, gt=0, le=3600)  # following: how often INPUT is listed again
    # Following a kafka:// topic: each message's value is a JSON object (a manifest row) or raw bytes.
    kafka_value: Literal["json", "raw"] = "json"
    # Following: serve its figures as Prometheus metrics on this port (0: a free one, in the
    # manifest); None: off.
    metrics_port: int | None = Field(None, ge=0, le=65535)

    @model_validator(mode="after")
    def _follow_fits(self):
        if self.follow and self.engine != "local":
            raise ConfigError("--follow", "runs on the local engine (--engine local)")
        if self.follow and self.limit is not None:
            raise ConfigError("--limit", "caps a listing; it does not combine with --follow")
        if is_kafka(self.input):
            if not self.follow:
                raise ConfigError("INPUT", "a kafka:// topic has no end: follow it with --follow")
            parse_kafka_url(self.input, "INPUT", KAFKA_PARAMS)
            require("following a kafka:// topic", "kafka")
        if self.metrics_port is not None and not self.follow:
            raise ConfigError("--metrics-port", "serves a follower's metrics; it needs --follow")
        if self.metrics_port:  # a port taken is refused now, before the models load
            check_port_free(self.metrics_port)
        return self

    @classmethod
    def build(cls, **values):
        """Validate, turning pydantic's errors into one ConfigError naming the CLI flag."""
        return validate(cls, values, flag_of=job_flag)

    def source_options(self, kinds: frozenset[str] = frozenset({"image"})) -> SourceOptions:
        return SourceOptions(kinds=kinds, id_column=self.id_column, image_column=self.image_column,
                             text_column=self.text_column, storage_options=self.storage_options,
                             allow_private_urls=self.allow_private_urls, max_bytes=self.max_bytes)


def with_config_file(cls: type[JobConfig], path: str | None, options: dict, given: set[str]) -> dict:
    """``options`` (a command line's values) on top of the ``--config`` YAML's fields: the file's
    values replace the defaults, the names in ``given`` (set on the command line) win over both.
    A bad key or value stops here, naming the file and the field."""
    if path is None:
        return options
    data = read_yaml(path)
    # The command line's --follow too, which the file's follow options are checked against.
    validate(cls, {"input": "", "out": "", "follow": options.get("follow", False), **data}, Path(path).name)
    return layered(data, options, given)
