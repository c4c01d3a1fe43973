"""librdkafka's mock Kafka cluster, through ctypes on the copy bundled with confluent-kafka.

confluent-kafka's Python API only reaches the mock cluster through ``test.mock.num.brokers``,
which hides its controls (topic creation, advertised addresses, the group join delay); the C
functions are exported from the bundled library, so they are called directly. They are marked
experimental in rdkafka_mock.h: the signatures below are those of librdkafka 2.x.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

from ..extras import MissingExtra

_PRODUCER = 0  # rd_kafka_type_t RD_KAFKA_PRODUCER: the handle only hosts the cluster's thread
_TOPIC_ALREADY_EXISTS = 36
_ERRSTR = 512


def _library() -> ctypes.CDLL:
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is None or spec.origin is None:
        raise MissingExtra("a local Kafka broker", ["kafka"])
    # The wheel keeps its (renamed) librdkafka in a sibling folder of the package.
    libs = Path(spec.origin).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*")) or sorted(libs.glob("librdkafka*.dylib"))
    if not found:
        raise MissingExtra("a local Kafka broker (confluent-kafka's bundled librdkafka)", ["kafka"])
    lib = ctypes.CDLL(str(found[0]))
    p, c = ctypes.c_void_p, ctypes.c_char_p
    signatures: dict[str, tuple[list, object]] = {
        "rd_kafka_conf_new": ([], p),
        "rd_kafka_conf_set": ([p, c, c, c, ctypes.c_size_t], ctypes.c_int),
        "rd_kafka_conf_destroy": ([p], None),
        "rd_kafka_new": ([ctypes.c_int, p, c, ctypes.c_size_t], p),
        "rd_kafka_destroy": ([p], None),
        "rd_kafka_err2str": ([ctypes.c_int], c),
        "rd_kafka_mock_cluster_new": ([p, ctypes.c_int], p),
        "rd_kafka_mock_cluster_destroy": ([p], None),
        "rd_kafka_mock_cluster_bootstraps": ([p], c),
        "rd_kafka_mock_topic_create": ([p, c, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "rd_kafka_mock_broker_set_host_port": ([p, ctypes.c_int32, c, ctypes.c_int], None),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": ([p, ctypes.c_int32], None),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype
    return lib


class MockCluster:
    """A one-broker mock cluster (broker id 1) listening on 127.0.0.1, alive until ``destroy``."""

    def __init__(self, rebalance_delay_ms: int):
        self._lib = _library()
        conf = self._lib.rd_kafka_conf_new()
        errstr = ctypes.create_string_buffer(_ERRSTR)
        # Warnings and errors only: the hosting handle connects to nothing, so it has little to say.
        if self._lib.rd_kafka_conf_set(conf, b"log_level", b"4", errstr, _ERRSTR) != 0:
            self._lib.rd_kafka_conf_destroy(conf)
            raise RuntimeError(errstr.value.decode())
        self._rk = self._lib.rd_kafka_new(_PRODUCER, conf, errstr, _ERRSTR)
        if not self._rk:  # rd_kafka_new takes conf over only when it succeeds
            self._lib.rd_kafka_conf_destroy(conf)
            raise RuntimeError(f"librdkafka: {errstr.value.decode()}")
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._rk, 1)
        if not self._cluster:
            self._lib.rd_kafka_destroy(self._rk)
            raise RuntimeError("librdkafka could not start its mock cluster")
        self._lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._cluster, rebalance_delay_ms)
        # Read once: advertising another address later does not move the listener.
        self.listener: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, name: str, partitions: int) -> None:
        err = self._lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), partitions, 1)
        if err == _TOPIC_ALREADY_EXISTS:
            raise ValueError(f"topic {name!r} already exists")
        if err:
            raise RuntimeError(f"creating topic {name!r}: {self._lib.rd_kafka_err2str(err).decode()}")

    def advertise(self, host: str, port: int) -> None:
        """Make metadata responses name ``host:port`` for the broker, so clients connect there."""
        self._lib.rd_kafka_mock_broker_set_host_port(self._cluster, 1, host.encode(), port)

    def destroy(self) -> None:
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._lib.rd_kafka_destroy(self._rk)
            self._cluster = self._rk = None
