"""Schemathesis against /openapi.json on a real platform: no input makes the API fail (5xx)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import RunningPlatform

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


def test_no_generated_request_gets_a_server_error(
    fresh_platform: Callable[..., RunningPlatform], tmp_path: Path
) -> None:
    running = fresh_platform()
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{running.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {running.api_key}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--generation-deterministic",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert " passed" in summary
    assert "failed" not in summary.split("SUMMARY")[-1]
    assert "internal error" not in running.log()
