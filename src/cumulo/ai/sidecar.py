"""The insights sidecar: `python -m cumulo.ai.sidecar`, a child of the gateway.

numpy, statsmodels and scikit-learn (~100 MB) load here, never in the gateway. It reads
requests from stdin and answers on stdout, one frame each: a 4-byte big-endian length and a
msgpack map. Requests: {"id", "op", "args"}; answers: {"id", "ok", "value" | "error"}.
Ops:
- "forecast": {"series": [{"id", "counts"}], "horizon", "season"?} -> [{"id", "values",
  "method", "season"}]
- "observe": {"rows": [UsageRow...]} -> null (learn, no verdicts: the backlog)
- "score": {"rows": [...]} -> [{"anomalous", "score", "reasons"}]
- "warm": {} -> "ready" (imports the libraries, nothing else)
It exits when stdin closes (the gateway stopped or died) and, on Linux, when its parent
dies (PR_SET_PDEATHSIG). State (the detector's history) lives only here: a restarted
sidecar relearns.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import signal
import struct
import sys
from typing import IO, Any

import msgpack

from cumulo import fds
from cumulo.ai.anomaly import Detector
from cumulo.ai.forecast import forecast

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
PR_SET_PDEATHSIG = 1


def read_frame(stream: IO[bytes]) -> Any:
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError("frame too large")
    body = stream.read(size)
    if len(body) < size:
        return None
    return msgpack.unpackb(body, raw=False)


def write_frame(stream: IO[bytes], message: Any) -> None:
    body = msgpack.packb(message, use_bin_type=True)
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


class Sidecar:
    def __init__(self, min_train: int) -> None:
        self.detector = Detector(min_train=min_train)

    def handle(self, op: str, args: dict[str, Any]) -> Any:
        if op == "forecast":
            horizon = int(args.get("horizon", 1))
            season = args.get("season")
            out = []
            for item in args.get("series", []):
                result = forecast([float(c) for c in item["counts"]], horizon, season)
                out.append(
                    {
                        "id": item["id"],
                        "values": result.values,
                        "method": result.method,
                        "season": result.season,
                    }
                )
            return out
        if op == "observe":
            self.detector.observe(list(args.get("rows", [])))
            return None
        if op == "score":
            verdicts = self.detector.score(list(args.get("rows", [])))
            return [
                {"anomalous": v.anomalous, "score": v.score, "reasons": list(v.reasons)}
                for v in verdicts
            ]
        if op == "warm":
            # The heavy imports, ahead of the first real call (the gateway sends this while
            # it still gathers history, so the first fit does not wait for them).
            for module in ("sklearn.ensemble", "statsmodels.tsa.holtwinters"):
                importlib.import_module(module)

            return "ready"
        raise ValueError(f"unknown op {op!r}")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        sys.exit(0)


def main() -> None:
    # Its stdin and stdout (the frames) and stderr: nothing else the gateway had open.
    fds.keep_only()
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(5)  # fitting never competes with the gateway on equal terms
    min_train = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    sidecar = Sidecar(min_train)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        request = read_frame(stdin)
        if request is None:
            return
        rid = request.get("id")
        try:
            value = sidecar.handle(str(request.get("op")), dict(request.get("args") or {}))
            reply: dict[str, Any] = {"id": rid, "ok": True, "value": value}
        except Exception as exc:  # one bad request must not end the sidecar
            reply = {"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        write_frame(stdout, reply)


if __name__ == "__main__":
    main()
