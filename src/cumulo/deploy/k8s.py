"""Kubernetes manifests for `cumulo export k8s`, built as plain data (dicts) and written as
YAML: the whole platform (gateways on an external PostgreSQL) and one function image as a
Knative Service or a Deployment+Service+HPA. See docs/kubernetes.md.

Everything here is a pure function of its inputs (no clock, no randomness, sorted keys), so
the same inputs give the same bytes and a regenerated directory diffs cleanly in git."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from cumulo import __version__

Manifest = dict[str, Any]

# A fixed uid/gid of no account in the image: `runAsNonRoot` can only be checked by the
# kubelet against a numeric uid, and a fixed one keeps emptyDir ownership predictable.
RUN_AS = 10001
GATEWAY_PORT = 8080
FUNCTION_PORT = 8080  # Knative's default $PORT; the Deployment variant sets PORT to it
DATA_MOUNT = "/var/lib/cumulo"
# A directory inside the emptyDir, not the mount point itself: the platform creates its data
# dir and chmods it 0700, which only its owner may do (the mount point belongs to root).
DATA_DIR = f"{DATA_MOUNT}/data"
PLACEHOLDER = "REPLACE-ME"
PART_OF = "cumulo"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Knative names revisions NAME-00001 and both must stay within 63 characters.
MAX_NAME = 50
GATEWAY = "cumulo-gateway"


class ExportError(ValueError):
    """Bad input to an export: one line for the CLI."""


@dataclass(frozen=True)
class PlatformSpec:
    image: str = f"cumulo:{__version__}"
    namespace: str = "cumulo"
    replicas: int = 2
    max_replicas: int = 10
    # Names of Kubernetes Secret objects, never their contents.
    db_secret: str = "cumulo-db"  # noqa: S105
    subject_keys_secret: str = "cumulo-subject-keys-db"  # noqa: S105
    master_secret: str = "cumulo-master-key"  # noqa: S105
    cpu: str = "1"
    memory: str = "2Gi"
    grace_s: int = 30

    def check(self) -> None:
        check_image(self.image)
        for flag, value in (
            ("--namespace", self.namespace),
            ("--db-secret", self.db_secret),
            ("--subject-keys-secret", self.subject_keys_secret),
            ("--master-secret", self.master_secret),
        ):
            check_label(flag, value)
        if self.replicas < 1:
            raise ExportError("--replicas must be at least 1")
        if self.max_replicas < self.replicas:
            raise ExportError("--max-replicas must be at least --replicas")
        if len({self.db_secret, self.subject_keys_secret, self.master_secret}) != 3:
            raise ExportError("--db-secret, --subject-keys-secret and --master-secret must differ")


@dataclass(frozen=True)
class FunctionSpec:
    """What a function image needs from a version's config (the platform's API)."""

    name: str  # the cumulo function
    version: int
    image: str
    cumulo_namespace: str = "default"
    memory_mb: int = 256
    timeout_s: float = 30.0
    min_instances: int = 0
    max_instances: int = 10
    concurrency: int = 1
    bundle_sha256: str = ""
    k8s_namespace: str = "cumulo"

    @classmethod
    def from_version(
        cls, name: str, view: Mapping[str, Any], image: str, *, cumulo_namespace: str, k8s_ns: str
    ) -> FunctionSpec:
        """From one entry of GET /v1/namespaces/{ns}/functions/{name}/versions."""
        config = view.get("config") or {}
        try:
            return cls(
                name=name,
                version=int(view["version"]),
                image=image,
                cumulo_namespace=cumulo_namespace,
                memory_mb=int(config.get("memory_mb", 256)),
                timeout_s=float(config.get("timeout_s", 30.0)),
                min_instances=int(config.get("min_instances", 0)),
                max_instances=int(config.get("max_instances", 10)),
                concurrency=int(config.get("concurrency", 1)),
                bundle_sha256=str(view.get("bundle_sha256", "")),
                k8s_namespace=k8s_ns,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"the platform's view of {name} is not a version: {exc}") from None


# ---------------------------------------------------------------- checks
def check_label(flag: str, value: str) -> None:
    if len(value) > 63 or not DNS_LABEL.fullmatch(value):
        raise ExportError(
            f"{flag} takes a DNS label (lowercase letters, digits and -, starting with a "
            f"letter, at most 63), not {value!r}"
        )


def check_image(image: str) -> None:
    # Any reference a registry or a node's image store accepts: no spaces, no shell text.
    if not image or len(image) > 512 or not re.fullmatch(r"[A-Za-z0-9._/:@+-]+", image):
        raise ExportError(f"--image takes an image reference such as repo/name:tag, not {image!r}")


def object_name(function: str) -> str:
    """A function's name as a Kubernetes object name (DNS-1035, short enough for Knative's
    revision suffix); names that do not fit, or that are the gateway's (exported into its
    namespace, the function would replace it), get a stable hash suffix."""
    if len(function) <= MAX_NAME and DNS_LABEL.fullmatch(function) and function != GATEWAY:
        return function
    digest = hashlib.sha256(function.encode()).hexdigest()[:8]
    stem = re.sub(r"-+", "-", function).strip("-")[: MAX_NAME - 12].rstrip("-")
    return f"fn-{stem}-{digest}" if stem else f"fn-{digest}"


# ---------------------------------------------------------------- shared pieces
def labels(component: str, name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": PART_OF,
    }


def selector(component: str, name: str) -> dict[str, str]:
    # A Deployment's selector is immutable: it never carries the version.
    return {"app.kubernetes.io/component": component, "app.kubernetes.io/name": name}


def meta(name: str, component: str, namespace: str, **extra: Any) -> dict[str, Any]:
    # The namespace is in every object, not only in the kustomization, so that
    # `kubectl apply -f DIR` lands where `kubectl apply -k DIR` does.
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(component, name) | {"app.kubernetes.io/version": __version__},
        **extra,
    }


def seccomp() -> dict[str, str]:
    return {"type": "RuntimeDefault"}


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,  # emptyDir volumes group-owned by it
        "seccompProfile": seccomp(),
    }


def container_security() -> dict[str, Any]:
    """Complete on the container too: Knative accepts no pod-level securityContext unless
    a feature flag is on, and a container's settings win over the pod's."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsGroup": RUN_AS,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "seccompProfile": seccomp(),
    }


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def hpa(name: str, component: str, ns: str, low: int, high: int) -> Manifest:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(name, component, ns),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
            # Scale down slowly: a gateway that goes takes its warm workers with it.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def service(name: str, component: str, ns: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, component, ns),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(component, name),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


# ---------------------------------------------------------------- the platform


def platform_manifests(spec: PlatformSpec) -> dict[str, list[Manifest]]:
    """File name → the objects it holds; `secrets.example.yaml` is deliberately left out
    of the kustomization (see kustomization())."""
    spec.check()
    ns = spec.namespace
    return {
        "namespace.yaml": [namespace(spec.namespace)],
        "serviceaccount.yaml": [service_account(GATEWAY, "gateway", ns)],
        "gateway-deployment.yaml": [gateway_deployment(spec)],
        "gateway-service.yaml": [service(GATEWAY, "gateway", ns)],
        "gateway-pdb.yaml": [gateway_pdb(ns)],
        "gateway-hpa.yaml": [hpa(GATEWAY, "gateway", ns, spec.replicas, spec.max_replicas)],
        "secrets.example.yaml": secret_templates(spec),
    }


def namespace(name: str) -> Manifest:
    # Pod Security Admission enforces the `restricted` profile on everything in it, so a
    # patch that loosens a pod spec is refused by the API server, not merely discouraged.
    restricted = {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
    }
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": PART_OF} | restricted},
    }


def service_account(name: str, component: str, ns: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(name, component, ns),
        "automountServiceAccountToken": False,  # cumulo never talks to the Kubernetes API
    }


def gateway_deployment(spec: PlatformSpec) -> Manifest:
    env = [
        secret_env("CUMULO_DB", spec.db_secret, "url"),
        secret_env("CUMULO_SUBJECT_KEYS_DB", spec.subject_keys_secret, "url"),
        secret_env("CUMULO_MASTER_KEY", spec.master_secret, "master-key"),
        secret_env("CUMULO_KEYHASH_SECRET", spec.master_secret, "keyhash-secret"),
        # The root filesystem is read-only: everything written goes to the two emptyDirs.
        {"name": "HOME", "value": "/tmp"},  # noqa: S108 - the pod's own emptyDir
        {"name": "TMPDIR", "value": "/tmp"},  # noqa: S108
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    container = {
        "name": "gateway",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cumulo"],
        "args": [
            "up",
            "--host",
            "0.0.0.0",  # noqa: S104 - a pod's only interface; the Service fronts it
            "--port",
            str(GATEWAY_PORT),
            "--data-dir",
            DATA_DIR,
            # Never functions outside bubblewrap: without it a non-root gateway refuses in
            # every mode; strict says so by name (docs/kubernetes.md, "The sandbox in a pod").
            "--isolation",
            "strict",
            "--grace",
            str(spec.grace_s),
        ],
        "env": env,
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        # Migrations run before the gateway listens: startup allows a minute for them.
        "startupProbe": probe("/healthz", period=2, failures=30),
        "readinessProbe": probe("/readyz", period=5, failures=2),
        "livenessProbe": probe("/healthz", period=10, failures=3),
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "1Gi"},
            # Functions run inside the gateway's pod: its limits bound all of them together.
            "limits": {"cpu": spec.cpu, "memory": spec.memory, "ephemeral-storage": "8Gi"},
        },
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir of its own
        ],
    }
    pod = {
        "serviceAccountName": GATEWAY,
        "automountServiceAccountToken": False,
        # No *_SERVICE_HOST/*_PORT variables: a Service named cumulo-… would inject CUMULO_*.
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        # Longer than --grace: the gateway drains in-flight calls before the kubelet kills it.
        "terminationGracePeriodSeconds": spec.grace_s + 15,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector("gateway", GATEWAY)},
            }
        ],
        "containers": [container],
        "volumes": [
            {"name": "data", "emptyDir": {"sizeLimit": "6Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(GATEWAY, "gateway", spec.namespace),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector("gateway", GATEWAY)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": {"labels": labels("gateway", GATEWAY)}, "spec": pod},
        },
    }


def probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def gateway_pdb(ns: str) -> Manifest:
    # maxUnavailable, not minAvailable: with one replica a drain may still proceed, with
    # more it keeps all but one serving.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(GATEWAY, "gateway", ns),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector("gateway", GATEWAY)}},
    }


def secret_templates(spec: PlatformSpec) -> list[Manifest]:
    """Placeholders only: every value starts with REPLACE-ME and is refused by the gateway
    (a master key that is not 32 bytes, a URL that is not postgresql://), so an unfilled
    template can never run a platform on a guessable key."""

    def secret(name: str, values: dict[str, str]) -> Manifest:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta(name, "gateway", spec.namespace),
            "type": "Opaque",
            "stringData": values,
        }

    return [
        secret(
            spec.master_secret,
            {
                "master-key": f"{PLACEHOLDER}: openssl rand -base64 32",
                "keyhash-secret": f"{PLACEHOLDER}: openssl rand -base64 32",
            },
        ),
        secret(spec.db_secret, {"url": f"{PLACEHOLDER}: postgresql://USER:PASSWORD@HOST/cumulo"}),
        secret(
            spec.subject_keys_secret,
            {"url": f"{PLACEHOLDER}: postgresql://USER:PASSWORD@HOST/cumulo_keys"},
        ),
    ]


# ---------------------------------------------------------------- one function image
def function_manifests(spec: FunctionSpec, *, knative: bool) -> dict[str, list[Manifest]]:
    check_image(spec.image)
    check_label("--namespace", spec.k8s_namespace)
    name, ns, low = object_name(spec.name), spec.k8s_namespace, replicas_of(spec)
    if knative:
        return {f"{name}-knative-service.yaml": [knative_service(spec, name)]}
    return {
        f"{name}-deployment.yaml": [function_deployment(spec, name)],
        f"{name}-service.yaml": [service(name, "function", ns)],
        f"{name}-hpa.yaml": [hpa(name, "function", ns, low, max(low, spec.max_instances))],
    }


def replicas_of(spec: FunctionSpec) -> int:
    # A Deployment under an HPA cannot scale to zero: min_instances=0 becomes one replica.
    return max(1, spec.min_instances)


def function_annotations(spec: FunctionSpec) -> dict[str, str]:
    return {
        "cumulo.dev/bundle-sha256": spec.bundle_sha256,
        "cumulo.dev/function": spec.name,
        "cumulo.dev/namespace": spec.cumulo_namespace,
        "cumulo.dev/version": str(spec.version),
    }


def function_container(spec: FunctionSpec, *, port_name: str) -> dict[str, Any]:
    memory = f"{spec.memory_mb}Mi"
    return {
        "name": "function",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": port_name, "containerPort": FUNCTION_PORT, "protocol": "TCP"}],
        "resources": {
            # Memory as the function's memory_mb, requested and capped alike (as cumulo's
            # cgroup does); one core at most per instance, as cumulo gives one.
            "requests": {"cpu": "100m", "memory": memory},
            "limits": {"cpu": "1", "memory": memory},
        },
        "securityContext": container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir
    }


def tmp_volume(spec: FunctionSpec) -> dict[str, Any]:
    # /tmp counts against the function's memory under cumulo; here it is bounded by size.
    return {"name": "tmp", "emptyDir": {"sizeLimit": f"{spec.memory_mb}Mi"}}


def timeout_of(spec: FunctionSpec) -> int:
    return max(1, math.ceil(spec.timeout_s))


def knative_service(spec: FunctionSpec, name: str) -> Manifest:
    annotations = {
        # Scale to zero (min_instances=0) and bounded like the function's own scaling.
        "autoscaling.knative.dev/min-scale": str(spec.min_instances),
        "autoscaling.knative.dev/max-scale": str(spec.max_instances),
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/target": str(spec.concurrency),
    }
    container = function_container(spec, port_name="http1")  # Knative's name for HTTP/1
    container["readinessProbe"] = {"tcpSocket": {"port": FUNCTION_PORT}}
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": meta(
            name, "function", spec.k8s_namespace, annotations=function_annotations(spec)
        ),
        "spec": {
            "template": {
                "metadata": {
                    "labels": labels("function", name),
                    "annotations": annotations | function_annotations(spec),
                },
                "spec": {
                    # The hard limit per instance, as the function's concurrency is.
                    "containerConcurrency": spec.concurrency,
                    "timeoutSeconds": timeout_of(spec),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "containers": [container],
                    "volumes": [tmp_volume(spec)],
                },
            }
        },
    }


def function_deployment(spec: FunctionSpec, name: str) -> Manifest:
    container = function_container(spec, port_name="http")
    container["env"] = [{"name": "PORT", "value": str(FUNCTION_PORT)}]
    # The image's server contract is HTTP on $PORT, not a health path: probe the port.
    container["readinessProbe"] = {"tcpSocket": {"port": "http"}, "periodSeconds": 5}
    container["livenessProbe"] = {"tcpSocket": {"port": "http"}, "periodSeconds": 10}
    pod = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": timeout_of(spec) + 5,  # in-flight calls finish
        "containers": [container],
        "volumes": [tmp_volume(spec)],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(
            name, "function", spec.k8s_namespace, annotations=function_annotations(spec)
        ),
        "spec": {
            "replicas": replicas_of(spec),
            "selector": {"matchLabels": selector("function", name)},
            "template": {
                "metadata": {
                    "labels": labels("function", name),
                    "annotations": function_annotations(spec),
                },
                "spec": pod,
            },
        },
    }


# ---------------------------------------------------------------- YAML
HEADER = (
    "# Generated by `cumulo export k8s` (cumulo {version}); regenerate rather than edit,\n"
    "# and change it with kustomize patches (docs/kubernetes.md).\n"
)


def dump(objects: Sequence[Manifest]) -> str:
    """Stable YAML: sorted keys, block style, no aliases, one document per object."""
    body = "---\n".join(
        yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, width=100) for obj in objects
    )
    return HEADER.format(version=__version__) + body


def kustomization(files: Mapping[str, Sequence[Manifest]], namespace: str | None) -> Manifest:
    resources = sorted(f for f in files if not f.endswith(".example.yaml"))
    result: Manifest = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    }
    if namespace is not None:
        result["namespace"] = namespace
    return result


def render(files: Mapping[str, Sequence[Manifest]], namespace: str | None) -> dict[str, str]:
    """File name → its text, the kustomization included."""
    texts = {name: dump(objects) for name, objects in sorted(files.items())}
    texts["kustomization.yaml"] = dump([kustomization(files, namespace)])
    return texts
