"""Read the platform's data dir: keys, database, every function's code."""

import os


def _read(path):
    with open(path, "rb") as fh:
        return fh.read().decode(errors="replace")


def _try(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__}


def handler(event, ctx):
    data_dir = event["data_dir"]
    result = {"listing": _try(lambda: os.listdir(data_dir))}
    for name in ("credentials.json", "cumulo.db", "keyhash.secret"):
        path = os.path.join(data_dir, name)
        result[name] = _try(lambda p=path: _read(p))
    result["code_listing"] = _try(lambda: os.listdir(os.path.join(data_dir, "code")))
    result["other_code"] = _try(lambda: _read(event["other_code"]))
    # Relative: without bubblewrap the absolute path crosses the 0700 data dir.
    result["own_code"] = _try(lambda: _read("data_dir.py"))
    return result
