"""Any-language functions: a bundle with a `cumulo.toml` that declares a command.

```toml
command = ["node", "server.js"]   # serves HTTP on $PORT
name = "hello-node"               # optional (else --name)
concurrency = 16                  # optional: any function setting but secrets
timeout_s = 10
```
The platform starts the command on demand inside the sandbox and proxies each invocation
to it (runtime/process_pool.py).
"""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cumulo.errors import BadRequest
from cumulo.sdk.spec import FunctionConfig

MANIFEST = "cumulo.toml"
DEFAULT_CONCURRENCY = 16
CONFIG_KEYS = frozenset(FunctionConfig.__dataclass_fields__) - {"secrets"}


@dataclass(frozen=True, slots=True)
class ProcessManifest:
    command: tuple[str, ...]
    name: str | None
    config: dict[str, Any]


def _bad(message: str) -> BadRequest:
    return BadRequest(f"{MANIFEST}: {message}", code="invalid_deploy")


def read_manifest(code_dir: Path) -> ProcessManifest | None:
    """The bundle's process manifest; None when it has none (a Python function)."""
    path = code_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _bad(f"not valid TOML: {exc}") from None
    command = data.pop("command", None)
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(part, str) and part for part in command)
    ):
        raise _bad('`command` must be a non-empty list of strings, e.g. ["node", "server.js"]')
    name = data.pop("name", None)
    if name is not None and not isinstance(name, str):
        raise _bad("`name` must be a string")
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise _bad(
            f"unknown setting {', '.join(unknown)} (known: command, name, "
            f"{', '.join(sorted(CONFIG_KEYS))})"
        )
    data.setdefault("concurrency", DEFAULT_CONCURRENCY)
    program = command[0]
    # Resolved here with the gateway's PATH, which the sandbox shares (a read-only `/`).
    found = (code_dir / program).is_file() if "/" in program else shutil.which(program)
    if not found:
        raise _bad(f"the command {program!r} is not installed on the platform")
    return ProcessManifest(tuple(command), name, data)
