"""A FastAPI app through cumulo vs the same app on bare uvicorn, same run (issue 4: ≥ 0.5×).

Both serve `POST /orders/{id}` with a validated JSON body; wrk, 32 connections, interleaved
rounds; the ratio is the median of per-round ratios.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    FUNCTIONS_DIR,
    ROOT,
    BenchError,
    Platform,
    Proc,
    cumulo_exe,
    free_port,
    http_request,
    interleaved_ratio,
    python_exe,
    run_wrk,
)

BODY = json.dumps({"user": "ada", "items": [1, 2, 3], "nested": {"a": 1}}).encode()


def _bare_uvicorn() -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(
        [
            python_exe(),
            *("-m", "uvicorn", "bench.peers.fastapi_app:app"),
            *("--port", str(port), "--loop", "uvloop", "--http", "httptools"),
            *("--no-access-log", "--log-level", "warning"),
        ],
        name="uvicorn-fastapi",
        log_path=Path(tempfile.mkstemp(prefix="bench-fastapi-", suffix=".log")[1]),
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}/orders/7"
    deadline = time.monotonic() + 30
    while True:
        try:
            if http_request("POST", url, body=BODY).status == 200:
                return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline or not proc.alive():
            proc.stop()
            raise BenchError("bare uvicorn did not start:\n" + proc.log_tail())
        time.sleep(0.1)


def main(rounds: int = 4, duration_s: float = 8.0) -> dict[str, Any]:
    bare, bare_url = _bare_uvicorn()
    try:
        with Platform(idle_timeout=600, label="cumulo (app bench)") as plat:
            deployed = subprocess.run(
                [cumulo_exe(), "deploy", str(FUNCTIONS_DIR / "fastapi_app.py")],
                env=plat.env(),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if deployed.returncode != 0:
                raise BenchError(f"deploy failed: {deployed.stderr.strip()[-400:]}")
            ours = f"{plat.url}/fn/default/api/orders/7"
            for url, headers in ((ours, plat.auth), (bare_url, {})):
                run_wrk(url, body=BODY, headers=headers, duration_s=2)  # warm-up
            pair = interleaved_ratio(
                "app",
                ("cumulo", ours, plat.auth),
                ("bare", bare_url, {}),
                body=BODY,
                rounds=rounds,
                duration_s=duration_s,
            )
    finally:
        bare.stop()
    return {
        "cumulo_req_s": pair.a_rps,
        "bare_uvicorn_req_s": pair.b_rps,
        "ratio_median_of_rounds": pair.ratio,
        "target": ">= 0.50",
        "pass": pair.ratio >= 0.5,
        "rounds": rounds,
        "duration_s": duration_s,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
