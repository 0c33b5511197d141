"""Function configuration as plain data, attached to user callables by the decorators."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from cumulo.ai.tensors import tensor_specs
from cumulo.errors import BadRequest
from cumulo.security.ratelimit import Rate

NAME_RE = re.compile(r"^[a-z0-9-]{1,63}$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
ENV_NAME_RE = SECRET_NAME_RE
CATEGORY_RE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")  # consent purposes, data categories

SPEC_ATTR = "__cumulo_function__"

MAX_MEMORY_MB = 64 * 1024
MAX_TIMEOUT_S = 15 * 60
MAX_CONCURRENCY = 1000
MAX_INSTANCES = 1000
MAX_ATTEMPTS = 100
# What an AWS-Lambda-style (`--handler`) function receives for an HTTP request
# (runtime/lambda_events.py). "" until a deploy chooses: apigw-v2 for an `(event, context)`
# handler, raw (the JSON body) otherwise (control/service.py).
EVENT_FORMATS = ("apigw-v1", "apigw-v2", "function-url", "raw")


def validate_name(name: str, what: str = "function name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadRequest(
            f"invalid {what} {name!r}: use 1-63 characters from a-z, 0-9 and '-'",
            code="invalid_name",
        )
    return name


def default_name(python_name: str) -> str:
    """`send_email` deploys as `send-email`: function names are DNS-label-like."""
    return python_name.lower().replace("_", "-")


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    """Limits and scaling of one function; every field has a safe default."""

    memory_mb: int = 256
    timeout_s: float = 30.0
    min_instances: int = 0
    max_instances: int = 10
    concurrency: int = 1
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    network: bool = False  # outbound network from the sandbox (off by default)
    public: bool = False  # anyone may invoke it without a key
    rate_limit: str = ""  # e.g. "100/s" or "6000/m:200" (burst after the colon)
    max_attempts: int = 3  # async invocations and schedules: tries before the dead letters
    requires_consent: str = ""  # privacy: a consent purpose the invocation's subject must hold
    data_categories: tuple[str, ...] = ()  # privacy: records of processing (e.g. "contact")
    # @cumulo.model only (sdk/model.py): dynamic batching, and raw pickle loads allowed.
    batch_max_size: int = 1
    batch_wait_ms: float = 0.0
    trust_pickle: bool = False
    # @cumulo.model's tensor signature for the KServe V2 routes (ai/tensors.py, ai/kserve.py).
    inputs: tuple[dict[str, Any], ...] = ()
    outputs: tuple[dict[str, Any], ...] = ()
    event_format: str = ""  # Lambda handlers only: one of EVENT_FORMATS

    def __post_init__(self) -> None:
        problems = model_config_problems(self.batch_max_size, self.batch_wait_ms, self.trust_pickle)
        for what in ("inputs", "outputs"):
            try:
                object.__setattr__(self, what, tensor_specs(getattr(self, what), what))
            except ValueError as exc:
                problems.append(str(exc))
        if not isinstance(self.memory_mb, int) or not 16 <= self.memory_mb <= MAX_MEMORY_MB:
            problems.append(f"memory_mb must be an integer from 16 to {MAX_MEMORY_MB}")
        if (
            not isinstance(self.timeout_s, int | float)
            or isinstance(self.timeout_s, bool)
            or not 0 < self.timeout_s <= MAX_TIMEOUT_S
        ):
            problems.append(f"timeout_s must be a number above 0 and at most {MAX_TIMEOUT_S}")
        if not isinstance(self.max_instances, int) or not 1 <= self.max_instances <= MAX_INSTANCES:
            problems.append(f"max_instances must be an integer from 1 to {MAX_INSTANCES}")
        if not isinstance(self.min_instances, int) or not self.min_instances >= 0:
            problems.append("min_instances must be a non-negative integer")
        elif isinstance(self.max_instances, int) and self.min_instances > self.max_instances:
            problems.append("min_instances must not exceed max_instances")
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= MAX_CONCURRENCY:
            problems.append(f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}")
        if not isinstance(self.env, dict) or not all(
            isinstance(k, str) and ENV_NAME_RE.fullmatch(k) and isinstance(v, str)
            for k, v in self.env.items()
        ):
            problems.append("env must map variable names to string values")
        if not all(isinstance(s, str) and SECRET_NAME_RE.fullmatch(s) for s in self.secrets):
            problems.append("secrets must be a list of secret names")
        if not isinstance(self.network, bool) or not isinstance(self.public, bool):
            problems.append("network and public must be true or false")
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or not 1 <= self.max_attempts <= MAX_ATTEMPTS
        ):
            problems.append(f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS}")
        if not isinstance(self.requires_consent, str) or not (
            self.requires_consent == "" or CATEGORY_RE.fullmatch(self.requires_consent)
        ):
            problems.append("requires_consent must be a purpose name like 'marketing'")
        if not all(isinstance(c, str) and CATEGORY_RE.fullmatch(c) for c in self.data_categories):
            problems.append("data_categories must be a list of names like 'contact'")
        if self.event_format not in ("", *EVENT_FORMATS):
            problems.append(f"event_format must be one of {', '.join(EVENT_FORMATS)}")
        if self.rate_limit:
            try:
                Rate.parse(self.rate_limit)
            except (ValueError, AttributeError) as exc:
                problems.append(str(exc))
        if problems:
            raise BadRequest("; ".join(problems), code="invalid_config")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["secrets"] = list(self.secrets)
        data["data_categories"] = list(self.data_categories)
        data["inputs"] = [dict(t) for t in self.inputs]
        data["outputs"] = [dict(t) for t in self.outputs]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FunctionConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "secrets" in known:
            known["secrets"] = tuple(known["secrets"] or ())
        if "env" in known:
            known["env"] = dict(known["env"] or {})
        if "data_categories" in known:
            known["data_categories"] = tuple(known["data_categories"] or ())
        for what in ("inputs", "outputs"):
            if isinstance(known.get(what), list):
                known[what] = tuple(known[what])
        try:
            return cls(**known)
        except TypeError as exc:
            raise BadRequest(f"invalid function config: {exc}", code="invalid_config") from exc

    def merged(self, overrides: dict[str, Any]) -> FunctionConfig:
        """Deploy-time flags override decorator values; env maps are merged."""
        data = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "env":
                data["env"] = {**data["env"], **value}
            else:
                data[key] = value
        return FunctionConfig.from_dict(data)


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """What `@cumulo.function` (or `cumulo.app`) records on the callable."""

    name: str | None
    config: FunctionConfig
    asgi: bool = False  # an ASGI application served whole: every sub-path reaches it
    model: bool = False  # a @cumulo.model class: load() in the zygote, predict(batch)


MAX_BATCH_SIZE = 1024
MAX_BATCH_WAIT_MS = 1000


def model_config_problems(size: object, wait_ms: object, trust_pickle: object) -> list[str]:
    problems = []
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BATCH_SIZE:
        problems.append(f"batch_max_size must be an integer from 1 to {MAX_BATCH_SIZE}")
    if (
        not isinstance(wait_ms, int | float)
        or isinstance(wait_ms, bool)
        or not 0 <= wait_ms <= MAX_BATCH_WAIT_MS
    ):
        problems.append(f"batch_wait_ms must be a number from 0 to {MAX_BATCH_WAIT_MS}")
    if not isinstance(trust_pickle, bool):
        problems.append("trust_pickle must be true or false")
    return problems
