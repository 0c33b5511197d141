"""How the CLI prints: one table style for every list, JSON on `-o json`, readable times,
and failed invocations with the user's traceback. Standard library only (fast start)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

OUTPUTS = ("table", "json")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    """Plain aligned columns, never cut: piped output keeps every character of an id."""
    out = out or sys.stdout
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for line in [headers, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")


def emit(
    output: str,
    items: list[dict[str, Any]],
    headers: Sequence[str],
    row: Any,
    out: TextIO | None = None,
) -> None:
    """`-o json`: the API's own objects; `-o table`: `row(item)` per item under `headers`."""
    out = out or sys.stdout
    if output == "json":
        out.write(json.dumps(items, indent=2, sort_keys=True) + "\n")
        return
    table(headers, [row(item) for item in items], out)


def when(ts: float | None, now: float | None = None) -> str:
    """An epoch time as ISO-8601 (local, to the second) with how long ago: `2026-12-02
    19:18:30 (5m ago)`; future times say `in 3d`."""
    if not ts:
        return ""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    return f"{stamp} ({ago(now - ts)})"


def ago(delta_s: float) -> str:
    future, delta = delta_s < 0, abs(delta_s)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            text = f"{int(delta // size)}{unit}"
            break
    else:
        text = f"{int(delta)}s"
    return f"in {text}" if future else f"{text} ago"


def size(n: float) -> str:
    """Bytes for people: 512 B, 1.5 KiB, 3.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def failure(status: int, body: bytes, invocation_id: str | None) -> str:
    """What a failed call prints on stderr. A 4xx is one line; a 5xx (the function raised,
    crashed or timed out) adds the status, the invocation id and the user's traceback."""
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
        trace = str(error.get("traceback") or "")
    except (ValueError, KeyError, TypeError):
        code, message, trace = "http_error", body.decode(errors="replace")[:200], ""
        message = message or f"HTTP {status}"
    if status < 500:
        return f"error: {message}"
    lines = [trace.rstrip()] if trace else []
    where = f", invocation {invocation_id}" if invocation_id else ""
    lines.append(f"error: {status} {code}{where}: {message}")
    return "\n".join(lines)
