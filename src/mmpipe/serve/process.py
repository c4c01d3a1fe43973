"""A `mmpipe serve` in a process of its own, for measuring it from outside (tune, benchmarks)."""

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
    on a free port; yield (base URL, process) once /readyz answers; stop it afterwards. Its
    stderr goes to a log file beside the config: a pipe nobody reads while it runs would stall
    the server once its warnings filled the pipe."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = folder / f"serve-{port}.yaml"
    path.write_text(yaml.safe_dump({**config, "port": port}))
    log = path.with_suffix(".log")
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "mmpipe.cli", "serve", "--config", str(path)],
                                stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: {log.read_text().strip()[-300:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start in {start_timeout_s:g} s") from None
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
