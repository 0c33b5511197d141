"""Dynamic batching (issue 6): the MiniLM embedding model under 64 concurrent HTTP clients.

Three servers of the same model code (src/cumulo/ai/builtin/minilm.py), in one run, with
interleaved rounds:
- cumulo, batched:   `@cumulo.model(batch_max_size=32, batch_wait_ms=5)`
- cumulo, unbatched: the same deployment with `batch_max_size=1`
- Ray Serve:         `@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)`
Fair: every server runs 2 replicas/workers (this machine's cores) with 1 torch thread each.
Target: batched ≥ 4× unbatched throughput.

python -m bench.batching_bench [--rounds 2] [--duration 8] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, BenchError, Platform, Proc, free_port, log, python_exe, run_wrk

MODEL_FILE = ROOT / "src" / "cumulo" / "ai" / "builtin" / "minilm.py"
CLIENTS = 64
REPLICAS = 2
TORCH_THREADS = 1
MAX_BATCH = 32
WAIT_S = 0.005
# Two request sizes, the same for every server: a search query (4 words, the usual input of
# an embedding endpoint behind search or RAG retrieval) and a 20-token sentence. On 2 CPU
# cores the sentence is compute-bound (~13 ms alone, ~6 ms per text in a batch of 32 in
# process), so batching can win less there; the query is dominated by per-call overhead.
WORKLOADS = {
    "query": json.dumps("cheap flights to lisbon").encode(),
    "sentence": json.dumps(
        "a request: the quick brown fox jumps over the lazy dog near the river"
    ).encode(),
}
TARGET_WORKLOAD = "query"


# ------------------------------------------------------------------ load generator
def load(url: str, headers: dict[str, str], duration_s: float, body: bytes) -> dict[str, float]:
    """wrk (C, one thread): a Python load generator would be the bottleneck on 2 cores."""
    result = run_wrk(
        url, body=body, headers=headers, connections=CLIENTS, threads=1, duration_s=duration_s
    )
    if result.requests == 0:
        raise BenchError(f"no successful request to {url}: {result.errors}")
    return {
        "req_s": result.rps,
        "p50_ms": result.p50_ms,
        "p90_ms": result.p90_ms,
        "p99_ms": result.p99_ms,
        "errors": float(result.error_count),
    }


# ------------------------------------------------------------------ Ray Serve peer
def serve_ray(port: int) -> None:
    """`python -m bench.batching_bench --ray-serve PORT`: the Ray Serve peer, in the
    foreground until killed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    # Ray's default of 5 ongoing requests per replica would cap its batches at 5.
    @serve.deployment(
        num_replicas=REPLICAS, max_ongoing_requests=CLIENTS, ray_actor_options={"num_cpus": 1}
    )
    class Embedder:
        def __init__(self) -> None:
            sys.path.insert(0, str(MODEL_FILE.parent))
            os.environ["CUMULO_TORCH_THREADS"] = str(TORCH_THREADS)
            import minilm

            self.model = minilm.MiniLM()
            self.model.load()

        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WAIT_S)
        async def embed(self, texts: list[str]) -> list[Any]:
            return list(self.model.predict(texts))

        async def __call__(self, request: Request) -> JSONResponse:
            return JSONResponse(await self.embed(json.loads(await request.body())))

    ray.init(num_cpus=REPLICAS, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Embedder.bind(), route_prefix="/embed")
    print("ray serve ready", flush=True)
    while True:
        time.sleep(3600)


def start_ray(timeout_s: float = 150.0) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(
        [python_exe(), "-m", "bench.batching_bench", "--ray-serve", str(port)],
        name="ray-serve",
        log_path=Path(tempfile.mkstemp(prefix="bench-ray-", suffix=".log")[1]),
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}/embed"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError("Ray Serve exited:\n" + proc.log_tail())
        try:
            if httpx.post(url, content=json.dumps("warm"), timeout=30).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.stop()
    raise BenchError(f"Ray Serve not ready after {timeout_s:.0f}s:\n" + proc.log_tail())


# ------------------------------------------------------------------ the benchmark
def _deploy(platform: Platform, name: str, batch_max_size: int, wait_ms: float) -> str:
    from cumulo.client import Client

    client = Client(platform.url, platform.api_key)
    try:
        client.deploy(
            MODEL_FILE,
            name=name,
            env={"CUMULO_TORCH_THREADS": str(TORCH_THREADS)},
            max_instances=REPLICAS,
            batch_max_size=batch_max_size,
            batch_wait_ms=wait_ms,
        )
    finally:
        client.close()
    return f"{platform.url}/fn/default/{name}"


def main(rounds: int = 2, duration_s: float = 8.0, ray: bool = True) -> dict[str, Any]:
    t0 = time.monotonic()
    servers: dict[str, tuple[str, dict[str, str]]] = {}
    ray_proc: Proc | None = None
    results: dict[str, list[dict[str, float]]] = {}
    with Platform(zygote_idle_timeout=600, idle_timeout=600, label="cumulo") as platform:
        auth = {"Authorization": f"Bearer {platform.api_key}"}
        servers["cumulo_batched"] = (_deploy(platform, "embed-batched", MAX_BATCH, 5.0), auth)
        servers["cumulo_unbatched"] = (_deploy(platform, "embed-unbatched", 1, 0.0), auth)
        ray_note = ""
        try:
            if ray:
                log("starting Ray Serve")
                ray_proc, ray_url = start_ray()
                servers["ray_serve_batched"] = (ray_url, {})
            warm_body = WORKLOADS[TARGET_WORKLOAD]
            for name, (url, headers) in servers.items():
                log(f"warming {name}")
                httpx.post(url, content=warm_body, headers=headers, timeout=120)  # the model
                load(url, headers, 4.0, warm_body)  # brings every replica up
            for round_no in range(rounds):
                for workload, body in WORKLOADS.items():
                    for name, (url, headers) in servers.items():
                        result = load(url, headers, duration_s, body)
                        log(f"round {round_no + 1} {workload} {name}: {result['req_s']:.0f} req/s")
                        results.setdefault(f"{workload}/{name}", []).append(result)
        except BenchError as exc:
            if not results:
                raise
            ray_note = str(exc).splitlines()[0]
        finally:
            if ray_proc is not None:
                ray_proc.stop()

    def summary(runs: list[dict[str, float]]) -> dict[str, float]:
        return {
            key: sorted(r[key] for r in runs)[len(runs) // 2]
            for key in ("req_s", "p50_ms", "p90_ms", "p99_ms", "errors")
        }

    table = {name: summary(runs) for name, runs in results.items()}
    out: dict[str, Any] = {**table}
    for workload in WORKLOADS:
        batched = table[f"{workload}/cumulo_batched"]["req_s"]
        out[f"{workload}_batched_vs_unbatched"] = (
            batched / table[f"{workload}/cumulo_unbatched"]["req_s"]
        )
        if f"{workload}/ray_serve_batched" in table:
            out[f"{workload}_cumulo_batched_vs_ray_serve"] = (
                batched / table[f"{workload}/ray_serve_batched"]["req_s"]
            )
    out["batched_vs_unbatched"] = out[f"{TARGET_WORKLOAD}_batched_vs_unbatched"]
    out.update(
        {
            "target": f"batched >= 4x unbatched ({TARGET_WORKLOAD} workload)",
            "clients": CLIENTS,
            "replicas": REPLICAS,
            "torch_threads": TORCH_THREADS,
            "rounds": rounds,
            "duration_s": duration_s,
            "elapsed_s": time.monotonic() - t0,
        }
    )
    out["pass"] = out["batched_vs_unbatched"] >= 4.0
    if ray_note:
        out["note"] = ray_note
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ray-serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    if args.ray_serve:
        serve_ray(args.ray_serve)
    else:
        print(json.dumps(main(args.rounds, args.duration, not args.no_ray), indent=2))
