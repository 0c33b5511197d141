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
    log,
    median,
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
        keyed, anonymous, ratios = [], [], []
        for r in range(rounds):
            pair = [("key", plat.auth), ("anonymous", {})]
            if r % 2:
                pair.reverse()
            got: dict[str, float] = {}
            for name, headers in pair:
                res = run_wrk(url, body=BODY, headers=headers, duration_s=duration_s)
                if res.error_count:
                    raise BenchError(f"{name}: {res.error_count} errors")
                got[name] = res.rps
            keyed.append(got["key"])
            anonymous.append(got["anonymous"])
            ratios.append(got["key"] / got["anonymous"])
            log(f"auth round {r + 1}: key {got['key']:,.0f} req/s, none {got['anonymous']:,.0f}")
    ratio = median(ratios)
    return {
        "with_key_req_s": median(keyed),
        "without_key_req_s": median(anonymous),
        "ratio_median_of_rounds": ratio,
        "target": ">= 0.95",
        "pass": ratio >= 0.95,
        "rounds": rounds,
        "duration_s": duration_s,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
