"""A `mmpipe serve` (or any HTTP server) in a process of its own, for measuring it from outside
(tune, benchmarks)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml


@contextmanager
def serve_process(config: dict, folder: Path, start_timeout_s: float = 120
                  ) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``mmpipe serve`` with ``config`` (a serve config mapping, written into ``folder``)
    on a free port; yield (base URL, process) once /readyz answers; stop it afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = folder / f"serve-{port}.yaml"
    path.write_text(yaml.safe_dump({**config, "port": port}))
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mmpipe.cli", "serve", "--config", str(path)]
    with server_process(cmd, url + "/readyz", path.with_suffix(".log"), start_timeout_s) as proc:
        yield url, proc


@contextmanager
def server_process(cmd: list, ready_url: str, log: Path, start_timeout_s: float = 120,
                   **popen) -> Iterator[subprocess.Popen]:
    """Any HTTP server started with ``cmd`` (``popen``: Popen's other arguments), yielded once
    ``ready_url`` answers, terminated afterwards (killed if it has not stopped in 30 s). Its
    stderr goes to ``log``: a pipe nobody reads while it runs would stall the server once its
    warnings filled the pipe."""
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, **popen)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{Path(str(cmd[0])).name} exited: "
                                       f"{log.read_text().strip()[-500:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ready_url} did not answer in {start_timeout_s:g} s") from None
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
