"""The whole platform in one object: store, executor, control plane, auth, recorder.

`cumulo up` builds one and serves `gateway.app.create_app(platform)` with uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from cumulo.ai.batching import ModelBatching
from cumulo.ai.insight_settings import InsightSettings
from cumulo.ai.insights import Insights
from cumulo.config import Credentials, load_credentials, write_credentials
from cumulo.control.bundle import BundleStore, UnpackLimits
from cumulo.control.service import ControlPlane, DeployRequest
from cumulo.errors import ApiError, BadRequest, ConfigError, NotFound, TooManyRequests
from cumulo.events.service import EventsService
from cumulo.gateway.audit import principal_key_id, record_denial
from cumulo.gateway.calls import ServiceCaller
from cumulo.gateway.storage import Storage, postgres_storage, sqlite_storage
from cumulo.metering.service import invocation_usage, make_metering
from cumulo.observability.live_stats import LiveStats
from cumulo.observability.logs import Recorder
from cumulo.observability.metrics import Metrics
from cumulo.observability.outcomes import Denial, DenialObserver, Outcome, OutcomeObserver
from cumulo.observability.tracing import TracingSettings, make_tracing
from cumulo.privacy.data import Rooms
from cumulo.privacy.service import PrivacyService, PrivacySettings
from cumulo.runtime import sandbox
from cumulo.runtime.executor import LocalExecutor
from cumulo.runtime.executor_api import Executor
from cumulo.runtime.frames import invocation_frame
from cumulo.runtime.pool import InvokeResult
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.ws_session import WsSession
from cumulo.sdk.spec import FunctionConfig
from cumulo.security.audit import ANCHOR_FILE, AuditLog
from cumulo.security.auth import ALL_NAMESPACES, Authenticator
from cumulo.security.crypto import Encryptor, check_master_key, load_master_key
from cumulo.security.keys import KeyHasher, generate_key, key_id
from cumulo.security.ratelimit import ConcurrencyQuota, RateLimiter
from cumulo.security.shared_limits import SharedLimits, new_gateway_id
from cumulo.security.sigv4_keys import SIGV4_NAMESPACE, SigV4Keys
from cumulo.store.base import ApiKeyRecord, LogRecord
from cumulo.store.changes import Change, Subscription
from cumulo.store.control import ControlRepository
from cumulo.store.invocations import InvocationRepository
from cumulo.store.logs import LogRepository
from cumulo.store.secrets import SecretRepository
from cumulo.store.state import StateRepository
from cumulo.tasks import cancel_and_wait

if TYPE_CHECKING:
    from starlette.types import Scope

    from cumulo.quantum.service import QuantumService
    from cumulo.security.jwt import JwtSettings, JwtVerifier

log = logging.getLogger("cumulo")

DEFAULT_NAMESPACE = "default"
OUTCOME_DRAIN_S = 0.05  # observers (metering, live stats, forecasts) lag by at most this
EVENTS_DRAIN_S = 5.0  # on shutdown, running async jobs get this long before they are released


@dataclass(slots=True)
class PlatformOptions:
    data_dir: Path
    url: str = "http://127.0.0.1:8080"
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    demo_dir: Path | None = None
    key_rate: str = ""  # token bucket per API key, e.g. "1000/s:2000"; empty: unlimited
    namespace_concurrency: int = 0  # in-flight invocations per namespace; 0: unlimited
    tls: bool = False
    jwt: JwtSettings | None = None  # accept OIDC bearer tokens besides API keys
    tracing: TracingSettings | None = None  # None: CUMULO_TRACE_EXPORTER, else off
    privacy: PrivacySettings = field(default_factory=PrivacySettings)  # docs/privacy.md
    prewarm: bool = True  # predictive pre-warming (cumulo.ai.prewarm)
    metering: bool = True  # usage, cost and quotas (docs/metering.md); off: --no-metering
    pricing: Path | None = None  # a TOML price table; None: Lambda-like prices
    clock: Callable[[], float] = time.time  # metering's hours and quota months (tests fake it)
    bundle_limits: UnpackLimits = field(default_factory=UnpackLimits)  # what a bundle unpacks to
    # Follow the changes other gateways on the same store make (store/changes.py); off
    # for the embedded default, where this gateway is the only writer.
    watch_changes: bool = False
    # With other gateways: how long a dead gateway's quantum jobs wait before another
    # takes them over.
    quantum_lease_s: float = 10.0
    # A PostgreSQL DSN (`--db postgresql://…`): every room in that database, shared by
    # every gateway on it (which then always follows the others' changes); None: SQLite.
    db: str | None = None
    subject_keys_db: str | None = None  # with `db`: the subject keys' own database
    # A Ray cluster's address (`--executor ray[://HOST:PORT]`, "auto" for `ray`): workers
    # run on its nodes (runtime/ray_executor.py); None: on this machine.
    executor: str | None = None


class Platform:
    def __init__(self, options: PlatformOptions) -> None:
        self.options = options
        data_dir = options.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        # ConfigError, before anything starts, on a malformed CUMULO_MASTER_KEY, a key file
        # open to others, or a master key that does not wrap this database's data keys.
        master = load_master_key(data_dir)
        self.encryptor = Encryptor(master)
        # Every room's repositories on one backend (gateway/storage.py): SQLite files in
        # the data dir by default, or one PostgreSQL database several gateways share.
        if options.db is None:
            check_master_key(data_dir / "cumulo.db", master)
            self.storage: Storage = sqlite_storage(data_dir, self.encryptor)
        else:
            assert options.subject_keys_db is not None  # cli/serve.py requires it
            self.storage = postgres_storage(options.db, options.subject_keys_db, self.encryptor)
        # The embedded store (master rotation runs on it); None on PostgreSQL.
        self.store = self.storage.sqlite
        self.control_repo: ControlRepository = self.storage.control
        self.state_repo: StateRepository = self.storage.state
        self.secret_repo: SecretRepository = self.storage.secrets
        self.audit = AuditLog(
            self.storage.audit, self.encryptor, anchor_path=data_dir / ANCHOR_FILE
        )
        self.bundles = BundleStore(data_dir, options.bundle_limits)
        self.hasher = KeyHasher.from_data_dir(data_dir)
        self.auth = Authenticator(self.hasher)
        # Keys that may sign AWS SigV4 requests (the Lambda Invoke API: gateway/lambda_api.py).
        self.sigv4_keys = SigV4Keys()
        self.jwt: JwtVerifier | None = None
        if options.jwt is not None:
            # PyJWT and its RSA/EC backends cost ~10 MB: loaded only when OIDC is on.
            from cumulo.security.jwt import JwtVerifier

            self.jwt = JwtVerifier(options.jwt)
        self.auth.jwt = self.jwt
        self._jwt_refresher: asyncio.Task[None] | None = None
        # Function logs and invocation records through their seams (same database).
        self.log_repo: LogRepository = self.storage.logs
        self.invocation_repo: InvocationRepository = self.storage.invocations
        self.recorder = Recorder(self.log_repo, self.invocation_repo)
        # Data subjects, consent, retention, redaction: the recorder's guard (docs/privacy.md).
        self.privacy = PrivacyService(
            self.storage.privacy,
            self.storage.subject_keys,
            self.storage.namespace_keys,
            # The job queue is built below: reached through a callable.
            Rooms(self.invocation_repo, self.log_repo, self.control_repo, lambda: self.events.jobs),
            self.audit,
            options.privacy,
        )
        self.recorder.guard = self.privacy
        self.executor: Executor
        if options.executor is not None:
            from cumulo.runtime.ray_executor import RayExecutor

            self.executor = RayExecutor(
                options.runtime, self.handle_rpc, self.handle_log, options.executor
            )
        else:
            self.executor = LocalExecutor(options.runtime, self.handle_rpc, self.handle_log)
        self.control = ControlPlane(
            self.control_repo, self.bundles, self.executor, options.runtime.python
        )
        self.control.bundle_mirror = self.storage.bundles
        self.changes = self.storage.changes
        self.control.changes = self.changes
        self._subscription: Subscription | None = None
        self._change_follower: asyncio.Task[None] | None = None
        self.metrics = Metrics(lambda: list(self.executor.pools.values()))
        self.quota = ConcurrencyQuota(options.namespace_concurrency)
        # ---- Platform-wide rate limits and namespace concurrency (docs/auth.md). Requests
        # are admitted in memory; with a store shared by other gateways a background task
        # exchanges this gateway's usage with theirs every 100 ms (security/shared_limits).
        # Alone (the embedded default) nothing is counted and nothing runs.
        self.key_limiter = RateLimiter()  # per API key, whichever path the key uses
        self.function_limiter = RateLimiter()  # per function with a rate_limit
        self.shared_limits: SharedLimits | None = None
        if self.follows_changes:
            self.shared_limits = SharedLimits(
                self.storage.limits,
                new_gateway_id(),
                {"key": self.key_limiter, "fn": self.function_limiter},
                self.quota,
            )
        # ---- end of shared limits
        self.tracing = make_tracing(options.tracing or TracingSettings.from_env())
        self.events = EventsService(
            self.storage.jobs,
            self.invoke_for_events,
            config_of=self.function_config,
            load_schedules=self.all_schedules,
            load_topics=self.control.all_topics,
            max_event_bytes=options.runtime.max_request_bytes,
            tracing=self.tracing,
        )
        self.control.on_live_change = self.events.set_schedules
        self.control.on_live_topics = self.events.set_topics
        # ctx.call: same-namespace calls through self.invoke, with a breaker per target.
        self.calls = ServiceCaller(
            lambda ns, name: self.control.routes.get(ns, name),
            self.invoke,
            max_body=options.runtime.max_request_bytes,
            tracing=self.tracing,
        )
        # Every finished invocation and every auth denial, for metering and the AI rooms.
        self.outcome_observers: list[OutcomeObserver] = [self.recorder.observe]
        self.recorder.catch_up = self.drain_outcomes
        # Per-second stats for the dashboard's live charts (bounded ring buffers).
        self.live_stats = LiveStats()
        self.outcome_observers.append(self.live_stats.observe)
        self.denial_observers: list[DenialObserver] = []
        # Outcomes wait here for `drain_outcomes`: observers run in batches, off the
        # request's path (measured: ~13% of warm throughput when called per request).
        self._outcomes: list[Outcome] = []
        self._outcome_drainer: asyncio.Task[None] | None = None
        # Traffic forecasts, pre-warming and anomaly alerts (observers + a sidecar process).
        self.insights = Insights(
            self,
            InsightSettings.from_env(prewarm=options.prewarm),
            alerts=self.storage.alerts,
            all_keys=self.control_repo.all_keys,
        )
        self.metering = make_metering(self.storage.metering, options) if options.metering else None
        self.privacy.changes = self.changes
        if self.metering is not None:
            self.metering.changes = self.changes
        if self.metering is not None:
            self.outcome_observers.append(self.metering.observe)
            self.metering.catch_up = self.drain_outcomes
        # @cumulo.model versions: concurrent requests become one batched invocation.
        self.models = ModelBatching(self.invoke, self.metrics.registry.register)
        self.started_at = time.time()
        self.ready = False
        self.new_admin_key: str | None = None
        self.demo_functions: list[str] = []
        self.announce: Callable[[Platform], None] | None = None
        self._quantum: asyncio.Task[QuantumService] | None = None

    @property
    def follows_changes(self) -> bool:
        """Whether other gateways write this store: their changes are followed here."""
        return self.options.watch_changes or self.storage.shared

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        sandbox.check(self.options.runtime)
        await self.storage.open(self.encryptor)
        if self.follows_changes:
            # Before any cache is filled: no change can fall between the two.
            self._subscription = await self.changes.subscribe()
            log.info("following the changes other gateways make to this store")
        await self._ensure_admin_key()
        await self.reload_keys()
        if self.jwt is not None:
            await self.jwt.refresh()  # ConfigError when the JWKS cannot be read: no start
            self._jwt_refresher = asyncio.get_running_loop().create_task(self.jwt.run())
        await self.recorder.start()
        self._outcome_drainer = asyncio.get_running_loop().create_task(
            self._drain_outcomes_forever()
        )
        await self.privacy.start()
        if self.metering is not None:
            await self.metering.start()
        await self.audit.start()
        await self.executor.start()
        await self.insights.start()
        await self.control.warm_all()
        await self.control.collect_bundles()  # leftovers of a crash or of removed functions
        await self.events.start()
        if await self.storage.has_quantum_jobs():
            # Jobs from before a restart resume; a platform that never ran one stays lean.
            self.quantum_service_task()
        if self.options.demo_dir is not None:
            self.demo_functions = await self.deploy_demo(self.options.demo_dir)
        if self._subscription is not None:
            self._change_follower = asyncio.get_running_loop().create_task(
                self._follow_changes(self._subscription)
            )
        if self.shared_limits is not None:
            self.shared_limits.start()
        self.ready = True
        if self.announce is not None:
            self.announce(self)

    async def stop(self) -> None:
        self.ready = False
        await cancel_and_wait(self._jwt_refresher)
        await cancel_and_wait(self._change_follower)
        if self._subscription is not None:
            await self._subscription.aclose()
        await self.events.stop(drain_s=EVENTS_DRAIN_S)
        if self._quantum is not None:
            with contextlib.suppress(BaseException):
                await (await self._quantum).stop()
        await self.insights.stop()
        await self.executor.stop()
        if self.shared_limits is not None:
            await self.shared_limits.stop()  # withdraws this gateway's in-flight counts
        await cancel_and_wait(self._outcome_drainer)
        self.drain_outcomes()  # every finished invocation reaches its observers
        if self.metering is not None:
            await self.metering.stop()  # every finished invocation is metered by now
        await self.privacy.stop()
        await self.recorder.stop()
        await self.audit.stop()
        await self.storage.close()
        self.tracing.shutdown()

    # ------------------------------------------------------------ invocations
    async def invoke(
        self,
        spec: VersionSpec,
        frame: dict[str, Any],
        *,
        key_id: str | None = None,
        subject: str | None = None,
    ) -> InvokeResult:
        """Run one invocation (HTTP, async or scheduled): quota, metrics and its record."""
        namespace, name = spec.namespace, spec.function
        self._admit(spec, frame, subject)
        started = time.time()
        t0 = time.perf_counter()
        status, code, cold = 500, "internal", False
        body_out: bytes | None = None
        traced = self.tracing.begin(spec, frame) if self.tracing.enabled else None
        try:
            result = await self.executor.invoke(
                spec, frame, traced.timings if traced is not None else None
            )
            cold = result.cold
            returned = result.http[0] if result.http else 200
            if not 100 <= returned <= 599:
                raise ApiError(
                    f"the function returned an invalid HTTP status {returned}",
                    code="bad_status",
                    status=502,
                )
            status, code = returned, "ok"
            body_out = result.body if result.http is None else result.http[2]
            return result
        except ApiError as exc:
            status, code = exc.status, exc.code
            raise
        finally:
            self.quota.leave(namespace)
            if traced is not None:
                self.tracing.end(traced, status, code, cold)
            elapsed = time.perf_counter() - t0
            self.metrics.observe(namespace, name, status, elapsed, cold)
            # The invocation's record, metering, live stats and forecasts all start from
            # this one object, handed to them in batches (drain_outcomes).
            cpu_s, rss_mb, bytes_in, bytes_out = invocation_usage(frame, body_out)
            self._record(
                spec, frame["id"], status, code, cold, started, elapsed, key_id, subject,
                (cpu_s, rss_mb, bytes_in, bytes_out),
            )  # fmt: skip

    async def websocket(
        self,
        spec: VersionSpec,
        frame: dict[str, Any],
        bridge: Callable[[WsSession], Awaitable[tuple[int, str]]],
        *,
        key_id: str | None = None,
        subject: str | None = None,
    ) -> None:
        """One WebSocket connection (`frame`: its ws_open) as one invocation: the same
        privacy, quota and concurrency as an HTTP invoke, for the connection's whole life;
        `bridge` relays it and returns its (status, code). Metered with its duration."""
        namespace, name = spec.namespace, spec.function
        self._admit(spec, frame, subject)
        started = time.time()
        t0 = time.perf_counter()
        status, code = 500, "internal"
        session: WsSession | None = None
        try:
            session = await self.executor.connect(spec, frame)
            status, code = await bridge(session)
        except ApiError as exc:
            status, code = exc.status, exc.code
            raise
        finally:
            self.quota.leave(namespace)
            elapsed = time.perf_counter() - t0
            cold = session is not None and session.cold
            self.metrics.observe(namespace, name, status, elapsed, cold)
            usage = session.end.get("u") if session is not None else None
            cpu_s, rss_mb, _, _ = invocation_usage({"usage": usage}, None)
            moved = (session.bytes_in, session.bytes_out) if session is not None else (0, 0)
            self._record(
                spec, frame["id"], status, code, cold, started, elapsed, key_id, subject,
                (cpu_s, rss_mb, *moved),
            )  # fmt: skip

    def _admit(self, spec: VersionSpec, frame: dict[str, Any], subject: str | None) -> None:
        """What every invocation passes first: consent (403 consent_required; sets
        ctx.subject), the monthly quota (429 quota_exceeded), the namespace's in-flight
        quota (429; the caller must `quota.leave`)."""
        namespace = spec.namespace
        if subject is not None or spec.config.requires_consent:
            self.privacy.enter(spec, frame, subject)
        if self.metering is not None:
            self.metering.admit(namespace)
        if not self.quota.enter(namespace):
            raise TooManyRequests(
                f"namespace {namespace!r} has {self.quota.limit} invocations in flight, its quota",
                code="namespace_concurrency",
            )

    def _record(
        self,
        spec: VersionSpec,
        invocation_id: str,
        status: int,
        code: str,
        cold: bool,
        started: float,
        elapsed: float,
        key_id: str | None,
        subject: str | None,
        usage: tuple[float, float, int, int],
    ) -> None:
        """The invocation's one Outcome: its record, metering, live stats and forecasts
        all start from it, handed to them in batches (drain_outcomes)."""
        cpu_s, rss_mb, bytes_in, bytes_out = usage
        self._outcomes.append(
            Outcome(
                id=invocation_id,
                namespace=spec.namespace,
                function=spec.function,
                version=spec.version,
                status=status,
                code=code,
                cold=cold,
                started_at=started,
                duration_s=elapsed,
                key_id=key_id,
                subject=subject,
                cpu_s=cpu_s,
                peak_rss_mb=rss_mb,
                memory_mb=spec.config.memory_mb,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
            )
        )

    def drain_outcomes(self) -> None:
        """Hand every buffered outcome to every observer, observer by observer (each one's
        code and tables stay hot in the cache for the whole batch)."""
        batch, self._outcomes = self._outcomes, []
        if batch:
            for observe in self.outcome_observers:
                for outcome in batch:
                    observe(outcome)

    async def _drain_outcomes_forever(self) -> None:
        while True:
            await asyncio.sleep(OUTCOME_DRAIN_S)
            try:
                self.drain_outcomes()
            except Exception:
                log.exception("an outcome observer failed")

    def denied(self, scope: Scope, status: int) -> None:
        """A 401/403 at the edge: into the audit log and to every denial observer."""
        record_denial(self.audit, scope, status)
        if self.denial_observers:
            client = scope.get("client")
            denial = Denial(
                key_id=principal_key_id(scope),
                source=client[0] if client else None,
                path=scope.get("path", ""),
                status=status,
                at=time.time(),
            )
            for observe in self.denial_observers:
                observe(denial)

    async def invoke_for_events(
        self, namespace: str, name: str, body: bytes, invocation_id: str
    ) -> tuple[int, bytes]:
        """The events service's way in: the job id is the invocation id the function sees."""
        route = await self.control.routes.get(namespace, name)
        if route is None:
            raise NotFound(f"function {name!r} not found", code="function_not_found")
        spec = route.pick()
        subject = None
        if self.privacy.is_subject_job(body):  # sealed to its data subject at enqueue
            subject, body = await self.privacy.open_job(namespace, name, body)
        frame = invocation_frame(invocation_id, spec.kind, body=body)
        result = await self.invoke(spec, frame, subject=subject)
        status, out = (result.http[0], result.http[2]) if result.http else (200, result.body or b"")
        if subject is not None:  # the stored result is the subject's too
            out = await self.privacy.seal_job(namespace, name, subject, out)
        return status, out

    async def function_exists(self, namespace: str, name: str) -> bool:
        return await self.control.routes.get(namespace, name) is not None

    async def function_config(self, namespace: str, name: str) -> FunctionConfig | None:
        route = await self.control.routes.get(namespace, name)
        return max(route.specs, key=lambda s: s.version).config if route else None

    async def all_schedules(self) -> list[tuple[str, str, list[str]]]:
        return await self.control.all_schedules()

    # ------------------------------------------------------------ quantum
    @property
    def quantum_dir(self) -> Path:
        return self.options.data_dir / "quantum"

    def quantum_service_task(self) -> asyncio.Task[QuantumService]:
        if self._quantum is None:
            self._quantum = asyncio.get_running_loop().create_task(self._start_quantum())
        return self._quantum

    def quantum_counts(self) -> dict[str, int] | None:
        """Unfinished quantum jobs by state, or None while the service has not started
        (it is started on first use: asking must not load Qiskit)."""
        task = self._quantum
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result().state_counts()

    async def quantum_service(self) -> QuantumService:
        """The quantum job service, started on first use (it loads Qiskit: ~100 MB)."""
        task = self.quantum_service_task()
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and self._quantum is task:
                self._quantum = None
            raise

    async def _start_quantum(self) -> QuantumService:
        from cumulo.quantum.service import QuantumService

        # Several gateways on one store: each job runs on the one holding its lease.
        lease_s = self.options.quantum_lease_s if self.follows_changes else None
        service = QuantumService(self.storage.quantum(), lease_s=lease_s)
        await service.start()
        return service

    async def _ensure_admin_key(self) -> None:
        keys = await self.control_repo.all_keys()
        if any("admin" in k.scopes and k.revoked_at is None for k in keys):
            self._refresh_credentials_url()
            return
        key = generate_key()
        record = ApiKeyRecord(
            id=key_id(key),
            namespace=ALL_NAMESPACES,
            name="admin",
            scopes=("admin",),
            created_at=time.time(),
            expires_at=None,
            revoked_at=None,
            key_hash=self.hasher.hash(key),
        )
        await self.control_repo.insert_key(record)
        await self.keep_signing_secret(record.id, key)
        write_credentials(self.options.data_dir, Credentials(self.options.url, key))
        self.new_admin_key = key

    def _refresh_credentials_url(self) -> None:
        """A restart may listen elsewhere: keep the saved key, point the CLI at the new URL."""
        try:
            saved = load_credentials(self.options.data_dir, use_env=False)
        except ConfigError:
            return  # never written, or deleted by the operator: nothing to refresh
        if saved.url != self.options.url:
            write_credentials(self.options.data_dir, Credentials(self.options.url, saved.api_key))

    async def reload_keys(self) -> None:
        records = await self.control_repo.all_keys()
        self.auth.load(records)
        live = [r.id for r in records if r.revoked_at is None]
        try:
            secrets = await self.secret_repo.values(SIGV4_NAMESPACE, live)
        except Exception:
            # Bearer keys must not stop working because SigV4 secrets cannot be read:
            # the Lambda API then refuses every signature until the next reload.
            log.exception("the SigV4 secrets could not be loaded")
            secrets = {}
        self.sigv4_keys.load(records, secrets)

    async def keep_signing_secret(self, key_id: str, key: str) -> None:
        """A new key's SigV4 secret (the key itself), sealed at rest (security/sigv4_keys.py)."""
        await self.secret_repo.set(SIGV4_NAMESPACE, key_id, key.encode(), time.time())

    async def forget_signing_secret(self, key_id: str) -> None:
        await self.secret_repo.delete(SIGV4_NAMESPACE, key_id)

    async def keys_changed(self) -> None:
        """After a key was created or revoked here: here at once, elsewhere by the feed."""
        await self.reload_keys()
        await self.changes.publish(Change("keys"))

    async def _follow_changes(self, subscription: Subscription) -> None:
        async for change in subscription:
            try:
                await self.apply_change(change)
            except Exception:  # a store hiccup must not end following: the next RESYNC mends
                log.exception("could not apply %s from another gateway", change)

    async def apply_change(self, change: Change) -> None:
        """What another gateway changed, followed here (store/changes.py)."""
        if change.topic == "function":
            await self.control.apply_remote(change.namespace, change.name)
        elif change.topic == "keys":
            await self.reload_keys()
        elif change.topic == "quota" and self.metering is not None:
            await self.metering.reload_quotas()
        elif change.topic == "privacy":
            await self.privacy.reload()
        elif change.topic == "resync":
            await self.reload_keys()
            await self.privacy.reload()
            if self.metering is not None:
                await self.metering.reload_quotas()
            await self.control.resync()

    async def deploy_demo(self, demo_dir: Path) -> list[str]:
        """Deploy every @cumulo.function in each example file (one bundle per file).

        Only functions the demo created are ever touched again: `<data-dir>/demo.json`
        records each one with the version the demo made; a function of that name that the
        demo did not create, or that has a newer version since, is left as it is. An
        unchanged example redeploys to the same version (deploys are idempotent)."""
        from cumulo.control.bundle import pack

        ledger_path = self.options.data_dir / "demo.json"
        try:
            ledger: dict[str, int] = dict(orjson.loads(ledger_path.read_bytes()))
        except (FileNotFoundError, orjson.JSONDecodeError, TypeError, ValueError):
            ledger = {}
        deployed = []
        for path in sorted(demo_dir.glob("*.py")):  # noqa: ASYNC240 - once, at start-up
            bundle = pack(path)
            try:
                handlers = await self.control._validate(
                    self.bundles.add(bundle)[1], path.stem, None
                )
                for handler in handlers:
                    name = handler["name"]
                    versions = await self.control_repo.list_versions(DEFAULT_NAMESPACE, name)
                    newest = max((v.version for v in versions), default=None)
                    if newest is not None and ledger.get(name) != newest:
                        log.info("demo %s left alone: the function is not the demo's", name)
                        continue
                    record = await self.control.deploy(
                        DeployRequest(
                            namespace=DEFAULT_NAMESPACE,
                            bundle=bundle,
                            handler=f"{path.stem}.{handler['attr']}",
                            name=name,
                        )
                    )
                    ledger[name] = record.version
                    deployed.append(record.function)
            except BadRequest as exc:
                log.warning("demo %s skipped: %s", path.name, exc.message)
        ledger_path.write_bytes(orjson.dumps(ledger))
        return deployed

    # ------------------------------------------------------------ worker requests
    async def handle_rpc(self, spec: VersionSpec, invocation_id: str, op: str, args: Any) -> Any:
        """State and secrets for a worker, scoped to the worker's own function."""
        if not isinstance(args, dict):
            raise BadRequest("rpc arguments must be a map")
        ns, fn, state = spec.namespace, spec.function, self.state_repo
        now = time.time()
        if op == "state.get":
            item = await state.get(ns, fn, _key(args))
            if item is None:
                return None
            return {"value": orjson.loads(item.value), "version": item.version}
        if op == "state.put":
            value = _encode_value(args.get("value"))
            ok, version = await state.put(ns, fn, _key(args), value, _expected(args), now)
            return {"version": version} if ok else {"conflict": True, "version": version}
        if op == "state.delete":
            ok, version = await state.delete(ns, fn, _key(args), _expected(args))
            if not ok and _expected(args) is not None and _expected(args) != version:
                return {"conflict": True, "version": version}
            return ok
        if op == "state.incr":
            by = args.get("by", 1)
            if not isinstance(by, int) or isinstance(by, bool):
                raise BadRequest("incr takes an integer")
            try:
                total, _ = await state.incr(ns, fn, _key(args), by, now)
            except (ValueError, TypeError) as exc:
                raise BadRequest(f"state key {args['key']!r} does not hold an integer") from exc
            return total
        if op == "state.list":
            prefix = args.get("prefix", "")
            limit = args.get("limit", 1000)
            if not isinstance(prefix, str) or not isinstance(limit, int) or not 0 < limit <= 10000:
                raise BadRequest("list takes a string prefix and a limit from 1 to 10000")
            return await state.list_keys(ns, fn, prefix, limit)
        if op.startswith("ai."):
            from cumulo.ai.rpc import handle_ai_call

            return await handle_ai_call(self, ns, op, args)
        if op.startswith("privacy."):
            return await self.privacy.handle_rpc(spec, op, args)
        if op.startswith("quantum."):
            from cumulo.quantum.sdk import handle_sdk_call

            return await handle_sdk_call(await self.quantum_service(), ns, op, args)
        if op == "call":
            return await self.calls.handle(spec, invocation_id, args)
        if op == "events.publish":
            return await self.events.publish_from_function(ns, fn, args)
        if op == "secrets.get":
            names = [n for n in args.get("names", []) if n in spec.config.secrets]
            values = await self.secret_repo.values(ns, names)
            return {k: v.decode() for k, v in values.items()}
        raise BadRequest(f"unknown operation {op!r}")

    def handle_log(
        self,
        spec: VersionSpec,
        invocation_id: str,
        level: str,
        message: str,
        fields: dict[str, Any],
        ts: float,
    ) -> None:
        self.recorder.log(
            LogRecord(
                namespace=spec.namespace,
                function=spec.function,
                version=spec.version,
                invocation_id=invocation_id,
                ts=ts,
                level=level,
                message=message,
                fields=fields,
            )
        )


MAX_STATE_VALUE = 1024 * 1024


def _key(args: dict[str, Any]) -> str:
    key = args.get("key")
    if not isinstance(key, str) or not 0 < len(key) <= 512:
        raise BadRequest("state keys are non-empty strings of at most 512 characters")
    return key


def _expected(args: dict[str, Any]) -> int | None:
    expected = args.get("expected_version")
    if expected is not None and (not isinstance(expected, int) or expected < 0):
        raise BadRequest("expected_version must be a non-negative integer")
    return expected


def _encode_value(value: Any) -> bytes:
    try:
        data = orjson.dumps(value)
    except TypeError as exc:
        raise BadRequest(f"state values must be JSON-serializable: {exc}") from exc
    if len(data) > MAX_STATE_VALUE:
        raise BadRequest(f"state values are limited to {MAX_STATE_VALUE} bytes")
    return data
