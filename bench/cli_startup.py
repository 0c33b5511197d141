"""CLI start-up (issue 17): wall time of `cumulo --help` and `cumulo invoke` against
`python -c pass` on the same interpreter, each run many times; target ≤ 150 ms.

python -m bench.cli_startup            # prints the JSON that bench.run records
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

PYTHON = sys.executable
CUMULO = str(Path(sys.executable).parent / "cumulo")
ECHO = Path(__file__).resolve().parent.parent / "examples" / "echo.py"
RUNS = 30
TARGET_MS = 150.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _time(argv: list[str], env: dict[str, str], runs: int = RUNS) -> dict[str, float]:
    """Median and best wall time of `argv` in ms (one warm-up run first)."""
    subprocess.run(argv, env=env, capture_output=True, check=True, timeout=60)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True, timeout=60)
        samples.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples)}


def _start(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, str]:
    port = _free_port()
    data = tmp / "data"
    proc = subprocess.Popen(
        [CUMULO, "up", "--port", str(port), "--data-dir", str(data), "--no-prewarm"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    creds = data / "credentials.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("cumulo up exited early")
        if creds.exists():
            saved = json.loads(creds.read_text())
            try:
                ready = f"{saved['url']}/readyz"  # our own http://127.0.0.1 platform
                with urllib.request.urlopen(ready, timeout=1) as r:  # noqa: S310
                    if r.status == 200:
                        return proc, saved["url"], saved["api_key"]
            except OSError:
                pass
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("cumulo up did not become ready in 60 s")


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cumulo-cli-bench-") as tmpdir:
        tmp = Path(tmpdir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
        env["XDG_CONFIG_HOME"] = str(tmp / "config")  # the bench's own contexts
        proc, url, key = _start(tmp, env)
        try:
            env.update(CUMULO_URL=url, CUMULO_API_KEY=key)
            subprocess.run([CUMULO, "deploy", str(ECHO)], env=env, check=True, timeout=120)
            baseline = _time([PYTHON, "-c", "pass"], env)
            measured = {
                "--help": _time([CUMULO, "--help"], env),
                "--version": _time([CUMULO, "--version"], env),
                "invoke": _time([CUMULO, "invoke", "echo", "--data", '{"a": 1}'], env),
                "ls (the full CLI: typer, httpx)": _time([CUMULO, "ls"], env, runs=10),
            }
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    runs = [{"command": "python -c pass", **baseline, "ratio_to_python": 1.0}]
    for name, stats in measured.items():
        ratio = stats["median_ms"] / baseline["median_ms"]
        runs.append({"command": f"cumulo {name}", **stats, "ratio_to_python": ratio})
    passed = all(measured[name]["median_ms"] <= TARGET_MS for name in ("--help", "invoke"))
    return {
        "target_ms": TARGET_MS,
        "runs_each": RUNS,
        "pass": passed,
        "runs": runs,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
