"""`cumulo export k8s`: the manifests validate offline against the Kubernetes 1.29 OpenAPI
schemas (kubernetes-validate, strict: unknown fields fail), every pod spec is least
privilege, the secrets are placeholders, the output is byte-for-byte deterministic, and
`--function` reads a real platform's function config (docs/kubernetes.md)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cumulo.client import Client
from cumulo.deploy import k8s
from tests.conftest import CUMULO, RunningPlatform

K8S_VERSION = "1.29"
IMAGE = "registry.example/cumulo/fn:1"


def export(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CUMULO, "export", "k8s", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def load_dir(directory: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        f.name: [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        for f in sorted(directory.glob("*.yaml"))
    }


def objects(files: dict[str, list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for name, docs in files.items():
        if name != "kustomization.yaml":
            yield from docs


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def validate_pod_spec(pod_spec: dict[str, Any]) -> None:
    """A pod spec against the core PodSpec schema (wrapped in a v1 Pod)."""
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod_spec})


@pytest.fixture(scope="module")
def platform_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s") / "k8s"
    result = export("-o", str(out), "--replicas", "3", "--image", "registry.example/cumulo:1")
    assert result.returncode == 0, result.stderr
    return out


# ---------------------------------------------------------------- schema validation
def test_every_platform_manifest_validates_against_the_kubernetes_schemas(
    platform_dir: Path,
) -> None:
    files = load_dir(platform_dir)
    kinds = sorted(obj["kind"] for obj in objects(files))
    assert kinds == sorted(
        [
            "Deployment",
            "HorizontalPodAutoscaler",
            "Namespace",
            "PodDisruptionBudget",
            "Secret",
            "Secret",
            "Secret",
            "Service",
            "ServiceAccount",
        ]
    )
    for obj in objects(files):
        validate(obj)
    hpa = next(o for o in objects(files) if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] == 3


def test_the_kustomization_lists_every_file_but_the_secret_templates(platform_dir: Path) -> None:
    (kustomization,) = load_dir(platform_dir)["kustomization.yaml"]
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in platform_dir.glob("*.yaml"))
    assert listed == sorted(set(on_disk) - {"kustomization.yaml", "secrets.example.yaml"})
    assert kustomization["namespace"] == "cumulo"
    # Applied with -k, placeholders would overwrite the operator's real secrets.
    assert "secrets.example.yaml" not in listed


def test_the_validator_refuses_what_kubernetes_would(platform_dir: Path) -> None:
    """The schema check has teeth: an unknown field and a wrong type both fail."""
    (deployment,) = load_dir(platform_dir)["gateway-deployment.yaml"]
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo)
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_directory(platform_dir: Path) -> None:
    """Where kubectl is installed: its built-in kustomize (offline) accepts the directory
    and what it builds still validates."""
    built = subprocess.run(
        ["kubectl", "kustomize", str(platform_dir)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget"}
    assert "Secret" not in {d["kind"] for d in docs}
    for doc in docs:
        validate(doc)
        assert doc["metadata"].get("namespace", "cumulo") == "cumulo"


# ---------------------------------------------------------------- least privilege
def assert_least_privilege(pod: dict[str, Any], writable: set[str]) -> None:
    """Every container of `pod` runs as a fixed non-root uid with a read-only root, no
    privilege escalation, no capabilities, seccomp RuntimeDefault and bounded resources;
    every path in `writable` is an emptyDir mount."""
    assert pod["automountServiceAccountToken"] is False
    assert pod.get("hostNetwork") is not True
    assert pod.get("hostPID") is not True
    pod_ctx = pod.get("securityContext", {})
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in pod["containers"]:
        ctx = {**pod_ctx, **container["securityContext"]}  # the container's settings win
        assert ctx["runAsNonRoot"] is True
        assert isinstance(ctx["runAsUser"], int)
        assert ctx["runAsUser"] > 0
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert ctx.get("privileged") is not True
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind])
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
        for path in writable:
            assert path in mounts, f"{path} is not mounted"
            assert "emptyDir" in mounts[path], f"{path} is not an emptyDir"


def gateway_pod(platform_dir: Path) -> dict[str, Any]:
    (deployment,) = load_dir(platform_dir)["gateway-deployment.yaml"]
    return dict(deployment["spec"]["template"]["spec"])


def test_the_gateway_pod_is_least_privilege(platform_dir: Path) -> None:
    pod = gateway_pod(platform_dir)
    assert_least_privilege(pod, {"/tmp", k8s.DATA_MOUNT})
    (container,) = pod["containers"]
    args = container["args"]
    # The data dir lies inside the emptyDir (the platform chmods its own data dir).
    assert args[args.index("--data-dir") + 1].startswith(k8s.DATA_MOUNT + "/")
    # Functions never run outside bubblewrap in a pod (docs/kubernetes.md).
    assert args[args.index("--isolation") + 1] == "strict"
    assert pod["enableServiceLinks"] is False
    (sa,) = load_dir(platform_dir)["serviceaccount.yaml"]
    assert sa["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    (ns,) = load_dir(platform_dir)["namespace.yaml"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_gateway_probes_service_and_disruption_budget(platform_dir: Path) -> None:
    files = load_dir(platform_dir)
    (deployment,) = files["gateway-deployment.yaml"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["replicas"] == 3
    for name in ("gateway-service.yaml", "gateway-pdb.yaml"):
        (obj,) = files[name]
        chosen = obj["spec"]["selector"]
        chosen = chosen.get("matchLabels", chosen)
        assert chosen.items() <= pod_labels.items(), name
    (pdb,) = files["gateway-pdb.yaml"]
    assert pdb["spec"]["maxUnavailable"] == 1
    (svc,) = files["gateway-service.yaml"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert container["ports"][0]["name"] == "http"
    # The drain the gateway does on SIGTERM (--grace) fits in the kubelet's grace period.
    grace = int(container["args"][container["args"].index("--grace") + 1])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_secrets_are_placeholders_the_gateway_refuses(platform_dir: Path) -> None:
    from cumulo.errors import ConfigError
    from cumulo.gateway.storage import parse_db_url
    from cumulo.security.crypto import parse_master_key

    secrets = {s["metadata"]["name"]: s for s in load_dir(platform_dir)["secrets.example.yaml"]}
    for secret in secrets.values():
        assert "data" not in secret  # nothing base64-encoded that could hide a value
        for value in secret["stringData"].values():
            assert value.startswith("REPLACE-ME")
    # What the gateway reads, from where: every secretKeyRef names a templated key.
    (container,) = gateway_pod(platform_dir)["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(refs) == {
        "CUMULO_DB",
        "CUMULO_SUBJECT_KEYS_DB",
        "CUMULO_MASTER_KEY",
        "CUMULO_KEYHASH_SECRET",
    }
    values = {name: secrets[r["name"]]["stringData"][r["key"]] for name, r in refs.items()}
    # An unfilled template never runs a platform: each value is refused at start.
    for name in ("CUMULO_MASTER_KEY", "CUMULO_KEYHASH_SECRET"):
        with pytest.raises(ConfigError):
            parse_master_key(values[name], name)
    for name in ("CUMULO_DB", "CUMULO_SUBJECT_KEYS_DB"):
        with pytest.raises(ConfigError):
            parse_db_url(values[name], Path("/nonexistent"))


# ---------------------------------------------------------------- determinism and flags
def test_the_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    args = ("--image", "registry.example/cumulo:1", "--namespace", "prod", "--replicas", "2")
    for run in ("a", "b"):
        assert export("-o", str(tmp_path / run), *args).returncode == 0
    a, b = sorted((tmp_path / "a").iterdir()), sorted((tmp_path / "b").iterdir())
    assert [p.name for p in a] == [p.name for p in b]
    for left, right in zip(a, b, strict=True):
        assert left.read_bytes() == right.read_bytes(), left.name
    streams = [export("-o", "-", *args).stdout for _ in range(2)]
    assert streams[0] == streams[1]
    docs = [d for d in yaml.safe_load_all(streams[0]) if d]
    assert "Secret" not in {d["kind"] for d in docs}  # `apply -f -` must not clobber them
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] != "Namespace"} == {"prod"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--replicas", "0"], "--replicas"),
        (["--replicas", "3", "--max-replicas", "2"], "--max-replicas"),
        (["--namespace", "Not_A_Label"], "--namespace"),
        (["--image", "bad image; rm -rf /"], "--image"),
        (["--db-secret", "same", "--master-secret", "same"], "must differ"),
        (["--cpu", "lots"], "--cpu"),
        (["--knative"], "--knative goes with --function"),
        (["--function", "hello"], "--function needs --image"),
        (["--function", "hello", "--image", IMAGE, "--replicas", "2"], "--replicas"),
        (["--function", "hello@zero", "--image", IMAGE], "NAME@VERSION"),
        (["--function", "@3", "--image", IMAGE], "NAME@VERSION"),
    ],
)
def test_bad_flags_are_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    result = export("-o", str(tmp_path / "out"), *args)
    assert result.returncode == 1, result.stdout
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert says in result.stderr
    assert not (tmp_path / "out").exists()


def test_object_names_fit_kubernetes_and_knative() -> None:
    assert k8s.object_name("hello") == "hello"
    assert k8s.object_name(k8s.GATEWAY) != k8s.GATEWAY  # never replaces the gateway
    for odd in ("9lives", "-x-", "a" * 63, "trailing-", k8s.GATEWAY):
        name = k8s.object_name(odd)
        assert k8s.DNS_LABEL.fullmatch(name), name
        assert len(name) <= k8s.MAX_NAME, name
        assert name == k8s.object_name(odd)  # stable
    assert k8s.object_name("a" * 63) != k8s.object_name("a" * 62)


# ---------------------------------------------------------------- --function, for real
SIZED = """\
import cumulo


@cumulo.function(memory_mb=384, timeout_s=12.5, concurrency=4, max_instances=7)
def sized(event, ctx):
    return {"ok": True}
"""


def knative_shape(service: dict[str, Any]) -> dict[str, Any]:
    """The Knative Service's own shape, checked by hand (its CRD schema is not in the core
    OpenAPI); returns its pod spec with the Knative-only fields taken off."""
    assert service["apiVersion"] == "serving.knative.dev/v1"
    assert service["kind"] == "Service"
    assert set(service) == {"apiVersion", "kind", "metadata", "spec"}
    assert k8s.DNS_LABEL.fullmatch(service["metadata"]["name"])
    assert set(service["spec"]) == {"template"}
    template = service["spec"]["template"]
    assert set(template) == {"metadata", "spec"}
    for value in template["metadata"]["annotations"].values():
        assert isinstance(value, str)  # annotations are strings or the API refuses them
    pod = dict(template["spec"])
    assert isinstance(pod.pop("containerConcurrency"), int)
    assert isinstance(pod.pop("timeoutSeconds"), int)
    (container,) = pod["containers"]
    assert "PORT" not in {e["name"] for e in container.get("env", [])}  # Knative sets it
    return pod


@pytest.mark.integration
def test_function_export_reads_the_platform(
    platform: RunningPlatform, client: Client, unique_name: str, tmp_path: Path
) -> None:
    source = tmp_path / "sized.py"
    source.write_text(SIZED)
    client.deploy(source, name=unique_name)
    # v2 is not live: the export without @VERSION takes v1, with @2 the bigger one.
    client.deploy(source, name=unique_name, promote=False, memory_mb=512, env={"X": "1"})

    kn = platform.cli(
        "export", "k8s", "--function", unique_name, "--image", IMAGE, "--knative",
        "-o", str(tmp_path / "kn"),
    )  # fmt: skip
    assert kn.returncode == 0, kn.stderr
    files = load_dir(tmp_path / "kn")
    (service,) = [o for o in objects(files)]
    pod = knative_shape(service)
    validate_pod_spec(pod)
    assert_least_privilege(pod, {"/tmp"})
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "7"
    assert annotations["autoscaling.knative.dev/target"] == "4"
    assert annotations["cumulo.dev/version"] == "1"
    template = service["spec"]["template"]["spec"]
    assert template["containerConcurrency"] == 4
    assert template["timeoutSeconds"] == 13  # 12.5 s, rounded up
    (container,) = template["containers"]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["memory"] == "384Mi"

    plain = platform.cli(
        "export", "k8s", "--function", f"{unique_name}@2", "--image", IMAGE,
        "-o", str(tmp_path / "plain"),
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    files = load_dir(tmp_path / "plain")
    by_kind = {o["kind"]: o for o in objects(files)}
    assert set(by_kind) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for obj in by_kind.values():
        validate(obj)
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert_least_privilege(pod, {"/tmp"})
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert {"name": "PORT", "value": "8080"} in container["env"]
    assert by_kind["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 7
    assert by_kind["Deployment"]["spec"]["replicas"] == 1  # an HPA cannot scale to zero
    (kustomization,) = files["kustomization.yaml"]
    assert sorted(kustomization["resources"]) == sorted(set(files) - {"kustomization.yaml"})


@pytest.mark.integration
@pytest.mark.parametrize("target", ["no-such-function-k8s", "VERSION"])
def test_unknown_function_or_version_is_one_line(
    platform: RunningPlatform, client: Client, unique_name: str, tmp_path: Path, target: str
) -> None:
    if target == "VERSION":
        source = tmp_path / "sized.py"
        source.write_text(SIZED)
        client.deploy(source, name=unique_name)
        target = f"{unique_name}@9"
    result = platform.cli("export", "k8s", "--function", target, "--image", IMAGE, "-o", "-")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------- the gateway in a pod
def test_the_key_hash_secret_comes_from_the_environment(tmp_path: Path) -> None:
    from cumulo.errors import ConfigError
    from cumulo.security.keys import KEYHASH_ENV, KEYHASH_FILE, KeyHasher

    secret = "q" * 43 + "="  # base64 of 32 bytes
    one = KeyHasher.from_data_dir(tmp_path / "a", {KEYHASH_ENV: secret})
    two = KeyHasher.from_data_dir(tmp_path / "b", {KEYHASH_ENV: secret})
    assert one.hash("cmo_x") == two.hash("cmo_x")  # two gateways, one secret
    assert not (tmp_path / "a" / KEYHASH_FILE).exists()
    with pytest.raises(ConfigError, match=KEYHASH_ENV):
        KeyHasher.from_data_dir(tmp_path, {KEYHASH_ENV: "REPLACE-ME: openssl rand -base64 32"})


@pytest.mark.integration
@pytest.mark.slow
def test_the_deployments_command_line_serves(platform_dir: Path, tmp_path: Path) -> None:
    """The gateway container's arguments and plain (non-secret) environment, with keys
    from the environment as the Secrets give them: the platform starts, keeps neither key
    in its data dir, and answers its probes."""
    import base64

    import httpx

    # Imported here: a module that names start_platform is integration as a whole.
    from tests.conftest import start_platform

    (container,) = gateway_pod(platform_dir)["containers"]
    args = list(container["args"])
    assert args[0] == "up"
    for flag in ("--port", "--data-dir", "--host"):  # the test's own, as in every test
        at = args.index(flag)
        del args[at : at + 2]
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {
        **os.environ,
        **plain,
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path),
        "CUMULO_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "CUMULO_KEYHASH_SECRET": base64.b64encode(os.urandom(32)).decode(),
    }
    data = tmp_path / "volume" / "data"
    running = start_platform(tmp_path, *args[1:], env=env, data_dir=data)
    try:
        assert not (data / "keyhash.secret").exists()
        assert not (data / "master.key").exists()
        for path in ("/healthz", "/readyz"):
            assert httpx.get(running.url + path, timeout=5).status_code == 200
        assert running.client().functions() is not None  # the admin key verifies
    finally:
        running.stop()


def test_without_a_working_sandbox_the_gateway_refuses_in_one_line(
    platform_dir: Path, tmp_path: Path
) -> None:
    """What a gateway pod does where bubblewrap cannot build its namespaces (the usual
    RuntimeDefault seccomp profile): the Deployment's own arguments exit 1 with one line
    before anything starts, never running functions unconfined (CUMULO_BWRAP=/bin/false is
    "installed but failing", as bwrap is there)."""
    (container,) = gateway_pod(platform_dir)["containers"]
    args = list(container["args"])
    at = args.index("--data-dir")
    args[at + 1] = str(tmp_path / "volume" / "data")
    env = {**os.environ, "CUMULO_BWRAP": "/bin/false", "HOME": str(tmp_path)}
    result = subprocess.run(
        [CUMULO, *args], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--isolation strict: the worker sandbox cannot be built" in lines[0]


def test_help_names_every_value() -> None:
    result = export("--help")
    assert result.returncode == 0
    assert "<" not in result.stdout  # every option has a metavar, not <str>/<int>
    for flag in ("--function", "--knative", "--db-secret", "--namespace", "--replicas"):
        assert flag in result.stdout
