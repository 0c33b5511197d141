"""Deploy-time validation in a throwaway process: import the bundle, list its handlers.

`python -m cumulo.runtime.validate SPEC_JSON` prints one JSON object on its original stdout:
`{"ok": true, "handlers": [...]}` or `{"ok": false, "message": ..., "traceback": ...}`.
Whatever the user's module prints while importing goes to stderr instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson

from cumulo.runtime import limits
from cumulo.runtime.loader import UserCodeError, discover, found, import_module


def validate(code_dir: Path, module: str, attr: str | None) -> dict[str, Any]:
    try:
        mod = import_module(code_dir, module)
        handlers = [found(mod, attr)] if attr else discover(mod)
    except UserCodeError as exc:
        return {"ok": False, "message": str(exc), "traceback": exc.user_traceback}
    return {"ok": True, "handlers": [h.describe() for h in handlers]}


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    limits.no_core_dumps()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    code_dir = Path(spec["code_dir"])
    os.chdir(code_dir)
    result = validate(code_dir, spec["module"], spec.get("attr"))
    sys.stdout.flush()
    os.write(result_fd, orjson.dumps(result))
    os._exit(0)


if __name__ == "__main__":
    main()
