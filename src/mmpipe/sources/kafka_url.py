"""``kafka://HOST:PORT[,HOST:PORT]/TOPIC?group=NAME``: where a topic is, as the followed INPUT
and as ``--emit``'s destination both write it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from ..errors import ConfigError

SCHEME = "kafka://"
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._\-]{1,249}$")  # Kafka's own rule for topic names


def is_kafka(url: str) -> bool:
    return url.lower().startswith(SCHEME)


@dataclass(frozen=True)
class KafkaUrl:
    bootstrap: str  # "host:port,host:port", as librdkafka's bootstrap.servers takes it
    topic: str
    params: dict[str, str] = field(default_factory=dict)  # the query: group=, consumer=


def parse_kafka_url(url: str, field_name: str, allowed: tuple[str, ...] = ()) -> KafkaUrl:
    """The parts of ``url``; anything malformed is a ConfigError naming ``field_name`` (the flag),
    as is a query parameter not in ``allowed``."""
    if not is_kafka(url):
        raise ConfigError(field_name, f"{url!r} is not a kafka://HOST:PORT/TOPIC address")
    parts = urlsplit(url)
    hosts = parts.netloc.split(",") if parts.netloc else []
    bad = [h for h in hosts if not _HOST_PORT.match(h)]
    if not hosts or bad:
        raise ConfigError(field_name, f"{url!r}: brokers must be HOST:PORT[,HOST:PORT]"
                                      + (f", not {bad[0]!r}" if bad else ""))
    topic = parts.path.lstrip("/")
    if not _TOPIC.match(topic):
        raise ConfigError(field_name, f"{url!r}: name one topic after the brokers "
                                      "(letters, digits, '.', '_', '-')")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = f"; it takes {', '.join(allowed)}" if allowed else ""
        raise ConfigError(field_name, f"{url!r}: unknown parameter {unknown[0]!r}{known}")
    return KafkaUrl(",".join(hosts), topic, params)
