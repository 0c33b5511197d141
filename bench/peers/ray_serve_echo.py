"""Ray Serve peer: the same echo handler as a Serve deployment on a loopback port.

Run as `python -m bench.peers.ray_serve_echo --port P --temp-dir DIR`. It starts a local Ray
(2 CPUs, no dashboard), serves the deployment, prints `READY`, and on SIGTERM shuts Serve and
Ray down before it exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(max_ongoing_requests=128)
class Echo:
    async def __call__(self, request: Request) -> Any:
        return await request.json()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--temp-dir", required=True)
    args = parser.parse_args()

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=args.temp_dir,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    # after ray.init, which installs its own SIGTERM handler
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": args.port},
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        serve.run(Echo.bind(), name="echo", route_prefix="/")  # type: ignore[attr-defined]
        print("READY", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        print("STOPPED", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
