"""``mmpipe route`` settings: the mmpipe servers ("regions") a router sends requests to, in order
of preference, and when it spills past, ejects and re-admits them. Validated before anything starts.

Example::

    port: 8080
    backends:                  # order = preference: the first healthy one that is not busy answers
      - {name: eu-west, url: http://10.0.0.5:8000}
      - {name: us-east, url: https://mmpipe.us.example.com}
    spill_utilisation: 0.8     # a backend this full sends new requests on to the next
    probe_interval_s: 1.0
    eject_after_failures: 2    # failed probes/requests in a row that take a backend out
    readmit_after_successes: 1 # passing probes in a row that bring it back
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import flags_named, read_yaml, validate
from ..net import http_base_url


class Backend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Sent back in the x-mmpipe-backend header, hence header-safe characters only.
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    url: str  # the server's base URL: http(s)://host[:port][/prefix], without /v1

    @field_validator("url")
    @classmethod
    def _http_base_url(cls, url: str) -> str:
        return http_base_url(url)


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    backends: list[Backend] = Field(min_length=1)
    # Measured utilisation (see router.Backend.utilisation) at or above which a backend is
    # passed over for the next one; 1.0 spills only when a backend is full.
    spill_utilisation: float = Field(0.8, gt=0, le=1)
    probe_interval_s: float = Field(1.0, gt=0)
    # Also the connect timeout of proxied requests: a backend that cannot take a connection
    # this fast is treated as down rather than waited for.
    probe_timeout_s: float = Field(1.0, gt=0)
    eject_after_failures: int = Field(2, ge=1)
    readmit_after_successes: int = Field(1, ge=1)
    # The whole request, every retry on another backend included; beyond it: 504.
    request_timeout_s: float = Field(60.0, gt=0)
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)  # beyond it: 413

    @field_validator("backends")
    @classmethod
    def _unique_names(cls, backends: list[Backend]) -> list[Backend]:
        names = [b.name for b in backends]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"backend names must be unique; repeated: {', '.join(repeated)}")
        return backends


def load_route_config(path: str, **flags) -> RouteConfig:
    """The config file with the command line's flags (host, port) on top; a bad value stops here
    with one line naming the file or flag and the field."""
    given = {k: v for k, v in flags.items() if v is not None}
    return validate(RouteConfig, {**read_yaml(path), **given}, Path(path).name, flags_named(given))
