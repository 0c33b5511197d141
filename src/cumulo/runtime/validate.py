"""Deploy-time validation: import the bundle, list its handlers.

Runs inside a throwaway zygote (`ZygoteHandle.validate`), so user code is first imported in
the same sandbox it will serve in, never in the gateway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cumulo.runtime.loader import UserCodeError, discover, found, import_module


def validate(code_dir: Path, module: str, attr: str | None) -> dict[str, Any]:
    try:
        mod = import_module(code_dir, module)
        handlers = [found(mod, attr)] if attr else discover(mod)
    except UserCodeError as exc:
        return {"ok": False, "message": str(exc), "traceback": exc.user_traceback}
    return {"ok": True, "handlers": [h.describe() for h in handlers]}
