"""The `cumulo` command. Thin: every command but `up` only calls cumulo.client."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from cumulo.cli.alerts import register as register_alerts
from cumulo.cli.privacy import app as privacy_app
from cumulo.cli.privacy import privacy_settings
from cumulo.cli.progress import progress, wait_for_invocation
from cumulo.cli.quantum import app as quantum_app
from cumulo.cli.usage import register as register_usage
from cumulo.errors import CumuloError
from cumulo.security.ratelimit import Rate

if TYPE_CHECKING:
    from cumulo.client import Client

app = typer.Typer(
    help="cumulo: deploy Python functions, get endpoints that scale from zero.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
secrets_app = typer.Typer(help="Manage secrets (functions read the ones they declare).")
keys_app = typer.Typer(help="Manage API keys.")
audit_app = typer.Typer(help="The tamper-evident audit log.")
app.add_typer(secrets_app, name="secrets")
app.add_typer(quantum_app, name="quantum")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(privacy_app, name="privacy")

out = Console()
err = Console(stderr=True)
T = TypeVar("T")

# tarfile.extractall(filter=…), which every deploy uses, arrived in 3.11.4.
MIN_PYTHON = (3, 11, 4)

Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Namespace (tenant).")]


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def run(action: Callable[[], T]) -> T:
    """Run a client call; any cumulo error becomes one line on stderr and exit 1."""
    try:
        return action()
    except CumuloError as exc:
        log = getattr(exc, "details", {}).get("log")
        if isinstance(log, str) and log:
            # A failed dependency build: pip's own words say which requirement and why.
            err.print(log.rstrip(), highlight=False, markup=False, soft_wrap=True)
        fail(str(exc))
        raise AssertionError("unreachable") from exc


def client(namespace: str) -> Client:
    # Imported here: `cumulo up` never loads httpx (~3 MB of gateway memory).
    from cumulo.client import Client

    return run(lambda: Client(namespace=namespace))


def parse_kv(pairs: list[str], what: str) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"{what} takes KEY=VALUE, not {pair!r}")
        result[key] = value
    return result


# ---------------------------------------------------------------- up
@app.command()
def up(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    data_dir: Annotated[Path, typer.Option(help="Where state, code and keys live.")] = Path(
        ".cumulo"
    ),
    db: Annotated[
        str | None, typer.Option(help="Database URL (default: SQLite in data dir).")
    ] = None,
    executor: Annotated[str, typer.Option(help="Where workers run: local.")] = "local",
    demo: Annotated[bool, typer.Option(help="Deploy the functions in ./examples.")] = False,
    idle_timeout: Annotated[float, typer.Option(help="Seconds an idle worker lives.")] = 60.0,
    zygote_idle_timeout: Annotated[
        float, typer.Option(help="Seconds a zygote without workers lives.")
    ] = 600.0,
    queue_size: Annotated[int, typer.Option(help="Requests that may wait per version.")] = 256,
    max_body_mb: Annotated[float, typer.Option(help="Request and response body limit.")] = 6.0,
    grace: Annotated[float, typer.Option(help="Seconds to drain requests on SIGTERM.")] = 30.0,
    max_connections: Annotated[int, typer.Option(help="Open HTTP connections, in all.")] = 10_000,
    max_connections_per_client: Annotated[
        int, typer.Option(help="Open HTTP connections from one client address.")
    ] = 1_000,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a connection has to send a request head.")
    ] = 10.0,
    max_header_kb: Annotated[int, typer.Option(help="Request head size limit (KiB).")] = 64,
    isolation: Annotated[
        str,
        typer.Option(
            help="strict: require bubblewrap; auto: use it when installed; process: never."
        ),
    ] = "auto",
    max_memory_mb: Annotated[
        int, typer.Option(help="Ceiling on a function's memory_mb (a deploy above: 400).")
    ] = 2048,
    max_instances: Annotated[
        int, typer.Option(help="Ceiling on a function's max_instances.")
    ] = 100,
    max_concurrency: Annotated[
        int, typer.Option(help="Ceiling on a function's concurrency.")
    ] = 1000,
    max_timeout_s: Annotated[
        float, typer.Option(help="Ceiling on a function's timeout_s.")
    ] = 900.0,
    max_pids: Annotated[
        int, typer.Option(help="Processes and threads one version's tree may hold.")
    ] = 2048,
    key_rate: Annotated[
        str, typer.Option(help="Rate limit per API key, e.g. 1000/s or 1000/s:2000.")
    ] = "",
    namespace_concurrency: Annotated[
        int, typer.Option(help="In-flight invocations allowed per namespace (0: no limit).")
    ] = 0,
    retention: Annotated[
        str | None, typer.Option(help="Default retention of logs, records and subject data.")
    ] = None,
    redact: Annotated[
        str, typer.Option(help="PII masked in logs: all, or some of email,phone,card,ip,iban,ssn.")
    ] = "all",
    no_redact: Annotated[bool, typer.Option("--no-redact", help="Store logs unmasked.")] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate: serve HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key for --tls-cert.")] = None,
    jwt_issuer: Annotated[str | None, typer.Option(help="OIDC issuer (iss) to accept.")] = None,
    jwt_audience: Annotated[
        str | None, typer.Option(help="Audience (aud) tokens must name.")
    ] = None,
    jwks: Annotated[
        str | None, typer.Option(help="The issuer's JWKS: a file or an https URL.")
    ] = None,
    jwt_namespace_claim: Annotated[
        str, typer.Option(help="Claim naming the token's namespace.")
    ] = "cumulo_namespace",
    trace_exporter: Annotated[
        str | None, typer.Option(help="OpenTelemetry spans: none, console, otlp or memory.")
    ] = None,
    trace_endpoint: Annotated[
        str | None, typer.Option(help="OTLP/HTTP traces endpoint (with --trace-exporter otlp).")
    ] = None,
    metering: Annotated[
        bool, typer.Option("--metering/--no-metering", help="Meter usage, cost and quotas.")
    ] = True,
    pricing: Annotated[
        Path | None, typer.Option(help="TOML price table for `cumulo usage` (default: Lambda's).")
    ] = None,
    prewarm: Annotated[
        bool, typer.Option("--prewarm/--no-prewarm", help="Start workers before predicted load.")
    ] = True,
    max_unpacked_mb: Annotated[
        int, typer.Option(help="Most a deployed bundle may unpack to, in MB.")
    ] = 256,
    max_bundle_files: Annotated[
        int, typer.Option(help="Most files and directories a deployed bundle may hold.")
    ] = 10_000,
) -> None:
    """Start the platform in the foreground (gateway, workers)."""
    from cumulo.cli.serve import serve
    from cumulo.gateway.edge import EdgeLimits

    if sys.version_info < MIN_PYTHON:
        # tarfile's extraction filters (every deploy unpacks with one) came in 3.11.4.
        fail(
            f"cumulo needs Python {'.'.join(map(str, MIN_PYTHON))} or newer; this is "
            f"{'.'.join(map(str, sys.version_info[:3]))}"
        )

    if db is not None and not db.startswith("sqlite:"):
        fail(f"unsupported --db {db!r}: this build stores data in SQLite (sqlite:///PATH)")
    if key_rate:
        try:
            Rate.parse(key_rate)
        except ValueError as exc:
            fail(str(exc))
    if namespace_concurrency < 0:
        fail("--namespace-concurrency must not be negative")
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together")
    for pem in (tls_cert, tls_key):
        if pem is not None and not pem.is_file():
            fail(f"{pem} does not exist")
    jwt_flags = (jwt_issuer, jwt_audience, jwks)
    if any(jwt_flags) and not all(jwt_flags):
        fail("--jwt-issuer, --jwt-audience and --jwks go together")
    if isolation not in ("strict", "auto", "process"):
        fail(f"--isolation takes strict, auto or process, not {isolation!r}")
    for flag, ceiling in (
        ("--max-memory-mb", max_memory_mb),
        ("--max-instances", max_instances),
        ("--max-concurrency", max_concurrency),
        ("--max-timeout-s", max_timeout_s),
        ("--max-pids", max_pids),
    ):
        if ceiling <= 0:
            fail(f"{flag} must be positive")
    if max_memory_mb < 16:
        fail("--max-memory-mb must be at least 16")
    if executor != "local":
        fail(f"unsupported --executor {executor!r}: this build runs workers locally")
    if max_unpacked_mb < 1 or max_bundle_files < 1:
        fail("--max-unpacked-mb and --max-bundle-files must be at least 1")
    for name, value in (("--idle-timeout", idle_timeout), ("--grace", grace)):
        if value < 0:
            fail(f"{name} must not be negative")
    edge = EdgeLimits(
        max_header_bytes=max_header_kb * 1024,
        header_timeout_s=header_timeout,
        max_connections=max_connections,
        max_connections_per_client=max_connections_per_client,
    )
    if edge.problems():
        fail(edge.problems()[0])
    serve(
        host=host,
        port=port,
        data_dir=data_dir,
        db=db,
        demo=demo,
        idle_timeout=idle_timeout,
        zygote_idle_timeout=zygote_idle_timeout,
        queue_size=queue_size,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        grace=grace,
        isolation=isolation,
        ceilings={
            "max_memory_mb": max_memory_mb,
            "max_instances": max_instances,
            "max_concurrency": max_concurrency,
            "max_timeout_s": max_timeout_s,
            "max_pids": max_pids,
        },
        key_rate=key_rate,
        namespace_concurrency=namespace_concurrency,
        privacy=privacy_settings(retention, "none" if no_redact else redact, fail),
        tls_cert=tls_cert,
        tls_key=tls_key,
        jwt=(jwt_issuer, jwt_audience, jwks, jwt_namespace_claim) if jwks else None,
        trace_exporter=trace_exporter,
        trace_endpoint=trace_endpoint,
        metering=metering,
        pricing=pricing,
        prewarm=prewarm,
        bundle_limits=(max_unpacked_mb, max_bundle_files),
        edge=edge,
    )


# ---------------------------------------------------------------- functions
@app.command()
def deploy(
    path: Annotated[Path, typer.Argument(help="A .py file or a directory.")],
    name: Annotated[str | None, typer.Option(help="Function name.")] = None,
    handler: Annotated[str | None, typer.Option(help="module.function to serve.")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    promote: Annotated[bool, typer.Option(help="Move alias `live` to the new version.")] = True,
    memory_mb: Annotated[int | None, typer.Option()] = None,
    timeout_s: Annotated[float | None, typer.Option()] = None,
    min_instances: Annotated[int | None, typer.Option()] = None,
    max_instances: Annotated[int | None, typer.Option()] = None,
    concurrency: Annotated[int | None, typer.Option()] = None,
    public: Annotated[
        bool | None, typer.Option("--public/--private", help="Allow calls without a key.")
    ] = None,
    network: Annotated[
        bool | None, typer.Option("--network/--no-network", help="Outbound network access.")
    ] = None,
    rate_limit: Annotated[str | None, typer.Option(help="e.g. 100/s or 6000/m:200.")] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Tries for async calls before the dead letters.")
    ] = None,
    trust_pickle: Annotated[
        bool | None,
        typer.Option("--trust-pickle", help="A model may load raw pickle/joblib files."),
    ] = None,
    namespace: Namespace = "default",
) -> None:
    """Deploy a function: a new immutable version, live unless --no-promote."""
    env_map = parse_kv(env or [], "--env")
    c = client(namespace)
    with progress(err, f"deploying {path}: uploading, building its environment, validating"):
        result = run(
            lambda: c.deploy(
                path,
                name=name,
                handler=handler,
                env=env_map,
                promote=promote,
                memory_mb=memory_mb,
                timeout_s=timeout_s,
                min_instances=min_instances,
                max_instances=max_instances,
                concurrency=concurrency,
                public=public,
                network=network,
                rate_limit=rate_limit,
                max_attempts=max_attempts,
                trust_pickle=trust_pickle,
            )
        )
    live = ", ".join(f"v{v}={w}%" for v, w in result["traffic"].items())
    out.print(
        f"deployed [bold]{result['function']}[/bold] version {result['version']} "
        f"(live: {live})\n{c.credentials.url}/fn/{namespace}/{result['function']}",
        highlight=False,
    )


@app.command()
def invoke(
    name: str,
    data: Annotated[str | None, typer.Option("--data", "-d", help="JSON, or @file.")] = None,
    queued: Annotated[
        bool, typer.Option("--async", help="Queue it; print the invocation id.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="With --async: wait for the result.")] = (
        False
    ),
    namespace: Namespace = "default",
) -> None:
    """Invoke a function and print its JSON result."""
    if wait and not queued:
        fail("--wait goes with --async")
    payload: Any = None
    if data is not None:
        raw = Path(data[1:]).read_bytes() if data.startswith("@") else data.encode()
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            fail(f"--data is not valid JSON: {exc}")
    c = client(namespace)
    if queued:
        _invoke_async(c, name, payload, wait)
        return
    response = run(lambda: c.invoke_raw(name, payload))
    sys.stdout.write(response.text + ("\n" if not response.text.endswith("\n") else ""))


def _invoke_async(c: Client, name: str, payload: Any, wait: bool) -> None:
    invocation_id = run(lambda: c.invoke_async(name, payload))
    if not wait:
        sys.stdout.write(invocation_id + "\n")
        return
    try:
        view = run(
            lambda: wait_for_invocation(
                lambda: c.async_invocation(invocation_id), invocation_id, err
            )
        )
    except KeyboardInterrupt:
        fail(f"stopped waiting; invocation {invocation_id} goes on", 130)
    if view["status"] != "succeeded":
        fail(f"invocation {invocation_id} {view['status']}: {view.get('error') or 'no result'}")
    if "result" in view:
        sys.stdout.write(orjson.dumps(view["result"]).decode() + "\n")
    else:
        sys.stdout.write(view.get("result_base64", "") + "\n")


@app.command("ls")
def list_functions(namespace: Namespace = "default") -> None:
    """List functions and where their traffic goes."""
    functions = run(lambda: client(namespace).functions())
    table = Table("NAME", "LIVE")
    for f in functions:
        table.add_row(f["name"], ", ".join(f"v{v}={w}%" for v, w in f["traffic"].items()))
    out.print(table)


@app.command()
def versions(name: str, namespace: Namespace = "default") -> None:
    """List a function's versions."""
    result = run(lambda: client(namespace).versions(name))
    table = Table("VERSION", "TRAFFIC", "HANDLER", "BUNDLE", "CREATED")
    import datetime as dt

    for v in result["versions"]:
        created = dt.datetime.fromtimestamp(v["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        weight = result["traffic"].get(str(v["version"]))
        table.add_row(
            str(v["version"]),
            f"{weight}%" if weight else "",
            v["handler"],
            v["bundle_sha256"][:12],
            created,
        )
    out.print(table)


@app.command()
def traffic(
    name: str,
    weights: Annotated[list[str], typer.Argument(help="VERSION=PERCENT pairs summing to 100.")],
    namespace: Namespace = "default",
) -> None:
    """Split live traffic between versions, e.g. `cumulo traffic hello 3=90 4=10`."""
    split: dict[int, int] = {}
    for version, percent in parse_kv(weights, "traffic").items():
        try:
            split[int(version)] = int(percent)
        except ValueError:
            fail(f"traffic takes VERSION=PERCENT with whole numbers, not {version}={percent}")
    result = run(lambda: client(namespace).set_traffic(name, split))
    out.print(f"{name}: " + ", ".join(f"v{v}={w}%" for v, w in result["traffic"].items()))


@app.command()
def rollback(name: str, namespace: Namespace = "default") -> None:
    """Restore the previous traffic split."""
    result = run(lambda: client(namespace).rollback(name))
    out.print(f"{name}: " + ", ".join(f"v{v}={w}%" for v, w in result["traffic"].items()))


@app.command("rm")
def remove(name: str, namespace: Namespace = "default") -> None:
    """Remove a function with all its versions and state."""
    run(lambda: client(namespace).remove(name))
    out.print(f"removed {name}")


@app.command()
def logs(
    name: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    limit: Annotated[int, typer.Option(help="How many recent lines.")] = 100,
    namespace: Namespace = "default",
) -> None:
    """Print a function's log lines (with invocation ids)."""
    c = client(namespace)
    for line in run(lambda: c.logs(name, limit=limit)):
        _print_log(line)
    if follow:
        try:
            for line in c.follow_logs(name):
                _print_log(line)
        except CumuloError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            return


def _print_log(line: dict[str, Any]) -> None:
    import datetime as dt

    ts = dt.datetime.fromtimestamp(line["ts"]).strftime("%H:%M:%S.%f")[:-3]
    fields = " ".join(f"{k}={v}" for k, v in (line.get("fields") or {}).items())
    text = (
        f"{ts} v{line['version']} {line['invocation_id'][:12]} {line['level']:<7} {line['message']}"
    )
    sys.stdout.write(text + (f" {fields}" if fields else "") + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- secrets
@secrets_app.command("set")
def secrets_set(
    key: str,
    value: Annotated[str | None, typer.Argument(help="The value, or - to read stdin.")] = None,
    namespace: Namespace = "default",
) -> None:
    """Set a secret (VALUE, or - / nothing to read it from stdin)."""
    if value is None or value == "-":
        value = sys.stdin.read().rstrip("\n")
    secret = value
    run(lambda: client(namespace).set_secret(key, secret))
    out.print(f"set secret {key}")


@secrets_app.command("ls")
def secrets_ls(namespace: Namespace = "default") -> None:
    """List secret names (never values)."""
    for secret in run(lambda: client(namespace).secrets()):
        out.print(secret["name"])


@secrets_app.command("rm")
def secrets_rm(key: str, namespace: Namespace = "default") -> None:
    """Remove a secret."""
    run(lambda: client(namespace).remove_secret(key))
    out.print(f"removed secret {key}")


# ---------------------------------------------------------------- keys
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    unit = text[-1:]
    try:
        return float(text[:-1]) * DURATION_UNITS[unit]
    except (KeyError, ValueError):
        fail(f"invalid duration {text!r}: use e.g. 30d, 12h, 15m")
        raise


@keys_app.command("create")
def keys_create(
    scope: Annotated[list[str], typer.Option("--scope", help="invoke, deploy, read or admin.")],
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d.")] = None,
    name: Annotated[str, typer.Option(help="A label.")] = "",
    namespace: Namespace = "default",
) -> None:
    """Create an API key; it is printed once and never again."""
    expires_s = parse_duration(expires) if expires else None
    result = run(lambda: client(namespace).create_key(scope, expires_in_s=expires_s, name=name))
    out.print(f"id:  {result['id']}\nkey: {result['key']}", highlight=False)


@keys_app.command("ls")
def keys_ls(namespace: Namespace = "default") -> None:
    """List API keys (ids and scopes, never the keys)."""
    table = Table("ID", "NAMESPACE", "SCOPES", "NAME", "REVOKED")
    for key in run(lambda: client(namespace).api_keys()):
        table.add_row(
            key["id"], key["namespace"], ",".join(key["scopes"]), key["name"], str(key["revoked"])
        )
    out.print(table)


@keys_app.command("rotate-master")
def keys_rotate_master() -> None:
    """Re-wrap every data key under a new master key, without downtime."""
    result = run(lambda: client("default").rotate_master_key())
    out.print(
        f"master key rotated: {result['old_key_id']} -> {result['new_key_id']} "
        f"({result['data_keys']} data keys re-wrapped)",
        highlight=False,
    )
    if result.get("env_update_needed"):
        out.print("set CUMULO_MASTER_KEY to the new key before the next start")


@audit_app.command("verify")
def audit_verify(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="One chain (default: all).")
    ] = None,
) -> None:
    """Check the audit log's hash chains; exits 1 and names the first problem if broken."""
    report = run(lambda: client("default").verify_audit(namespace))
    if not report["ok"]:
        broken = [c for c in report["chains"] if not c["ok"]]
        first = broken[0] if broken else None
        if first is not None:
            where = f" at seq {first['first_bad_seq']}" if first["first_bad_seq"] else ""
            fail(f"namespace {first['namespace']!r}: {first['reason']}{where}: {first['message']}")
        fail("; ".join(report["problems"]) or "the audit log failed verification")
    chains = report["chains"]
    rows = sum(c["rows"] for c in chains)
    out.print(f"audit log intact: {len(chains)} chains, {rows} entries")


@keys_app.command("revoke")
def keys_revoke(key_id: str, namespace: Namespace = "default") -> None:
    """Revoke an API key by id."""
    run(lambda: client(namespace).revoke_key(key_id))
    out.print(f"revoked {key_id}")


# After the core commands, so `cumulo --help` lists them in this order.
register_usage(app)  # `cumulo usage`, `cumulo quota`
register_alerts(app)  # `cumulo alerts`


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
