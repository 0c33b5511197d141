"""Where `cumulo up --demo` finds its example functions, wherever it is started from."""

from __future__ import annotations

from pathlib import Path


def examples_dir() -> Path:
    """The examples shipped in the wheel (`cumulo/demo/`), or the checkout's `examples/`
    for an editable install: never the current directory, so `--demo` works anywhere."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "demo", package.parent.parent / "examples"):
        if any(candidate.glob("*.py")):
            return candidate
    raise FileNotFoundError(f"no demo examples in {package / 'demo'}")
