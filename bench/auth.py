"""Key-authenticated warm invoke throughput vs the same public function called anonymously.

Issue target: with an API key ≥ 95% of the throughput without one, same run. Both hit the
same deployed echo function (deployed `--public`), interleaved round by round.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from bench.common import (
    FUNCTIONS_DIR,
    BenchError,
    Platform,
    cumulo_exe,
    interleaved_ratio,
    run_wrk,
)

BODY = json.dumps({"user": "ada", "items": [1, 2, 3], "nested": {"a": 1}}).encode()


def main(rounds: int = 4, duration_s: float = 8.0) -> dict[str, Any]:
    with Platform(idle_timeout=600, label="cumulo (auth bench)") as plat:
        deployed = subprocess.run(
            [cumulo_exe(), "deploy", str(FUNCTIONS_DIR / "echo.py"), "--name", "open", "--public"],
            env=plat.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if deployed.returncode != 0:
            raise BenchError(f"deploy failed: {deployed.stderr.strip()[-400:]}")
        url = f"{plat.url}/fn/default/open"
        run_wrk(url, body=BODY, headers=plat.auth, duration_s=2)  # warm-up
        pair = interleaved_ratio(
            "auth",
            ("key", url, plat.auth),
            ("anonymous", url, {}),
            body=BODY,
            rounds=rounds,
            duration_s=duration_s,
        )
    return {
        "with_key_req_s": pair.a_rps,
        "without_key_req_s": pair.b_rps,
        "ratio_median_of_rounds": pair.ratio,
        "target": ">= 0.95",
        "pass": pair.ratio >= 0.95,
        "rounds": rounds,
        "duration_s": duration_s,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
