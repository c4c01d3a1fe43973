"""``python -m mmpipe.local_kafka``: a local Kafka for trying ``--follow kafka://`` by hand.

Prints the ``kafka://`` address on one line, then serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal

from . import LocalKafka


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmpipe.local_kafka",
        description="A local Kafka broker: prints its kafka:// address, then serves until SIGTERM or Ctrl-C.")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of each --topic")
    parser.add_argument("--topic", action="append", default=[], help="a topic to create (repeatable)")
    parser.add_argument("--port", type=int, default=0, help="a fixed port for clients (default: any)")
    args = parser.parse_args(argv)
    # Blocked before any thread starts (librdkafka's and the proxy's inherit the mask), so the
    # signal waits for sigwait below instead of landing in some other thread.
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    # Always behind the proxy: it is what can listen on a chosen port.
    with LocalKafka(partitions=args.partitions, proxy=True, port=args.port) as kafka:
        for topic in args.topic:
            kafka.create_topic(topic)
        print(f"kafka://{kafka.bootstrap}", flush=True)
        signal.sigwait(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
