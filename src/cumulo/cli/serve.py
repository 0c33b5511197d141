"""`cumulo up`: build the platform and serve it with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import uvicorn

from cumulo.cli.demo import examples_dir
from cumulo.control.bundle import MAX_FILE_BYTES, MiB, UnpackLimits
from cumulo.errors import CumuloError
from cumulo.gateway.app import create_app
from cumulo.gateway.edge import EdgeLimits, edge_protocol, fit_to_fds, raise_fd_limit
from cumulo.gateway.platform import Platform, PlatformOptions
from cumulo.gateway.storage import (
    check_database,
    parse_db_url,
    redact_dsn,
    require_subject_keys_db,
)
from cumulo.observability.tracing import TracingSettings
from cumulo.privacy.service import PrivacySettings
from cumulo.runtime import sandbox
from cumulo.runtime.ray_executor import join_ray_cluster, parse_executor
from cumulo.runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from cumulo.security.jwt import JwtSettings


def serve(
    *,
    host: str,
    port: int,
    data_dir: Path,
    db: str | None,
    demo: bool,
    idle_timeout: float,
    zygote_idle_timeout: float,
    queue_size: int,
    max_body_bytes: int,
    grace: float,
    isolation: str = "auto",
    ceilings: dict[str, Any] | None = None,
    key_rate: str = "",
    namespace_concurrency: int = 0,
    privacy: PrivacySettings | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    jwt: tuple[str | None, str | None, str, str] | None = None,
    trace_exporter: str | None = None,
    trace_endpoint: str | None = None,
    metering: bool = True,
    pricing: Path | None = None,
    prewarm: bool = True,
    bundle_limits: tuple[int, int] = (256, 10_000),  # (unpacked MB, files)
    edge: EdgeLimits | None = None,
    watch_changes: bool = False,
    reuse_port: bool = False,
    subject_keys_db: str | None = None,
    quantum_lease_s: float = 10.0,
    executor: str = "local",
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Qiskit (and stevedore, its plugin loader) log every transpiler pass at INFO.
    for noisy in ("qiskit", "stevedore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    url_host = f"[{host}]" if ":" in host else host
    scheme = "https" if tls_cert else "http"
    try:
        jwt_settings = _jwt_settings(jwt)
        tracing = None  # None: CUMULO_TRACE_EXPORTER / CUMULO_TRACE_ENDPOINT decide
        if trace_exporter or trace_endpoint:
            tracing = TracingSettings(exporter=trace_exporter or "otlp", endpoint=trace_endpoint)
    except CumuloError as exc:
        _refuse(exc)
    try:
        dsn = parse_db_url(db, data_dir)
        keys_dsn = require_subject_keys_db(dsn, subject_keys_db)
        ray_address = parse_executor(executor)
    except CumuloError as exc:
        _refuse(exc)
    options = PlatformOptions(
        db=dsn,
        subject_keys_db=keys_dsn,
        data_dir=data_dir.resolve(),
        url=f"{scheme}://{url_host}:{port}",
        key_rate=key_rate,
        namespace_concurrency=namespace_concurrency,
        privacy=privacy or PrivacySettings(),
        tls=tls_cert is not None,
        jwt=jwt_settings,
        tracing=tracing,
        prewarm=prewarm,
        metering=metering,
        pricing=pricing.resolve() if pricing is not None else None,
        runtime=RuntimeSettings(
            idle_timeout_s=idle_timeout,
            zygote_idle_timeout_s=zygote_idle_timeout,
            queue_size=queue_size,
            max_request_bytes=max_body_bytes,
            max_response_bytes=max_body_bytes,
            reap_interval_s=min(0.5, max(0.05, idle_timeout / 4)),
            isolation=isolation,
            data_dir=data_dir.resolve(),
            **(ceilings or {}),
        ),
        demo_dir=examples_dir() if demo else None,
        watch_changes=watch_changes,
        quantum_lease_s=quantum_lease_s,
        executor=ray_address,
        bundle_limits=UnpackLimits(
            max_bytes=bundle_limits[0] * MiB,
            max_files=bundle_limits[1],
            max_file_bytes=min(MAX_FILE_BYTES, bundle_limits[0] * MiB),
        ),
    )
    try:
        # Configuration problems (sandbox, master key, JWKS file) are one line, not a trace.
        sandbox.check(options.runtime)
        platform = Platform(options)
        if dsn is not None:
            # A wrong URL, an unreachable server, a bad password or the wrong master key:
            # one line, exit 1, before anything starts (the schema is migrated here, once).
            asyncio.run(check_database(dsn, platform.encryptor.master))
        if ray_address is not None:
            join_ray_cluster(ray_address)  # Ray unreachable: one line, exit 1
    except CumuloError as exc:
        _refuse(exc)
    platform.announce = _announce
    # Connections are capped below the fd limit, so a flood never starves the platform's
    # own sockets and pipes; see docs/auth.md "HTTP edge limits".
    limits = fit_to_fds(edge or EdgeLimits(), raise_fd_limit())
    config = uvicorn.Config(
        create_app(platform),
        host=host,
        port=port,
        loop="uvloop",
        http=edge_protocol(limits),
        # WebSockets to cumulo.app functions (gateway/websocket.py): a message over the
        # body limit closes the connection with 1009.
        ws="websockets-sansio",
        ws_max_size=max_body_bytes,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(grace) or None,
        server_header=False,
        proxy_headers=False,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
    )
    server = uvicorn.Server(config)
    # uvicorn drains, restores these handlers, then re-raises the signal it caught: a
    # drained SIGTERM is a clean stop (exit 0), Ctrl-C exits 130 without a traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    # --gateways N: each gateway binds the port itself; the kernel spreads connections.
    server.run(sockets=[_reuse_port_socket(host, port)] if reuse_port else None)
    if not server.started:
        sys.exit(1)


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        _refuse(OSError(f"cannot listen on {host}:{port}: {exc.strerror}"))
    sock.set_inheritable(False)
    return sock


def _refuse(exc: Exception) -> NoReturn:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)


def _jwt_settings(jwt: tuple[str | None, str | None, str, str] | None) -> JwtSettings | None:
    if jwt is None:
        return None
    from cumulo.security.jwt import JwtSettings

    issuer, audience, jwks, namespace_claim = jwt
    return JwtSettings(
        issuer=issuer or "", audience=audience or "", jwks=jwks, namespace_claim=namespace_claim
    )


def _announce(platform: Platform) -> None:
    options = platform.options
    where = f"data in {options.data_dir}"
    if options.db is not None:
        where = f"data in PostgreSQL {redact_dsn(options.db)}, local files in {options.data_dir}"
    lines = [f"cumulo is up at {options.url}  ({where})"]
    if platform.new_admin_key:
        saved = options.data_dir / "credentials.json"
        # A terminal is read and gone; a redirected stdout is a log file that outlives the
        # key's secrecy (and may be readable by others): it gets only where the key is.
        if sys.stdout.isatty():
            lines.append(f"admin API key (shown once): {platform.new_admin_key}")
            lines.append(f"saved for the CLI in {saved}")
        else:
            lines.append(f"admin API key saved in {saved} (mode 0600)")
        lines.append(_register_context(options.url, platform.new_admin_key))
    if platform.demo_functions:
        lines.append("demo functions: " + ", ".join(platform.demo_functions))
    lines.append(f"dashboard: {options.url}/ui/  (log in with an API key)")
    print("\n".join(lines), flush=True)


def _register_context(url: str, key: str) -> str:
    """The new admin key also becomes a context in the per-user config of whoever runs
    `cumulo up`, so the CLI finds this platform from any directory."""
    from cumulo.cli.profiles import context_name_for, register

    name = context_name_for(url)
    try:
        path = register(name, url, key, make_current=False)
    except OSError as exc:
        return f"could not save context {name}: {exc}"
    return f"and as context {name} in {path} (pick it with `cumulo context use {name}`)"
