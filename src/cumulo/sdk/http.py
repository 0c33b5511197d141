"""Raw HTTP request and response objects for handlers that want more than JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(slots=True)
class Request:
    """The HTTP request that invoked a function (annotate the handler's first argument)."""

    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    def text(self) -> str:
        return self.body.decode()


@dataclass(slots=True)
class Response:
    """What a raw handler returns: any status, headers and body (bytes, str or JSON-able)."""

    body: Any = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str | None = None

    def encode(self) -> tuple[int, dict[str, str], bytes]:
        headers = {k.lower(): str(v) for k, v in self.headers.items()}
        if isinstance(self.body, bytes | bytearray | memoryview):
            body = bytes(self.body)
            default_type = "application/octet-stream"
        elif isinstance(self.body, str):
            body = self.body.encode()
            default_type = "text/plain; charset=utf-8"
        else:
            body = orjson.dumps(self.body)
            default_type = "application/json"
        headers.setdefault("content-type", self.media_type or default_type)
        return int(self.status), headers, body
