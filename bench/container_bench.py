"""Container-image functions (issue 14): cold start and warm throughput against the same
container started by hand.

The image is tests/images.py's BusyBox httpd (built here, offline). "By hand" is what an
operator would type: `umoci unpack` once, then `crun run` on that bundle with the host's
network (podman does not start containers on this host: docs/containers.md), wrapped like
cumulo's in `unshare -m` to hide the cgroup2 mount crun refuses in hybrid mode.

- cold: from the request (cumulo: `GET /fn/default/ctr/index.html` on a version scaled to
  zero; by hand: `crun run` spawned) to the first 200. Target: cumulo ≤ 1.1× by hand.
- warm: GETs of the static page from CLIENTS threads for DURATION_S, through cumulo vs at
  the container's port directly (BusyBox httpd closes every connection, so both sides open
  one per request to it). Target: ≥ 0.7×. A Python function on the same platform with the
  same client is measured too, for context.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests import images

from bench.common import HttpConn, Platform, free_port, log, median
from cumulo.client import Client

TRIALS = 7
CLIENTS = 8
DURATION_S = 5.0
ROUNDS = 3
NAME = "ctr"
PAGE = "/index.html"
PY_FUNCTION = """
import cumulo


@cumulo.function(concurrency=8)
def pyfn(event, ctx):
    return {"hello": "python"}
"""


def _get_direct(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", PAGE)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _by_hand_bundle(work: Path, archive_layout: Path, port: int) -> Path:
    bundle = work / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{archive_layout}:latest", str(bundle)],
        check=True,
        capture_output=True,
    )
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["env"].append(f"PORT={port}")
    config["linux"]["namespaces"] = [
        n for n in config["linux"]["namespaces"] if n["type"] != "network"
    ]
    config["linux"].pop("resources", None)
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def _start_by_hand(bundle: Path, name: str) -> subprocess.Popen[bytes]:
    script = (
        "umount /sys/fs/cgroup/unified 2>/dev/null; "
        'exec crun --cgroup-manager=disabled run --bundle "$1" "$2"'
    )
    return subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "x", str(bundle), name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop_by_hand(proc: subprocess.Popen[bytes], name: str) -> None:
    subprocess.run(["crun", "kill", name, "KILL"], capture_output=True)
    proc.wait(10)
    subprocess.run(["crun", "delete", "-f", name], capture_output=True)


def cold_by_hand(bundle: Path, port: int) -> list[float]:
    times = []
    for i in range(TRIALS):
        name = f"bench-hand-{os.getpid()}-{i}"
        t0 = time.perf_counter()
        proc = _start_by_hand(bundle, name)
        while True:
            try:
                if _get_direct(port) == 200:
                    break
            except OSError:
                time.sleep(0.001)
        times.append(time.perf_counter() - t0)
        _stop_by_hand(proc, name)
    return times


def cold_cumulo(platform: Platform, client: Client) -> list[float]:
    times = []
    conn = HttpConn(platform.url)
    for _ in range(TRIALS):
        deadline = time.monotonic() + 30
        while any(p["workers"] for p in client.workers(NAME)) and time.monotonic() < deadline:
            time.sleep(0.05)
        reply = conn.request("GET", f"/fn/default/{NAME}{PAGE}", headers=platform.auth)
        assert reply.status == 200, reply.body
        assert reply.headers.get("x-cumulo-start") == "cold", reply.headers
        times.append(reply.seconds)
    conn.close()
    return times


def _load(request: Any) -> float:
    """req/s of CLIENTS threads calling `request()` for DURATION_S."""
    count = [0] * CLIENTS
    stop = time.monotonic() + DURATION_S

    def worker(i: int) -> None:
        while time.monotonic() < stop:
            if request(i) == 200:
                count[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / (time.perf_counter() - t0)


def main() -> dict[str, Any]:
    why = images.busybox_available()
    if why is None and shutil.which("crun") is None:
        why = "crun is not installed"
    if why is None and os.geteuid() != 0:
        why = "container functions need root here"
    if why is not None:
        return {"skipped": why}
    work = Path(tempfile.mkdtemp(prefix="cumulo-bench-ctr-"))
    layout = work / "layout"
    images.write_layout(layout, entrypoint=images.HTTPD)
    archive = images.oci_archive(layout, work / "img.tar")
    port = free_port()
    bundle = _by_hand_bundle(work, layout, port)
    result: dict[str, Any] = {}
    try:
        with Platform(idle_timeout=0.3, label="cumulo (containers)") as platform:
            client = Client(platform.url, platform.api_key)
            client.deploy_image(f"oci-archive:{archive}", name=NAME, concurrency=CLIENTS)
            hand = cold_by_hand(bundle, port)
            ours = cold_cumulo(platform, client)
            result["cold_by_hand_ms"] = [round(t * 1000, 1) for t in hand]
            result["cold_cumulo_ms"] = [round(t * 1000, 1) for t in ours]
            result["cold_ratio"] = median(ours) / median(hand)
            log(f"cold: cumulo {median(ours) * 1000:.1f} ms, by hand {median(hand) * 1000:.1f} ms")
        # Warm: a platform that keeps the container (no idle window in the way).
        with Platform(label="cumulo (containers, warm)") as platform:
            client = Client(platform.url, platform.api_key)
            client.deploy_image(f"oci-archive:{archive}", name=NAME, concurrency=CLIENTS)
            conns = [HttpConn(platform.url) for _ in range(CLIENTS)]
            path = f"/fn/default/{NAME}{PAGE}"
            assert conns[0].request("GET", path, headers=platform.auth).status == 200
            name = f"bench-hand-warm-{os.getpid()}"
            proc = _start_by_hand(bundle, name)
            try:
                while True:
                    try:
                        if _get_direct(port) == 200:
                            break
                    except OSError:
                        time.sleep(0.01)
                through, direct = [], []
                for _ in range(ROUNDS):
                    direct.append(_load(lambda i: _get_direct(port)))
                    through.append(
                        _load(lambda i: conns[i].request("GET", path, headers=platform.auth).status)
                    )
            finally:
                _stop_by_hand(proc, name)
            # Context: a Python function on the same platform, same client (no target).
            fn = work / "pyfn.py"
            fn.write_text(PY_FUNCTION)
            platform.deploy(fn, "pyfn")
            py_path = "/fn/default/pyfn"
            assert conns[0].request("GET", py_path, headers=platform.auth).status == 200
            python_fn = _load(
                lambda i: conns[i].request("GET", py_path, headers=platform.auth).status
            )
            result["warm_python_function_req_s"] = round(python_fn, 1)
            log(f"warm: a Python function through cumulo {python_fn:.0f} req/s")
            result["warm_direct_req_s"] = [round(x, 1) for x in direct]
            result["warm_cumulo_req_s"] = [round(x, 1) for x in through]
            result["warm_ratio"] = median(through) / median(direct)
            log(f"warm: cumulo {median(through):.0f} req/s, direct {median(direct):.0f} req/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["pass"] = result["cold_ratio"] <= 1.1 and result["warm_ratio"] >= 0.7
    result["targets"] = {"cold_ratio": "≤ 1.1", "warm_ratio": "≥ 0.7"}
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
