"""`cumulo invoke NAME [--data JSON|@file] [-n NS] [--context C]` without typer, rich or
httpx: the command people run most starts in tens of milliseconds. Anything else
(`--async`, `--help`, an unknown flag) returns None and goes to the full CLI."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from cumulo.cli.profiles import ProfileError, resolve
from cumulo.cli.render import failure
from cumulo.cli.wire import WireError, request

VALUE_FLAGS = {"--data": "data", "-d": "data", "--namespace": "namespace", "-n": "namespace"}
VALUE_FLAGS["--context"] = "context"
WAIT_NOTE_S = 2.0


def parse(args: list[str]) -> dict[str, str] | None:
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=")
        if flag in VALUE_FLAGS and flag.startswith("--") and eq:
            found[VALUE_FLAGS[flag]] = inline
        elif arg in VALUE_FLAGS and i + 1 < len(args):
            found[VALUE_FLAGS[arg]] = args[i + 1]
            i += 1
        elif not arg.startswith("-") and "name" not in found:
            found["name"] = arg
        else:
            return None
        i += 1
    return found if "name" in found else None


def main(args: list[str]) -> int | None:
    opts = parse(args)
    if opts is None:
        return None
    body = b""
    if "data" in opts:
        data = opts["data"]
        try:
            body = Path(data[1:]).read_bytes() if data.startswith("@") else data.encode()
        except OSError as exc:
            return _fail(f"cannot read {data[1:]}: {exc.strerror or exc}")
        try:
            json.loads(body)
        except ValueError as exc:
            return _fail(f"--data is not valid JSON: {exc}")
    try:
        target = resolve(opts.get("context"))
        path = f"/fn/{opts.get('namespace', 'default')}/{opts['name']}"
        with _explain_wait(opts["name"]):
            reply = request("POST", target.url, path, api_key=target.api_key, body=body)
    except (ProfileError, WireError) as exc:
        return _fail(str(exc))
    if reply.status >= 400:
        sys.stderr.write(
            failure(reply.status, reply.body, reply.headers.get("x-cumulo-invocation-id")) + "\n"
        )
        return 1
    text = reply.text
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


@contextlib.contextmanager
def _explain_wait(name: str) -> Iterator[None]:
    """On a terminal, a call still waiting after WAIT_NOTE_S says why: a cold start (the
    first call loads the code, and a model's weights: MiniLM takes ~14 s here)."""
    if not sys.stderr.isatty():
        yield
        return
    import threading

    note = f"waiting for {name}: a cold start loads its code (and a model's weights) first…"
    timer = threading.Timer(WAIT_NOTE_S, lambda: sys.stderr.write(note + "\n"))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _fail(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 1
