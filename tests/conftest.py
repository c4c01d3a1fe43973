"""Shared fixtures: a tiny CLIP and a tiny SigLIP checkpoint saved the way a user's real one is,
and small images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_IMAGE = 32


def save_tiny_clip(folder: Path, vision_layers: int = 2, seed: int = 1234) -> Path:
    """A tiny CLIP (2 text layers, ``vision_layers`` image layers) saved as safetensors +
    tokenizer + preprocessor config, like a hub repo; ``seed`` picks its random weights."""
    return _save_tiny_pair(folder, "CLIP", 32, vision_layers, seed, {"projection_dim": 16}, {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": TINY_IMAGE}, "crop_size": {"height": TINY_IMAGE, "width": TINY_IMAGE},
        "do_center_crop": True, "do_resize": True, "do_normalize": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]})


def _save_tiny_pair(folder: Path, family: str, tokens: int, vision_layers: int, seed: int,
                    config: dict, preprocessor: dict) -> Path:
    """transformers' ``{family}Model`` with two small towers and random weights (``seed``), the
    byte tokenizer and ``preprocessor`` saved in ``folder`` as a hub repo holds them."""
    import torch
    import transformers

    from mmpipe.models.byte_tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer(max_length=tokens)
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in
           (("bos_token_id", tokenizer.bos_token), ("eos_token_id", tokenizer.eos_token),
            ("pad_token_id", tokenizer.pad_token))}
    model_config = getattr(transformers, f"{family}Config")(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=tokens, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                           num_hidden_layers=vision_layers, image_size=TINY_IMAGE, patch_size=8),
        **config)
    torch.manual_seed(seed)
    getattr(transformers, f"{family}Model")(model_config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_model_spec(tiny_clip) -> str:
    return f"path:{tiny_clip}"


@pytest.fixture(scope="session")
def reference(tiny_clip) -> "ClipReference":
    """What a user would write by hand on the tiny checkpoint: transformers' own processor,
    tokenizer and model, to compare our vectors with."""
    from transformers import AutoTokenizer, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return ClipReference(CLIPModel.from_pretrained(tiny_clip).eval(),
                         CLIPImageProcessorPil.from_pretrained(tiny_clip),
                         AutoTokenizer.from_pretrained(tiny_clip))


class ClipReference:
    def __init__(self, model, processor, tokenizer):
        self.model, self.processor, self.tokenizer = model, processor, tokenizer

    def pixels(self, images: list[Image.Image]) -> np.ndarray:
        return self.processor(images=images, return_tensors="pt")["pixel_values"].numpy()

    def image_vectors(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=torch.from_numpy(self.pixels(images)))
        return _unit(out.pooler_output.numpy())

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=True,
                             max_length=self.model.config.text_config.max_position_embeddings,
                             return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_text_features(**enc)
        return _unit(out.pooler_output.numpy())


SIGLIP_TOKENS = 16  # the tiny SigLIP's text length, every text padded to it


def save_tiny_siglip(folder: Path, vision_layers: int = 2, seed: int = 4321) -> Path:
    """A tiny SigLIP saved like a hub repo (safetensors, tokenizer, preprocessor config): the
    second model family, loaded through the same ``path:`` spec as the tiny CLIP."""
    return _save_tiny_pair(folder, "Siglip", SIGLIP_TOKENS, vision_layers, seed, {}, {
        "image_processor_type": "SiglipImageProcessor", "size": {"height": TINY_IMAGE, "width": TINY_IMAGE},
        "do_resize": True, "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "resample": 3, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def tiny_siglip_spec(tiny_siglip) -> str:
    return f"path:{tiny_siglip}"


@pytest.fixture(scope="session")
def siglip_reference(tiny_siglip) -> "SiglipReference":
    """transformers' own SigLIP path on the tiny checkpoint: its PIL image processor, and texts
    tokenised as its zero-shot pipeline does for SigLIP (padded to max_length)."""
    from transformers import AutoTokenizer, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return SiglipReference(SiglipModel.from_pretrained(tiny_siglip).eval(),
                           SiglipImageProcessorPil.from_pretrained(tiny_siglip),
                           AutoTokenizer.from_pretrained(tiny_siglip))


class SiglipReference(ClipReference):
    def text_vectors(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(texts, padding="max_length", truncation=True,
                             max_length=self.model.config.text_config.max_position_embeddings,
                             return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_text_features(**enc)
        return _unit(out.pooler_output.numpy())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def photo(seed: int, size=(96, 64)) -> Image.Image:
    """A smooth, photo-like RGB image (gradients + blobs), distinct per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.02, 0.2, 2).tolist() + [rng.uniform(0, 6.28)]
        arr[..., c] = 127 + 120 * np.sin(fx * x + fy * y + phase)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """Eight images (JPEG and PNG), half with sidecar captions."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(8):
        target = folder / ("sub" if i % 3 == 0 else "") / f"img{i}.{'jpg' if i % 2 else 'png'}"
        photo(i).save(target)
        if i % 2 == 0:
            target.with_suffix(".txt").write_text(f"a picture number {i}")
    return folder


class QuietHandler(BaseHTTPRequestHandler):
    """A test server's request handler: no access log on stderr, and whole-body replies."""

    def send_body(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def local_http_server(handler):
    """A real HTTP server on 127.0.0.1 running ``handler`` in a thread; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def by_id(out: Path) -> dict[str, dict]:
    """A job's output rows keyed by id; an id written twice fails the test."""
    import mmpipe

    rows = mmpipe.read_output(out).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r for r in rows}


def assert_same_rows(got: dict[str, dict], want: dict[str, dict], atol: float = 1e-6) -> None:
    """Two embedding outputs (rows by id) hold the same ids, vectors, metadata and errors."""
    assert got.keys() == want.keys()
    for key, row in want.items():
        for col in ("image_embedding", "text_embedding"):
            if row[col] is None:
                assert got[key][col] is None, (key, col)
            else:
                np.testing.assert_allclose(got[key][col], row[col], atol=atol, err_msg=f"{key} {col}")
        for col in ("uri", "text", "width", "height", "error"):
            assert got[key][col] == row[col], (key, col)


class RunningServer:
    """A real uvicorn server on 127.0.0.1 (a free port, or ``port``) running ``app`` in a thread;
    on https with ``tls`` (certificate and key files)."""

    def __init__(self, app, port: int = 0, tls: tuple[Path, Path] | None = None):
        import uvicorn

        self.app = app
        cert, key = tls or (None, None)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port,
                                                    log_level="warning", ssl_certfile=cert, ssl_keyfile=key))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def post(self, path: str, body: bytes | dict, headers=None) -> tuple[int, dict, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.headers, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, json.loads(exc.read())

    def get(self, path: str) -> tuple[int, dict]:
        status, text = self.get_text(path)
        return status, json.loads(text)

    def get_text(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def kill_at_commit_depths(cmd: list[str], out: Path, depths, timeout: float = 60) -> int:
    """Run ``cmd`` (a job writing to ``out``) once per depth, SIGKILL it as soon as its commit
    log holds that many lines, and return how many runs were killed before they finished."""
    log = out / "_commits.jsonl"
    kills = 0
    for wait_for_lines in depths:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if (log.read_bytes().count(b"\n") if log.exists() else 0) >= wait_for_lines:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    return kills



@pytest.fixture(scope="module")
def broker() -> str:
    """The bootstrap address of a real Kafka-protocol broker on 127.0.0.1 (mmpipe.local_kafka)."""
    pytest.importorskip("confluent_kafka")
    from mmpipe.local_kafka import LocalKafka

    with LocalKafka() as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """A fresh MMPIPE_CACHE for one test module: its exports and measured figures, made anew."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("mmpipe-cache")
        mp.setenv("MMPIPE_CACHE", str(path))
        yield path
