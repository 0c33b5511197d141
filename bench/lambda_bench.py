"""The Lambda Invoke API door against the plain HTTP route (issue 16: boto3 ≤ 1.2×).

One undecorated Lambda handler (`--handler`, returning a small JSON value) is called warm,
one call at a time, two ways: `boto3.client("lambda").invoke` (botocore's SigV4 signing,
our verifier, the Invoke API) and `POST /fn/default/{name}` with a bearer key on one
keep-alive connection (the handler gets its API Gateway v2 event there). Calls alternate
between the two after a warm-up; each side's latency includes its client's own work
(botocore: building, signing and parsing the request), as a user sees it. The result is
p50/p99 milliseconds of each and the p50 ratio boto3 / HTTP.

botocore's own client-side work per call (about 0.6 ms here) exceeds the whole /fn round
trip (about 0.4 ms), so that end-to-end ratio cannot reach 1.2× whatever the server does. A
third series isolates the door itself: one request signed by botocore, replayed (within
SigV4's 5-minute window) on the same kind of raw connection as the /fn calls, so both sides
have the same client and the ratio `door_over_http_p50` is the Invoke API's own cost
(SigV4 verification and the Lambda shapes) against the plain route. A fourth series calls
the plain route through a Python SDK too, cumulo's own `Client.invoke` (httpx), so
`boto3_over_sdk_p50` compares one SDK's call with the other's.

python -m bench.lambda_bench [--calls 400]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BenchError, HttpConn, Platform, log, median, percentile

CALLS = 400
WARMUP = 30
NAME = "lambda-bench"
GOAL = 1.2
SOURCE = """
def handler(event, context):
    return {"ok": True, "n": len(event) if isinstance(event, dict) else 0}
"""


def main(calls: int = CALLS) -> dict[str, Any]:
    import boto3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials

    from cumulo.client import Client

    payload = json.dumps({"hello": "world"}).encode()
    with (
        tempfile.TemporaryDirectory(prefix="cumulo-lambda-bench-") as tmp,
        Platform(idle_timeout=600, zygote_idle_timeout=600, label="cumulo") as platform,
    ):
        source = Path(tmp) / "lambda_fn.py"
        source.write_text(SOURCE)
        admin = Client(platform.url, platform.api_key)
        try:
            admin.deploy(source, name=NAME, handler="lambda_fn.handler")
            key = admin.create_key(["invoke", "read"], name="lambda-bench")
        finally:
            admin.close()
        sdk = Client(platform.url, platform.api_key)
        aws = boto3.client(
            "lambda",
            endpoint_url=platform.url,
            region_name="us-east-1",
            aws_access_key_id=key["id"],
            aws_secret_access_key=key["key"],
            config=Config(retries={"max_attempts": 1}),
        )
        conn = HttpConn(platform.url, timeout=30)
        headers = {**platform.auth, "Content-Type": "application/json"}
        door = f"/2015-03-31/functions/{NAME}/invocations"
        signed = AWSRequest(method="POST", url=platform.url + door, data=payload)
        SigV4Auth(Credentials(key["id"], key["key"]), "lambda", "us-east-1").add_auth(signed)
        signed_headers = dict(signed.prepare().headers.items())
        timings: dict[str, list[float]] = {"boto3": [], "http": [], "door": [], "sdk": []}
        try:
            for i in range(WARMUP + calls):
                t0 = time.perf_counter()
                answer = aws.invoke(FunctionName=NAME, Payload=payload)
                body = answer["Payload"].read()
                t1 = time.perf_counter()
                if answer["StatusCode"] != 200 or json.loads(body) != {"ok": True, "n": 1}:
                    raise BenchError(f"boto3 invoke answered {answer['StatusCode']}: {body!r}")
                response = conn.request("POST", f"/fn/default/{NAME}", payload, headers)
                t2 = time.perf_counter()
                if response.status != 200:
                    raise BenchError(f"/fn answered {response.status}: {response.body[:300]!r}")
                replayed = conn.request("POST", door, payload, signed_headers)
                t3 = time.perf_counter()
                if replayed.status != 200:
                    raise BenchError(f"the signed replay answered {replayed.status}")
                if sdk.invoke(NAME, {"hello": "world"}).get("ok") is not True:
                    raise BenchError("Client.invoke answered something else")
                t4 = time.perf_counter()
                if i >= WARMUP:
                    timings["sdk"].append((t4 - t3) * 1000)
                    timings["boto3"].append((t1 - t0) * 1000)
                    timings["http"].append((t2 - t1) * 1000)
                    timings["door"].append((t3 - t2) * 1000)
        finally:
            conn.close()
            aws.close()
            sdk.close()
    result: dict[str, Any] = {"calls_each": calls}
    for side, values in timings.items():
        result[f"{side}_p50_ms"] = round(median(values), 3)
        result[f"{side}_p99_ms"] = round(percentile(values, 99), 3)
    ratio = result["boto3_p50_ms"] / result["http_p50_ms"]
    result["boto3_over_http_p50"] = round(ratio, 3)
    result["boto3_over_http_p99"] = round(result["boto3_p99_ms"] / result["http_p99_ms"], 3)
    result["boto3_over_sdk_p50"] = round(result["boto3_p50_ms"] / result["sdk_p50_ms"], 3)
    door_ratio = result["door_p50_ms"] / result["http_p50_ms"]
    result["door_over_http_p50"] = round(door_ratio, 3)
    result["door_over_http_p99"] = round(result["door_p99_ms"] / result["http_p99_ms"], 3)
    result["goal"] = f"≤ {GOAL}× (boto3 / HTTP p50)"
    result["pass"] = ratio <= GOAL
    log(
        f"lambda: boto3 p50 {result['boto3_p50_ms']:.2f} ms, /fn p50 "
        f"{result['http_p50_ms']:.2f} ms ({ratio:.2f}×); the door alone "
        f"{result['door_p50_ms']:.2f} ms ({door_ratio:.2f}×); cumulo's Client.invoke "
        f"{result['sdk_p50_ms']:.2f} ms (boto3 {result['boto3_over_sdk_p50']:.2f}× that)"
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=CALLS)
    print(json.dumps(main(parser.parse_args().calls), indent=2))
