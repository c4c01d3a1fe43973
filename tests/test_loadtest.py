"""mmpipe.loadtest and `mmpipe loadtest` against real servers on 127.0.0.1: small scripted apps
(a fixed delay, a lock that serialises requests, every other request refused) and the real
moderation server."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path
from typing import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from typer.testing import CliRunner

from mmpipe.cli import app as cli_app
from mmpipe.cli import main
from mmpipe.errors import ConfigError
from mmpipe.loadtest import load_payloads, parse_rates, plot, problems, run_load, run_sweep, write_json
from mmpipe.loadtest.client import Pool, Shot, request_bytes
from mmpipe.sample_moderation import COMMENTS
from tests.conftest import RunningServer


def scripted_app(delay_s: float = 0.0, *, serial: bool = False, refuse_every_other: bool = False) -> FastAPI:
    """Answers both endpoints after ``delay_s`` (one request at a time when ``serial``) and keeps
    every body it was sent in ``app.state.bodies``."""
    app = FastAPI()
    app.state.bodies = []
    arrivals = itertools.count()
    one_at_a_time = asyncio.Lock()

    @app.post("/v1/{endpoint}")
    async def answer(endpoint: str, request: Request):
        app.state.bodies.append(await request.json())
        if refuse_every_other and next(arrivals) % 2:
            return JSONResponse({"error": {"message": "overloaded", "code": "overloaded"}},
                                status_code=429, headers={"Retry-After": "1"})
        if serial:
            async with one_at_a_time:
                await asyncio.sleep(delay_s)
        else:
            await asyncio.sleep(delay_s)
        return {"object": endpoint}

    return app


@contextmanager
def serving(app, tls: tuple[Path, Path] | None = None) -> Iterator[RunningServer]:
    server = RunningServer(app, tls=tls)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_sends_rate_times_duration_and_times_each_request_from_its_schedule():
    app = scripted_app(0.05)
    with serving(app) as server:
        result = run_load(server.url, "moderations", 40, 1.5, seed=1, progress=False)
    assert abs(result.sent - 60) <= 20  # Poisson: mean 60, sd ~8
    assert len(app.state.bodies) == result.sent == result.completed
    assert result.statuses == {"200": result.sent} and result.non_200_share == 0
    assert result.ok_latency.count == result.answered_latency.count == result.sent
    assert 50 <= result.ok_latency.p50_ms <= result.ok_latency.p90_ms <= result.ok_latency.p99_ms
    assert result.ok_latency.p99_ms <= result.ok_latency.max_ms
    assert 0.8 * result.sent / 1.5 <= result.throughput <= result.sent / 1.5
    assert result.url == f"{server.url}/v1/moderations" and result.lag_p90_ms >= 0
    assert {body["input"] for body in app.state.bodies} <= set(COMMENTS)


@pytest.mark.slow
def test_a_slow_server_does_not_slow_the_sender():
    """Open loop: the same seed sends the same requests however slowly they are answered, and
    the queue they build up is in the latencies (a closed loop would report ~100 ms)."""
    with serving(scripted_app()) as server:
        fast = run_load(server.url, "moderations", 25, 1.0, seed=3, progress=False)
    slow_app = scripted_app(0.1, serial=True)  # serves 10 requests/s
    with serving(slow_app) as server:
        slow = run_load(server.url, "moderations", 25, 1.0, seed=3, progress=False)
    assert slow.sent == fast.sent == len(slow_app.state.bodies) and slow.sent >= 15
    assert slow.statuses == {"200": slow.sent}
    # The last of ~25 requests waits behind the others: ~2.5 s of work for a 1 s window.
    assert slow.ok_latency.max_ms > 1000 > 100 > fast.ok_latency.p50_ms
    assert 7 <= slow.throughput <= 12 and slow.elapsed_s >= 0.1 * slow.sent


@pytest.mark.slow
def test_refused_requests_are_counted_by_status():
    with serving(scripted_app(refuse_every_other=True)) as server:
        result = run_load(server.url, "embeddings", 40, 1.0, seed=2, progress=False)
    ok, refused = result.statuses["200"], result.statuses["429"]
    assert set(result.statuses) == {"200", "429"} and ok + refused == result.sent == result.completed
    assert abs(ok - refused) <= 1 and abs(result.non_200_share - refused / result.sent) < 1e-3
    assert result.ok_latency.count == ok and result.answered_latency.count == result.sent
    assert result.url.endswith("/v1/embeddings")


@pytest.mark.slow
def test_answers_that_close_the_connection_or_come_in_chunks_are_read_whole():
    """The client's own HTTP/1.1: a server may end keep-alive after any answer, or send it
    chunked; every request still gets its status, on a new connection where needed."""
    app = FastAPI()
    arrivals = itertools.count()

    @app.post("/v1/{endpoint}")
    async def answer(endpoint: str):
        n = next(arrivals)
        if n % 3 == 0:
            return JSONResponse({"n": n}, headers={"Connection": "close"})
        if n % 3 == 1:
            return StreamingResponse(iter([b'{"n": ', str(n).encode(), b"}"]), media_type="application/json")
        return JSONResponse({"error": {"message": "no"}}, status_code=400)

    with serving(app) as server:
        result = run_load(server.url, "embeddings", 60, 1.0, seed=5, progress=False)
    assert result.sent >= 30 and result.completed == result.sent
    assert set(result.statuses) == {"200", "400"} and result.statuses["400"] >= result.sent // 3 - 1


@pytest.mark.slow
def test_requests_beyond_the_connection_limit_wait_for_one():
    app, in_flight = FastAPI(), []

    @app.post("/v1/{endpoint}")
    async def answer(endpoint: str):
        in_flight.append(1)
        assert len(in_flight) <= 2
        await asyncio.sleep(0.05)
        in_flight.pop()
        return {"object": endpoint}

    with serving(app) as server:
        result = run_load(server.url, "moderations", 80, 0.5, connections=2, seed=6, progress=False)
    assert result.statuses == {"200": result.sent} and result.sent >= 25
    # ~40 requests at 25/s through two connections: the last waits ~1 s, and that is in its latency.
    assert result.ok_latency.max_ms > 500 and result.throughput < 45


@pytest.mark.slow
def test_a_connection_dropped_without_an_answer_is_a_connection_error():
    """A real socket server that answers the first request on each connection and drops the
    second unanswered: those are connection errors, the rest 200s, and none is lost."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_connection(conn: socket.socket) -> None:
        with conn:
            for reply in (answer, None):
                data = b""
                while b"\r\n\r\n" not in data:
                    if not (chunk := conn.recv(65536)):
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                if reply is None:
                    return
                conn.sendall(reply)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = run_load(url, "embeddings", 40, 1.0, seed=7, progress=False)
    finally:
        listener.close()
    assert set(result.statuses) == {"200", "connection_error"}
    assert sum(result.statuses.values()) == result.sent and result.statuses["connection_error"] >= 5


@pytest.mark.slow
def test_requests_past_the_timeout_are_awaited_and_counted_as_timeouts():
    with serving(scripted_app(1.0)) as server:
        result = run_load(server.url, "moderations", 10, 0.5, timeout_s=0.2, seed=0, progress=False)
    assert result.sent > 0 and result.statuses == {"timeout": result.sent}
    assert result.completed == 0 and result.ok_latency.count == 0 and result.ok_latency.p50_ms is None
    assert result.throughput == 0 and result.non_200_share == 1 and result.elapsed_s < 1.0
    assert any("no request got a 200" in line for line in problems([result]))


@pytest.mark.slow
def test_warmup_requests_are_sent_but_not_counted():
    app = scripted_app()
    with serving(app) as server:
        result = run_load(f"{server.url}/v1/", "moderations", 40, 0.5, warmup_s=0.5, progress=False)
    assert 0 < result.sent < len(app.state.bodies)
    assert result.statuses == {"200": result.sent}


@pytest.mark.slow
def test_batches_models_and_input_files_shape_the_bodies(tmp_path):
    app = scripted_app()
    jsonl = tmp_path / "bodies.jsonl"
    jsonl.write_text('{"input": ["a", "b"], "user": "u1"}\n\n{"input": "c"}\n')
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\n\nsecond text\n")
    with serving(app) as server:
        run_load(server.url, "moderations", 30, 0.4, batch=3, model="m", seed=4, progress=False)
        batched, app.state.bodies = app.state.bodies, []
        run_load(server.url, "moderations", 30, 0.4, payloads=load_payloads(jsonl), model="m", progress=False)
        from_jsonl, app.state.bodies = app.state.bodies, []
        run_load(server.url, "embeddings", 30, 0.4, payloads=load_payloads(texts), progress=False)
        from_texts = app.state.bodies
    assert batched and all(b["model"] == "m" and len(b["input"]) == 3 and set(b["input"]) <= set(COMMENTS)
                           for b in batched)
    assert from_jsonl[:2] == [{"input": ["a", "b"], "user": "u1", "model": "m"}, {"input": "c", "model": "m"}]
    assert from_texts[:2] == [{"input": "first text"}, {"input": "second text"}]


@pytest.mark.parametrize("text, message", [
    ("", "has no payloads"),
    ('{"input": "a"}\n[1, 2]\n', 'line 2: expected a JSON object with "input"'),
    ('{"input": \n', "line 1: invalid JSON"),
])
def test_a_bad_input_file_is_named(tmp_path, text, message):
    path = tmp_path / "bodies.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"^--input-file: ") as exc:
        load_payloads(path)
    assert message in str(exc.value)


@pytest.mark.slow
def test_a_sweep_writes_json_and_a_png(tmp_path):
    with serving(scripted_app(refuse_every_other=True)) as server:
        results = run_sweep(server.url, "moderations", [10, 20], 0.5, progress=False)
    data = json.loads(write_json(results, tmp_path / "out" / "load.json").read_text())
    assert [r["offered_rate"] for r in data["results"]] == [10, 20]
    first = data["results"][0]
    assert {"sent", "completed", "throughput", "statuses", "non_200_share", "ok_latency", "answered_latency",
            "lag_p90_ms", "lag_p99_ms", "lag_max_ms", "client_behind", "duration_s", "elapsed_s"} <= set(first)
    assert set(first["ok_latency"]) == {"count", "p50_ms", "p90_ms", "p99_ms", "max_ms"}
    assert sum(first["statuses"].values()) == first["sent"]
    png = plot(results, tmp_path / "out" / "load.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.width > 600 and image.height > 400


@pytest.mark.slow
def test_the_real_moderation_server_answers_every_request():
    from mmpipe.serve.app import create_app
    from mmpipe.serve.config import ServeConfig

    with serving(create_app(ServeConfig())) as server:
        result = run_load(server.url, "moderations", 10, 2.0, seed=0, progress=False)
    assert result.sent >= 10 and result.statuses == {"200": result.sent}
    assert result.ok_latency.p50_ms > 0 and result.throughput > 0


@pytest.mark.slow
def test_the_cli_runs_a_sweep_and_writes_its_files(tmp_path):
    with serving(scripted_app()) as server:
        result = CliRunner().invoke(cli_app, [
            "loadtest", server.url, "--sweep", "10,20", "--duration", "0.4", "--no-progress",
            "--json", str(tmp_path / "lt.json"), "--plot", str(tmp_path / "lt.png")])
    assert result.exit_code == 0, result.output
    assert "200/s" in result.output and "p99" in result.output and "200: " in result.output
    assert len(json.loads((tmp_path / "lt.json").read_text())["results"]) == 2
    assert (tmp_path / "lt.png").read_bytes()[:4] == b"\x89PNG"


def test_a_flag_click_cannot_parse_is_exit_2():
    result = CliRunner().invoke(cli_app, ["loadtest", "http://127.0.0.1:9", "--rate", "fast"])
    assert result.exit_code == 2 and "--rate" in result.output


@pytest.mark.parametrize("args, message", [
    (["--rate", "0"], "mmpipe: error: --rate: rates must be > 0 requests/s, got 0.0"),
    (["--sweep", "5,x"], "mmpipe: error: --sweep: expected comma-separated rates like 5,10,20, got '5,x'"),
    (["--endpoint", "chat"], "mmpipe: error: --endpoint: expected one of moderations, embeddings, got 'chat'"),
    (["--duration", "-1"], "mmpipe: error: --duration: must be > 0 seconds, got -1.0"),
    (["--connections", "0"], "mmpipe: error: --connections: must be at least 1, got 0"),
])
def test_a_bad_value_is_one_line_naming_the_flag_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["loadtest", "http://127.0.0.1:9", *args])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_an_unreachable_server_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SystemExit) as exit_:
        main(["loadtest", f"http://127.0.0.1:{port}", "--duration", "1"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert err.startswith(f"mmpipe: error: URL: cannot connect to http://127.0.0.1:{port}/v1/moderations")
    assert not (tmp_path / "loadtest.json").exists()


def test_rates_and_urls_are_checked_before_anything_is_sent():
    assert parse_rates("5, 10,20.5") == [5.0, 10.0, 20.5]
    with pytest.raises(ConfigError, match=r"^URL: expected http\(s\)://HOST\[:PORT\]"):
        run_load("localhost:8000", "moderations", 5, 1)
    with pytest.raises(ConfigError, match=r"^--batch: applies to texts"):
        run_load("http://127.0.0.1:9", "moderations", 5, 1, payloads=[{"input": "a"}], batch=2)


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, its own authority, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mmpipe test")])
    now = datetime.now(timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.slow
def test_an_https_server_is_loaded_over_tls_trusting_ssl_cert_file(tmp_path, monkeypatch):
    tls = certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[0]))  # how OpenSSL, so the client, learns to trust it
    app = scripted_app()
    with serving(app, tls) as server:
        assert server.url.startswith("https://")
        result = run_load(server.url, "moderations", 40, 1.0, seed=4, progress=False)
    assert result.sent >= 20 and result.statuses == {"200": result.sent}
    assert len(app.state.bodies) == result.sent  # the GET that checked the server has no body


def test_an_untrusted_certificate_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with serving(scripted_app(), certificate(tmp_path)) as server:
        with pytest.raises(SystemExit) as exit_:
            main(["loadtest", server.url, "--duration", "1"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert err.startswith(f"mmpipe: error: URL: cannot connect to {server.url}/v1/moderations")
    assert "CERTIFICATE_VERIFY_FAILED" in err


def test_closing_the_pool_cancels_a_connection_still_being_made():
    """A TLS handshake the server never answers (it listens but never reads): closing the pool
    must not leave the connection to open later."""
    async def scenario(url: str) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        pool = Pool(url, 1)
        pool.send(Shot(request_bytes(url), loop.time(), loop.time() + 30))
        await asyncio.sleep(0.2)
        connecting = len(pool.connects)
        pool.close()
        await asyncio.sleep(0.05)
        return connecting, len(pool.connects)

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        assert asyncio.run(scenario(f"https://127.0.0.1:{silent.getsockname()[1]}")) == (1, 0)
