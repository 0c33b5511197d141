"""Debian's Chromium, headless, driven by Playwright: shared by the dashboard tests and the
screenshot script."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import RunningPlatform

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GREETER = Path(__file__).parent / "greeter.py"
DIST = Path(__file__).parents[2] / "src" / "cumulo" / "gateway" / "ui_dist" / "index.html"


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    if not DIST.exists() and shutil.which("npm") is None:
        return "the dashboard is not built and npm is not installed to build it (make ui)"
    return None


def deploy_two_versions(platform: RunningPlatform, name: str = "greeter") -> None:
    """Version 1 takes all traffic; version 2 is deployed beside it without promotion."""
    client = platform.client()
    client.deploy(GREETER, name=name, env={"RELEASE": "1"})
    client.deploy(GREETER, name=name, env={"RELEASE": "2"}, promote=False)
