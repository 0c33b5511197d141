"""The full `cumulo` CLI (typer). Thin: every command but `up` only calls cumulo.client.
Loaded by cumulo.cli.main for everything its fast path does not answer."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console

from cumulo.cli import profiles, render
from cumulo.cli.alerts import register as register_alerts
from cumulo.cli.export import register as register_export
from cumulo.cli.migrate import register as register_migrate
from cumulo.cli.privacy import app as privacy_app
from cumulo.cli.privacy import privacy_settings
from cumulo.cli.progress import progress, wait_for_invocation
from cumulo.cli.quantum import app as quantum_app
from cumulo.cli.usage import register as register_usage
from cumulo.errors import CumuloError
from cumulo.runtime.settings import RuntimeSettings
from cumulo.security.ratelimit import Rate

if TYPE_CHECKING:
    from cumulo.client import Client

app = typer.Typer(
    rich_markup_mode=None,
    help="cumulo: deploy Python functions, get endpoints that scale from zero.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
secrets_app = typer.Typer(
    rich_markup_mode=None, help="Manage secrets (functions read the ones they declare)."
)
keys_app = typer.Typer(rich_markup_mode=None, help="Manage API keys.")
audit_app = typer.Typer(rich_markup_mode=None, help="The tamper-evident audit log.")
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
# `cumulo up`'s ceilings default to the runtime's own: one place holds them.
CEILINGS = RuntimeSettings()

Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Namespace (tenant).")]
Output = Annotated[
    str, typer.Option("--output", "-o", help="table (aligned columns) or json.", metavar="FORMAT")
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@app.callback(invoke_without_command=True)
def _global(
    ctx: typer.Context,
    context: Annotated[
        str | None, typer.Option("--context", help="The saved context to use.", metavar="NAME")
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = (
        False
    ),
) -> None:
    if version:
        from cumulo import __version__

        out.print(f"cumulo {__version__}", highlight=False)
        raise typer.Exit(0)
    profiles.FLAG_CONTEXT = context
    if ctx.invoked_subcommand is None:
        from cumulo.cli.main import HELP

        sys.stdout.write(HELP)


def check_output(output: str) -> str:
    if output not in render.OUTPUTS:
        fail(f"-o takes table or json, not {output!r}")
    return output


def confirm(question: str, yes: bool) -> None:
    """Destructive commands ask first; --yes (or no terminal to ask on) needs the flag."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question} Pass --yes to confirm (stdin is not a terminal)")
    if not typer.confirm(question, default=False):
        fail("cancelled")


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

    try:
        target = profiles.resolve()
    except profiles.ProfileError as exc:
        fail(str(exc))
        raise
    return run(lambda: Client(target.url, target.api_key, namespace=namespace))


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
        str | None,
        typer.Option(
            help="postgresql://USER@HOST/DB: one database several gateways share "
            "(default: SQLite in the data dir).",
            envvar="CUMULO_DB",
        ),
    ] = None,
    subject_keys_db: Annotated[
        str | None,
        typer.Option(
            help="With --db: postgresql://… of another database, for the data subjects' keys.",
            envvar="CUMULO_SUBJECT_KEYS_DB",
        ),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Deploy the example functions shipped with cumulo.")
    ] = False,
    idle_timeout: Annotated[float, typer.Option(help="Seconds an idle worker lives.")] = 60.0,
    zygote_idle_timeout: Annotated[
        float, typer.Option(help="Seconds a zygote without workers lives.")
    ] = 600.0,
    gateways: Annotated[
        int,
        typer.Option(help="Gateway processes sharing the port (SO_REUSEPORT) and the store."),
    ] = 1,
    watch_changes: Annotated[
        bool,
        typer.Option(
            "--watch-changes",
            hidden=True,  # set by --gateways for each gateway it starts
            help="Follow control changes other gateways on this data dir make.",
        ),
    ] = False,
    reuse_port: Annotated[
        bool,
        typer.Option("--reuse-port", hidden=True, help="Bind the port with SO_REUSEPORT."),
    ] = False,
    quantum_lease: Annotated[
        float,
        typer.Option(
            "--quantum-lease",
            hidden=True,  # tests shorten it; operators have no reason to
            help="Seconds a gateway's hold on a quantum job outlives the gateway.",
            min=1.0,
        ),
    ] = 10.0,
    executor: Annotated[
        str,
        typer.Option(
            "--executor",
            help="Where workers run: local (this machine), ray (the Ray cluster this machine "
            "belongs to) or ray://HOST:PORT (a Ray cluster's GCS address); docs/ray.md.",
        ),
    ] = "local",
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
    ] = CEILINGS.max_memory_mb,
    max_instances: Annotated[
        int, typer.Option(help="Ceiling on a function's max_instances.")
    ] = CEILINGS.max_instances,
    max_concurrency: Annotated[
        int, typer.Option(help="Ceiling on a function's concurrency.")
    ] = CEILINGS.max_concurrency,
    max_timeout_s: Annotated[
        float, typer.Option(help="Ceiling on a function's timeout_s.")
    ] = CEILINGS.max_timeout_s,
    max_pids: Annotated[
        int, typer.Option(help="Processes and threads one version's tree may hold.")
    ] = CEILINGS.max_pids,
    max_image_mb: Annotated[
        int, typer.Option(help="Largest container image a deploy may bring (a bigger one: 400).")
    ] = CEILINGS.max_image_mb,
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
        ("--max-image-mb", max_image_mb),
    ):
        if ceiling <= 0:
            fail(f"{flag} must be positive")
    if max_memory_mb < 16:
        fail("--max-memory-mb must be at least 16")
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
    if gateways < 1:
        fail("--gateways must be at least 1")
    if gateways > 1:
        if port == 0:
            fail("--gateways needs a fixed --port: the gateways share it")
        from cumulo.cli.gateways import supervise

        # The supervisor asks the first gateway over loopback when it listens everywhere.
        local = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
        local = f"[{local}]" if ":" in local else local
        scheme = "https" if tls_cert else "http"
        argv = sys.argv[sys.argv.index("up") + 1 :]
        raise typer.Exit(supervise(argv, gateways, f"{scheme}://{local}:{port}/readyz"))
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
            "max_image_mb": max_image_mb,
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
        watch_changes=watch_changes,
        reuse_port=reuse_port,
        subject_keys_db=subject_keys_db,
        quantum_lease_s=quantum_lease,
        executor=executor,
    )


# ---------------------------------------------------------------- functions
@app.command()
def deploy(
    path: Annotated[Path | None, typer.Argument(help="A .py file or a directory.")] = None,
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
    event_format: Annotated[
        str | None,
        typer.Option(
            help="--handler functions: the event an HTTP request gives them: "
            "apigw-v1, apigw-v2 (default), function-url or raw (the JSON body)."
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            help="A container image: oci-archive:FILE, oci:DIR[:tag], docker-archive:FILE."
        ),
    ] = None,
    namespace: Namespace = "default",
) -> None:
    """Deploy a function: a new immutable version, live unless --no-promote."""
    env_map = parse_kv(env or [], "--env")
    c = client(namespace)
    if image is not None:
        deploy_image(
            c,
            image,
            path,
            name,
            env_map,
            promote,
            namespace,
            memory_mb=memory_mb,
            timeout_s=timeout_s,
            min_instances=min_instances,
            max_instances=max_instances,
            concurrency=concurrency,
            public=public,
            network=network,
            rate_limit=rate_limit,
            max_attempts=max_attempts,
        )
        return
    if path is None:
        fail("give a PATH (a .py file or a directory) or --image")
    assert path is not None
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
                event_format=event_format,
            )
        )
    live = ", ".join(f"v{v}={w}%" for v, w in result["traffic"].items())
    what = "unchanged" if result.get("unchanged") else "deployed"
    sys.stdout.write(
        f"{what} {result['function']} version {result['version']} (live: {live or 'none'})\n"
        f"{c.credentials.url}/fn/{namespace}/{result['function']}\n"
    )


def deploy_image(
    c: Client,
    image: str,
    path: Path | None,
    name: str | None,
    env: dict[str, str],
    promote: bool,
    namespace: str,
    **config: Any,
) -> None:
    """`cumulo deploy --image …` (docs/containers.md)."""
    if path is not None:
        fail("give a PATH or --image, not both")
    if name is None:
        fail("a container function needs --name")
    assert name is not None
    with progress(err, f"deploying {image}: uploading, verifying, unpacking"):
        result = run(lambda: c.deploy_image(image, name=name, env=env, promote=promote, **config))
    live = ", ".join(f"v{v}={w}%" for v, w in result["traffic"].items())
    what = "unchanged" if result.get("unchanged") else "deployed"
    sys.stdout.write(
        f"{what} {result['function']} version {result['version']} (live: {live or 'none'})\n"
        f"{c.credentials.url}/fn/{namespace}/{result['function']}\n"
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
        try:
            raw = Path(data[1:]).read_bytes() if data.startswith("@") else data.encode()
        except OSError as exc:
            fail(f"cannot read {data[1:]}: {exc.strerror or exc}")
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            fail(f"--data is not valid JSON: {exc}")
    c = client(namespace)
    if queued:
        _invoke_async(c, name, payload, wait)
        return
    from cumulo.errors import ApiError

    try:
        response = c.invoke_raw(name, payload)
    except ApiError as exc:
        body = orjson.dumps({"error": {"code": exc.code, "message": exc.message, **exc.details}})
        iid = exc.details.get("invocation_id")
        sys.stderr.write(render.failure(exc.status, body, iid if isinstance(iid, str) else None))
        sys.stderr.write("\n")
        raise typer.Exit(1) from None
    except CumuloError as exc:
        fail(str(exc))
        raise
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
def list_functions(namespace: Namespace = "default", output: Output = "table") -> None:
    """List functions and where their traffic goes."""
    check_output(output)
    functions = run(lambda: client(namespace).functions())
    render.emit(
        output,
        functions,
        ("NAME", "LIVE", "CREATED"),
        lambda f: (
            f["name"],
            ", ".join(f"v{v}={w}%" for v, w in f["traffic"].items()),
            render.when(f.get("created_at")),
        ),
    )


@app.command()
def versions(name: str, namespace: Namespace = "default", output: Output = "table") -> None:
    """List a function's versions."""
    check_output(output)
    result = run(lambda: client(namespace).versions(name))

    def row(v: dict[str, Any]) -> tuple[str, ...]:
        weight = result["traffic"].get(str(v["version"]))
        return (
            str(v["version"]),
            f"{weight}%" if weight else "",
            v["handler"],
            v["bundle_sha256"][:12],
            render.when(v["created_at"]),
        )

    render.emit(
        output, result["versions"], ("VERSION", "TRAFFIC", "HANDLER", "BUNDLE", "CREATED"), row
    )


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
def remove(name: str, namespace: Namespace = "default", yes: Yes = False) -> None:
    """Remove a function with all its versions and state."""
    confirm(f"Remove {name} with all its versions and state?", yes)
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
    if value is None and sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value of {key} (not echoed): ")
    elif value is None or value == "-":
        value = sys.stdin.read().rstrip("\n")
    if not value:
        fail(f"refusing an empty value for secret {key}")
    secret = value
    run(lambda: client(namespace).set_secret(key, secret))
    out.print(f"set secret {key}")


@secrets_app.command("ls")
def secrets_ls(namespace: Namespace = "default", output: Output = "table") -> None:
    """List secret names (never values)."""
    check_output(output)
    found = run(lambda: client(namespace).secrets())
    render.emit(
        output, found, ("NAME", "UPDATED"), lambda s: (s["name"], render.when(s.get("updated_at")))
    )


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
def keys_ls(namespace: Namespace = "default", output: Output = "table") -> None:
    """List API keys (ids and scopes, never the keys)."""
    check_output(output)
    render.emit(
        output,
        run(lambda: client(namespace).api_keys()),
        ("ID", "NAMESPACE", "SCOPES", "NAME", "CREATED", "EXPIRES", "REVOKED"),
        lambda k: (
            k["id"],
            k["namespace"],
            ",".join(k["scopes"]),
            k["name"],
            render.when(k.get("created_at")),
            render.when(k.get("expires_at")) or "never",
            "yes" if k["revoked"] else "no",
        ),
    )


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


# ---------------------------------------------------------------- invocations
invocations_app = typer.Typer(
    rich_markup_mode=None, help="Past and queued invocations: `ls NAME`, `get ID`."
)
app.add_typer(invocations_app, name="invocations")


@invocations_app.command("ls")
def invocations_ls(
    name: str,
    limit: Annotated[int, typer.Option(help="How many recent invocations.")] = 20,
    namespace: Namespace = "default",
    output: Output = "table",
) -> None:
    """A function's recent invocations, newest first."""
    check_output(output)
    found = run(lambda: client(namespace).invocations(name, limit=limit))
    render.emit(
        output,
        found,
        ("ID", "VERSION", "STATUS", "CODE", "START", "DURATION", "WHEN"),
        lambda i: (
            i["id"],
            str(i["version"]),
            str(i["status"]),
            i["code"],
            i["start"],
            f"{i['duration_ms']:.1f} ms",
            render.when(i["started_at"]),
        ),
    )


@invocations_app.command("get")
def invocations_get(
    invocation_id: str, namespace: Namespace = "default", output: Output = "table"
) -> None:
    """One invocation: an async one's status and result, or a past call's record and the
    log lines it wrote (its error with the traceback among them)."""
    check_output(output)
    from cumulo.errors import NotFound

    c = client(namespace)
    try:
        view: dict[str, Any] = c.async_invocation(invocation_id)
    except NotFound:
        view = run(lambda: c.invocation(invocation_id))
        lines = run(lambda: c.logs(view["function"], limit=1000))
        view["logs"] = [line for line in lines if line["invocation_id"] == invocation_id]
    except CumuloError as exc:
        fail(str(exc))
        raise
    if output == "json":
        sys.stdout.write(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    for key, value in view.items():
        if key == "logs":
            continue
        if key.endswith("_at") and isinstance(value, int | float):
            value = render.when(value)
        elif isinstance(value, dict | list):
            value = orjson.dumps(value).decode()
        sys.stdout.write(f"{key + ':':<14}{value}\n")
    for line in view.get("logs", []):
        _print_log(line)


# ---------------------------------------------------------------- contexts
context_app = typer.Typer(
    rich_markup_mode=None, help="List the saved contexts or pick the current one."
)
app.add_typer(context_app, name="context")


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="The platform, e.g. https://cumulo.example.com.")],
    name: Annotated[
        str | None, typer.Option(help="Context name (default: the URL's host).")
    ] = None,
) -> None:
    """Save a platform's URL and API key as a context (the key is read without echo)."""
    from cumulo.cli.wire import WireError, request

    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        fail(f"login takes an http:// or https:// URL, not {url!r}")
    if sys.stdin.isatty():
        import getpass

        key = getpass.getpass("API key (not echoed): ").strip()
    else:
        key = sys.stdin.readline().strip()
    if not key:
        fail("no API key given (type it at the prompt or pipe it on stdin)")
    try:
        # Any scope proves the key: 403 (valid key, no read scope) is a yes, 401 a no.
        reply = request("GET", url, "/v1/namespaces/default/functions", api_key=key, timeout=15)
    except WireError as exc:
        fail(str(exc))
        raise
    if reply.status == 401:
        fail(f"{url} refused the key (401): check it, or create one with `cumulo keys create`")
    if reply.status >= 500 or reply.status not in (200, 403, 404):
        fail(f"{url} answered {reply.status}: is it a cumulo platform?")
    context = name or url.split("://", 1)[1].split("/", 1)[0].replace(":", "-")
    path = profiles.register(context, url, key, make_current=True)
    sys.stdout.write(f"logged in to {url} as context {context} (saved in {path})\n")


@context_app.command("ls")
def context_ls(output: Output = "table") -> None:
    """The saved contexts; * marks the current one."""
    check_output(output)
    try:
        config = profiles.UserConfig.load()
    except profiles.ProfileError as exc:
        fail(str(exc))
        raise
    items = [
        {"name": n, "url": c.get("url", ""), "current": n == config.current}
        for n, c in sorted(config.contexts.items())
    ]
    render.emit(
        output,
        items,
        ("CURRENT", "NAME", "URL"),
        lambda i: ("*" if i["current"] else "", i["name"], i["url"]),
    )


@context_app.command("show")
def context_show(
    field: Annotated[
        str | None, typer.Option(help="Print only this: url, api_key or source.", metavar="FIELD")
    ] = None,
    output: Output = "table",
) -> None:
    """The platform the CLI talks to now, and where that came from; `--field api_key`
    prints the key alone, for scripts (KEY=$(cumulo context show --field api_key))."""
    check_output(output)
    try:
        target = profiles.resolve()
    except profiles.ProfileError as exc:
        fail(str(exc))
        raise
    view = {"url": target.url, "api_key": target.api_key, "source": target.source}
    if field is not None:
        if field not in view:
            fail(f"--field takes url, api_key or source, not {field!r}")
        sys.stdout.write(view[field] + "\n")
        return
    if output == "json":
        sys.stdout.write(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    # The key stays off the screen unless asked for by name.
    sys.stdout.write(f"url:     {target.url}\nsource:  {target.source}\n")


@context_app.command("use")
def context_use(name: str) -> None:
    """Make NAME the current context."""
    try:
        config = profiles.UserConfig.load()
        config.target(name, "not saved")
    except profiles.ProfileError as exc:
        fail(str(exc))
        raise
    config.current = name
    config.save()
    sys.stdout.write(f"current context: {name} ({config.contexts[name]['url']})\n")


# After the core commands, so `cumulo --help` lists them in this order.
register_usage(app)  # `cumulo usage`, `cumulo quota`
register_alerts(app)  # `cumulo alerts`
register_migrate(app)  # `cumulo migrate`
register_export(app)  # `cumulo export k8s`


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
