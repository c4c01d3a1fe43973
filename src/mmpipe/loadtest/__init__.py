"""Open-loop load tests of an OpenAI-style server (``mmpipe serve``, ``mmpipe route`` or any other
that answers ``POST /v1/moderations`` or ``POST /v1/embeddings``).

Requests arrive as a Poisson process at the offered rate: exponential gaps drawn from a seeded RNG,
each request sent at its scheduled time whether or not earlier ones have been answered. A tester
that waits for an answer before sending more slows down with the server and so never sees the
queue a real population of users builds up ("coordinated omission"); here a slow server only makes
requests pile up. Latency counts from the *scheduled* send time, so a client that falls behind
cannot hide the delay either; how far behind it fell is measured (``lag_p90_ms`` …) and flagged
(``client_behind``) because then the numbers describe the client as much as the server.

    results = run_sweep("http://127.0.0.1:8000", "moderations", [5, 10, 20], duration_s=10)
    write_json(results, "loadtest.json")
    plot(results, "loadtest.png")
"""

from .plan import ENDPOINTS, Payload, default_payloads, load_payloads, parse_rates
from .report import plot, problems, summary_table, write_json
from .results import Latency, LoadResult
from .run import run_load, run_sweep

__all__ = ["ENDPOINTS", "Latency", "LoadResult", "Payload", "default_payloads", "load_payloads",
           "parse_rates", "plot", "problems", "run_load", "run_sweep", "summary_table", "write_json"]
