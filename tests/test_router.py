"""``mmpipe route``: a real router on 127.0.0.1 in front of real mmpipe servers (the moderation
models loaded) and of small scripted servers where a test needs a backend to be busy, refuse or
break on cue."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from mmpipe.cli import app as cli_app, main
from mmpipe.errors import ConfigError
from mmpipe.serve.app import create_app
from mmpipe.serve.config import ServeConfig
from mmpipe.serve.route_config import RouteConfig, load_route_config
from mmpipe.serve.router import create_router_app
from tests.conftest import RunningServer

CLEAN = {"input": "have a lovely day"}


@pytest.fixture(scope="module")
def regions():
    """Two real mmpipe servers; the failover test swaps "a" for its restarted self."""
    servers = {"a": RunningServer(create_app(ServeConfig())),
               "b": RunningServer(create_app(ServeConfig()))}
    yield servers
    for s in servers.values():
        s.stop()


class Scripted:
    """A stand-in backend whose /readyz utilisation and /v1/moderations status the test sets;
    while ``gate`` is set, moderation requests wait for it to open."""

    def __init__(self, utilisation: float = 0.0, status: int = 200, retry_after: str | None = None):
        self.utilisation, self.status, self.retry_after = utilisation, status, retry_after
        self.hits = 0
        self.gate: threading.Event | None = None
        app = FastAPI()
        app.get("/readyz")(self._readyz)
        app.post("/v1/moderations")(self._moderate)
        self.server = RunningServer(app)
        self.url = self.server.url

    def _readyz(self) -> dict:
        return {"status": "ready", "queued": round(self.utilisation * 4), "max_queue": 4,
                "utilisation": self.utilisation}

    def _moderate(self) -> JSONResponse:  # sync: runs in a worker thread, so it may block
        self.hits += 1
        if self.gate:
            self.gate.wait(timeout=10)
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return JSONResponse({"id": "scripted", "results": []}, status_code=self.status, headers=headers)


@pytest.fixture
def scripted():
    made: list[Scripted] = []

    def make(**behaviour) -> Scripted:
        made.append(Scripted(**behaviour))
        return made[-1]

    yield make
    for s in made:
        s.server.stop()


@pytest.fixture
def router():
    """``router(("name", url), …, **settings)``: a running router over those backends."""
    made: list[RunningServer] = []

    def make(*backends: tuple[str, str], **settings) -> RunningServer:
        config = RouteConfig(backends=[{"name": n, "url": u} for n, u in backends],
                             **{"probe_interval_s": 0.1, "probe_timeout_s": 0.5, **settings})
        made.append(RunningServer(create_router_app(config)))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def moderate(router: RunningServer, body: dict = CLEAN) -> tuple[int, str | None, dict]:
    status, headers, answer = router.post("/v1/moderations", body)
    return status, headers.get("x-mmpipe-backend"), answer


def routes(router: RunningServer) -> dict[str, dict]:
    return {b["name"]: b for b in router.get("/routes")[1]["backends"]}


def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_the_preferred_backend_answers_everything_while_healthy(regions, router):
    r = router(("a", regions["a"].url), ("b", regions["b"].url))
    status, backend, answer = moderate(r, {"input": ["have a lovely day", "you are a stupid idiot"]})
    assert (status, backend) == (200, "a")
    assert [x["flagged"] for x in answer["results"]] == [False, True]
    # Client errors pass through untouched and are not retried elsewhere.
    status, headers, answer = r.post("/v1/embeddings", {"input": "hi", "model": "clip"})
    assert (status, headers["x-mmpipe-backend"], answer["error"]["code"]) == (404, "a", "model_not_found")
    status, models = r.get("/v1/models")
    assert status == 200 and models["data"][0]["id"] == "mmpipe-moderation"
    state = routes(r)
    assert state["a"]["healthy"] and state["b"]["healthy"]
    assert (state["a"]["requests"], state["b"]["requests"]) == (3, 0)
    assert r.get("/readyz") == (200, {"status": "ready", "healthy": ["a", "b"]})


def test_spills_while_the_preferred_reports_high_utilisation(regions, router, scripted):
    busy = scripted(utilisation=0.95)
    r = router(("busy", busy.url), ("b", regions["b"].url), spill_utilisation=0.8)
    assert [moderate(r)[:2] for _ in range(3)] == [(200, "b")] * 3
    assert busy.hits == 0 and routes(r)["busy"]["utilisation"] == 0.95
    busy.utilisation = 0.1  # the next probe shows room again
    eventually(lambda: moderate(r)[1] == "busy")


def test_own_requests_in_flight_count_between_probes(regions, router, scripted):
    slow = scripted(utilisation=0.5)
    slow.gate = threading.Event()
    # Only the startup probe: whatever changes afterwards is the router's own correction.
    r = router(("slow", slow.url), ("b", regions["b"].url), spill_utilisation=0.8, probe_interval_s=60)
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(moderate, r) for _ in range(2)]
        eventually(lambda: routes(r)["slow"]["in_flight"] == 2)
        assert routes(r)["slow"]["utilisation"] == 1.0  # 0.5 reported + 2 requests / 4 slots
        assert moderate(r)[:2] == (200, "b")
        slow.gate.set()
        assert [f.result()[:2] for f in held] == [(200, "slow")] * 2
    assert routes(r)["slow"]["utilisation"] == 0.5
    assert moderate(r)[:2] == (200, "slow")


def test_a_429_spills_to_the_next_and_all_429_is_a_429_with_retry_after(regions, router, scripted):
    first, second = scripted(status=429, retry_after="7"), scripted(status=429, retry_after="3")
    both_busy = router(("first", first.url), ("second", second.url))
    status, headers, answer = both_busy.post("/v1/moderations", CLEAN)
    assert (status, headers["Retry-After"]) == (429, "3")  # the soonest any backend has room
    assert answer["error"]["type"] == "rate_limit_error" and answer["error"]["code"] == "overloaded"
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert (first.hits, second.hits) == (1, 1)

    r = router(("first", first.url), ("b", regions["b"].url), probe_interval_s=60)
    assert moderate(r)[:2] == (200, "b")
    assert routes(r)["first"]["utilisation"] >= 1  # a 429 reads as full until a probe says not
    assert moderate(r)[:2] == (200, "b") and first.hits == 2


def test_a_5xx_is_a_failure_and_the_request_is_retried(regions, router, scripted):
    broken = scripted(status=500)
    r = router(("broken", broken.url), ("b", regions["b"].url), eject_after_failures=1, probe_interval_s=60)
    assert moderate(r)[:2] == (200, "b")
    state = routes(r)["broken"]
    assert not state["healthy"] and state["failures"] == 1 and "500" in state["last_error"]
    assert moderate(r)[:2] == (200, "b") and broken.hits == 1


def test_a_request_never_outlives_its_timeout(regions, router, scripted):
    stuck = scripted()
    stuck.gate = threading.Event()
    r = router(("stuck", stuck.url), ("b", regions["b"].url), request_timeout_s=0.5)
    t0 = time.monotonic()
    try:
        status, _, answer = moderate(r)
    finally:
        stuck.gate.set()
    assert (status, answer["error"]["code"]) == (504, "timeout") and time.monotonic() - t0 < 2
    assert "ReadTimeout" in routes(r)["stuck"]["last_error"]


def test_no_healthy_backend_is_a_503_with_an_openai_error(router):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = router(("gone", dead))
    status, backend, answer = moderate(r)
    assert (status, backend, answer["error"]["code"]) == (503, None, "no_backend")
    assert answer["error"]["type"] == "service_unavailable"
    assert r.get("/readyz")[0] == 503 and r.get("/healthz") == (200, {"status": "alive"})
    assert "ConnectError" in routes(r)["gone"]["last_error"]


def test_failover_when_the_preferred_dies_and_readmission_when_it_returns(regions, router):
    r = router(("a", regions["a"].url), ("b", regions["b"].url))
    assert moderate(r)[:2] == (200, "a")
    port = int(regions["a"].url.rsplit(":", 1)[1])
    regions["a"].stop()
    # Every request succeeds: the one that finds "a" gone is retried on "b".
    assert [moderate(r)[:2] for _ in range(5)] == [(200, "b")] * 5
    eventually(lambda: not routes(r)["a"]["healthy"])
    assert routes(r)["a"]["failures"] >= 2 and routes(r)["b"]["healthy"]

    regions["a"] = RunningServer(regions["a"].app, port=port)  # same models, same address
    eventually(lambda: routes(r)["a"]["healthy"])
    assert moderate(r)[:2] == (200, "a")


BAD_CONFIGS = [
    ("backends: []", "routes.yaml: backends: List should have at least 1 item"),
    ("port: 8080", "routes.yaml: backends: Field required"),
    ("backends: [{name: x, url: 'http://h:1'}, {name: x, url: 'http://h:2'}]", "repeated: x"),
    ("backends: [{name: x, url: 'ftp://h'}]", "routes.yaml: backends.0.url: "),
    ("backends: [{name: 'x y', url: 'http://h'}]", "routes.yaml: backends.0.name: "),
    ("backends: [{name: x, url: 'http://h'}]\nspill_utilisation: 1.5", "routes.yaml: spill_utilisation: "),
    ("backends: [{name: x, url: 'http://h'}]\nprobe_every: 1", "routes.yaml: probe_every: "),
    ("- a list", "routes.yaml: the config file must be a YAML mapping"),
]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", BAD_CONFIGS)
def test_a_bad_route_config_is_one_line_naming_the_field(tmp_path, text, message):
    with pytest.raises(ConfigError) as exc:
        load_route_config(write(tmp_path, text))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_flags_override_the_file_and_are_named_when_bad(tmp_path):
    path = write(tmp_path, "port: 9000\nbackends: [{name: eu, url: 'https://eu.example.com/'}]")
    cfg = load_route_config(path, host="0.0.0.0", port=None)
    assert (cfg.host, cfg.port, cfg.backends[0].url) == ("0.0.0.0", 9000, "https://eu.example.com")
    with pytest.raises(ConfigError, match=r"^--port: "):
        load_route_config(path, port=70000)


def test_the_route_command_refuses_a_bad_config_with_exit_2(tmp_path, capsys):
    bad = write(tmp_path, "backends: []")
    result = CliRunner().invoke(cli_app, ["route", "--config", bad])
    # The command raises; turning that into one line and exit 2 is main()'s job, as for serve.
    assert isinstance(result.exception, ConfigError) and "backends" in str(result.exception)
    assert CliRunner().invoke(cli_app, ["route"]).exit_code == 2  # --config is required
    with pytest.raises(SystemExit) as exit_:
        main(["route", "--config", bad])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "mmpipe: error: routes.yaml: backends: List should have at least 1 item after validation, not 0")
