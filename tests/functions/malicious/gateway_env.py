"""Look for the gateway's environment: our own, the gateway's /proc entry, pid 1, any pid."""

import os


def _read(path):
    try:
        with open(path, "rb") as fh:
            return {"ok": True, "value": fh.read().decode(errors="replace")}
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__}


def handler(event, ctx):
    found = {
        "environ": dict(os.environ),
        "gateway": _read(f"/proc/{int(event['gateway_pid'])}/environ"),
        "gateway_cmdline": _read(f"/proc/{int(event['gateway_pid'])}/cmdline"),
        "init": _read("/proc/1/environ"),
        "self": _read("/proc/self/environ"),
    }
    others = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            others[pid] = _read(f"/proc/{pid}/environ")
    found["all"] = others
    return found
