"""The gateway ↔ node-agent protocol (the Ray executor): the same length-prefixed msgpack
frames as the worker wire (runtime/wire.py), over TCP between machines.

Version 1. Each frame is a map with a type field `t`:

gateway → agent   hi   {v, token}                         first frame; the agent closes on a bad one
                  inv  {n, spec, f}                       run invocation frame `f` of `spec`
                  rpr  {rid, ok, v | e}                   reply to an agent's rpc
                  bun  {sha, d | e}                       reply to a bundle request
                  ret  {ns, fn, keep}                     retire a function's pools
                  dsc  {n, ns, fn}                        describe a function's pools
agent → gateway   res  {n, body, http, cold, pid, u}      result (`u`: the frame's usage)
                  chk  {n, d}                             a streamed response's chunk
                  end  {n, e}                             a streamed response's end
                  err  {n, e}                             the invocation failed (`e`: an error)
                  rpc  {rid, k, i, op, a}                 a worker's rpc (state, secrets, calls)
                  log  {k, i, lv, m, fl, ts}              a worker's log line
                  bnq  {sha}                              the agent lacks this bundle
                  dsr  {n, pools}                         reply to dsc

An error `e` is {status, code, message}: the gateway raises it as the same ApiError, so a
failure on a node keeps its status and code without either side choosing another.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cumulo.errors import ApiError
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.wire import DEFAULT_MAX_FRAME, HEADER, FrameTooLarge, pack, unpack
from cumulo.sdk.spec import FunctionConfig

PROTOCOL_VERSION = 1

__all__ = [
    "PROTOCOL_VERSION",
    "error_from_wire",
    "error_to_wire",
    "pack",
    "read_frame",
    "spec_from_wire",
    "spec_to_wire",
]


async def read_frame(
    reader: asyncio.StreamReader, max_frame: int = DEFAULT_MAX_FRAME
) -> dict[str, Any] | None:
    """The next frame, or None at a clean end of stream (IncompleteReadError mid-frame)."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    (size,) = HEADER.unpack(header)
    if size > max_frame:
        raise FrameTooLarge(size, max_frame)
    return unpack(await reader.readexactly(size))


def spec_to_wire(spec: VersionSpec) -> dict[str, Any]:
    """A version as a node needs it: the bundle by its content hash (the code dir's name),
    never a path on the gateway's disk."""
    return {
        "ns": spec.namespace,
        "fn": spec.function,
        "v": spec.version,
        "sha": spec.code_dir.name,
        "mod": spec.module,
        "attr": spec.attr,
        "kind": spec.kind,
        "cfg": spec.config.to_dict(),
    }


def spec_from_wire(data: dict[str, Any], code_dir: Path) -> VersionSpec:
    return VersionSpec(
        namespace=str(data["ns"]),
        function=str(data["fn"]),
        version=int(data["v"]),
        code_dir=code_dir,
        module=str(data["mod"]),
        attr=str(data["attr"]),
        kind=str(data["kind"]),
        config=FunctionConfig.from_dict(data["cfg"]),
    )


def error_to_wire(exc: ApiError) -> dict[str, Any]:
    return {"status": exc.status, "code": exc.code, "message": exc.message}


def error_from_wire(data: Any) -> ApiError:
    if not isinstance(data, dict):
        return ApiError("the node answered a malformed error", code="node_protocol", status=502)
    return ApiError(
        str(data.get("message", "")),
        code=str(data.get("code", "internal")),
        status=int(data.get("status", 500)),
    )
