"""Hostile: floods its own log. `mb` megabytes of `print` (1 KB lines), or with
`lines` that many tiny lines; the gateway must cap what it keeps and say so."""

import sys

import cumulo


@cumulo.function(timeout_s=120, memory_mb=256)
def disk_log_flood(event: dict, ctx: cumulo.Context) -> dict:
    line = "x" * 1023
    for _ in range(int(event.get("mb", 1)) * 1024):
        print(line)
    for _ in range(int(event.get("lines", 0))):
        print(".")
    sys.stdout.flush()
    return {"done": True}
