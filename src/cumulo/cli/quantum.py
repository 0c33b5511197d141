"""`cumulo quantum`: run OpenQASM circuits on the platform and see their counts."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console

from cumulo.cli.progress import progress
from cumulo.config import load_credentials
from cumulo.errors import ConfigError

if TYPE_CHECKING:
    pass

app = typer.Typer(
    rich_markup_mode=None,
    help="Run OpenQASM 2/3 circuits on the platform's Qiskit Aer simulators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

out = Console()
err = Console(stderr=True)

TERMINAL = ("succeeded", "failed", "cancelled")
POLL_S = 2.0
HISTOGRAM_ROWS = 16
BAR_WIDTH = 40

Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Namespace (tenant).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the job as JSON.")]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


class _Api:
    def __init__(self, namespace: str) -> None:
        try:
            creds = load_credentials()
        except ConfigError as exc:
            fail(str(exc))
        self.url = creds.url
        self.namespace = namespace
        import httpx  # lazily: `cumulo up` never loads httpx

        self.http = httpx.Client(
            base_url=creds.url,
            headers={"authorization": f"Bearer {creds.api_key}"},
            timeout=httpx.Timeout(10.0, read=POLL_S + 30.0),
        )

    def __enter__(self) -> _Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        params = dict(kwargs.pop("params", {}) or {})
        params["namespace"] = self.namespace
        import httpx

        try:
            response = self.http.request(method, path, params=params, **kwargs)
        except httpx.TimeoutException:
            fail(f"{self.url} did not answer in time")
        except httpx.HTTPError as exc:
            fail(f"cannot reach {self.url}: {exc}")
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            message = f"HTTP {response.status_code}"
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                message = str(data["error"].get("message") or message)
            fail(message)
        return data


def _job_line(job: dict[str, Any], started: float) -> str:
    state = job["state"]
    elapsed = time.monotonic() - started
    if state == "queued" and job.get("queue_position"):
        return f"{job['id']}: queued, position {job['queue_position']} ({elapsed:.0f} s)"
    progress = job.get("progress") or {}
    if state == "running":
        return (
            f"{job['id']}: running {job.get('method')} — PUB {progress.get('pubs_done', 0)}/"
            f"{progress.get('pubs_total', '?')} done ({elapsed:.0f} s)"
        )
    return f"{job['id']}: {state} ({elapsed:.0f} s)"


def _wait(api: _Api, job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    started = time.monotonic()
    path = f"/v1/quantum/jobs/{job['id']}"
    if quiet:
        while job["state"] not in TERMINAL:
            job = api.call("GET", path, params={"wait": POLL_S})
        return job
    # A spinner with the job's state on a terminal; nothing otherwise (plain output).
    with progress(err, _job_line(job, started)) as update:
        while job["state"] not in TERMINAL:
            job = api.call("GET", path, params={"wait": POLL_S})
            update(_job_line(job, started))
    return job


def histogram(counts: dict[str, int], shots: int, title: str) -> list[str]:
    """Text bars for the most frequent outcomes, most frequent first."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ordered[:HISTOGRAM_ROWS]
    top = shown[0][1] if shown else 1
    width = max((len(k) for k, _ in shown), default=1)
    lines = [title]
    for key, n in shown:
        bar = "█" * max(1, round(BAR_WIDTH * n / top))
        lines.append(f"  {key:>{width}}  {bar:<{BAR_WIDTH}} {n:>8}  {100 * n / shots:5.1f}%")
    rest = ordered[HISTOGRAM_ROWS:]
    if rest:
        lines.append(
            f"  … {len(rest)} more outcome(s) with {sum(n for _, n in rest)} shots in total"
        )
    return lines


def _print_result(job: dict[str, Any]) -> None:
    result = job.get("result") or {}
    meta = result.get("metadata", {})
    out.print(
        f"[bold]{job['id']}[/bold] succeeded · method {meta.get('method')} · seed "
        f"{meta.get('seed')} · {1000 * float(meta.get('run_time_s', 0)):.1f} ms · "
        f"Qiskit {meta.get('qiskit_version')} / Aer {meta.get('qiskit_aer_version')}",
        highlight=False,
        soft_wrap=True,
    )
    for i, pub in enumerate(result.get("pubs", [])):
        if pub.get("kind") == "estimator":
            out.print(f"PUB {i}: evs {pub['evs']}  stds {pub['stds']}", highlight=False)
            continue
        for name, entry in pub.get("data", {}).items():
            counts = entry["counts"]
            if not isinstance(counts, dict):
                out.print(f"PUB {i} register {name}: sweep of shape {pub['shape']} (use --json)")
                continue
            title = f"PUB {i} · register {name} · {pub['shots']} shots (bit 0 rightmost)"
            if pub.get("bit_order") == "big":
                title = title.replace("rightmost", "leftmost")
            for line in histogram(counts, int(pub["shots"]), title):
                out.print(line, highlight=False, markup=False)


def _finish(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(orjson.dumps(job).decode())
    elif job["state"] == "succeeded":
        _print_result(job)
    if job["state"] == "failed":
        error = job.get("error") or {}
        fail(f"job {job['id']} failed: {error.get('message', 'unknown error')}")
    if job["state"] == "cancelled":
        fail(f"job {job['id']} was cancelled")


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="An OpenQASM 2 or 3 file with measurements.")],
    shots: Annotated[int, typer.Option(help="Shots to sample.")] = 1024,
    seed: Annotated[int | None, typer.Option(help="Simulator seed (same seed, same counts).")] = (
        None
    ),
    method: Annotated[
        str,
        typer.Option(help="auto, statevector, density_matrix, stabilizer or matrix_product_state."),
    ] = "auto",
    device: Annotated[str, typer.Option(help="CPU or GPU.")] = "CPU",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the result.")] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only check admission: method and memory.")
    ] = False,
    as_json: JsonOut = False,
    namespace: Namespace = "default",
) -> None:
    """Sample a circuit and print a histogram of its counts."""
    try:
        circuit = file.read_text()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        fail(f"{file} is not a text file")
    body: dict[str, Any] = {
        "pubs": [{"circuit": circuit, "shots": shots}],
        "method": method,
        "device": device,
    }
    if seed is not None:
        body["seed"] = seed
    with _Api(namespace) as api:
        _run(api, body, dry_run=dry_run, wait=wait, as_json=as_json)


def _bytes(n: int) -> str:
    from cumulo.cli.render import size

    return f"{n} bytes" if n < 1024 else size(n)


def _run(api: _Api, body: dict[str, Any], *, dry_run: bool, wait: bool, as_json: bool) -> None:
    if dry_run:
        report = api.call("POST", "/v1/quantum/jobs", params={"dry_run": "true"}, json=body)
        if as_json:
            out.print_json(orjson.dumps(report).decode())
        else:
            out.print(
                f"admitted: {report['method']} on {report['device']}, {report['num_qubits']} "
                f"qubits, about {_bytes(report['estimated_memory_bytes'])} of "
                f"{_bytes(report['available_memory_bytes'])} available",
                highlight=False,
            )
        return
    # A fresh key per invocation: a retried POST cannot create a second job.
    headers = {"idempotency-key": str(uuid.uuid4())}
    job = api.call("POST", "/v1/quantum/jobs", json=body, headers=headers)
    if not wait:
        if as_json:
            out.print_json(orjson.dumps(job).decode())
        else:
            out.print(job["id"], highlight=False)
        return
    try:
        job = _wait(api, job, quiet=as_json)
    except KeyboardInterrupt:
        fail(
            f"stopped waiting; job {job['id']} goes on (cancel it with "
            f"`cumulo quantum cancel {job['id']}`)",
            130,
        )
    _finish(job, as_json)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The job id (qj_…).")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until it ends.")] = False,
    as_json: JsonOut = False,
    namespace: Namespace = "default",
) -> None:
    """Show a job: its state, events and (when finished) its result."""
    with _Api(namespace) as api:
        job = api.call("GET", f"/v1/quantum/jobs/{job_id}")
        if wait:
            job = _wait(api, job, quiet=as_json)
    if as_json:
        out.print_json(orjson.dumps(job).decode())
        return
    position = f" (queue position {job['queue_position']})" if job.get("queue_position") else ""
    out.print(f"{job['id']}: {job['state']}{position}", highlight=False)
    for event in job.get("events", []):
        out.print(f"  {event['at']}  {event['state']:<10} {event['message']}", highlight=False)
    if job["state"] == "succeeded":
        _print_result(job)
    elif job["state"] == "failed":
        error = job.get("error") or {}
        fail(f"job {job['id']} failed: {error.get('message', 'unknown error')}")


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job id (qj_…).")],
    namespace: Namespace = "default",
) -> None:
    """Cancel a queued or running job."""
    with _Api(namespace) as api:
        job = api.call("DELETE", f"/v1/quantum/jobs/{job_id}")
    out.print(f"{job['id']}: {job['state']}", highlight=False)
