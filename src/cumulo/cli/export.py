"""`cumulo export k8s`: Kubernetes manifests for the whole platform, or (`--function
NAME[@VERSION] --image IMAGE`) for one function's image, written as plain YAML files with a
kustomization (cumulo/deploy/k8s.py builds them; docs/kubernetes.md)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from cumulo.deploy import k8s

app = typer.Typer(rich_markup_mode=None, help="Export the platform or a function elsewhere.")

Opt = typer.Option


def fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(1)


def export_k8s(
    output: Annotated[
        str | None,
        Opt("--output", "-o", help="Directory to write (- prints to stdout).", metavar="DIR"),
    ] = None,
    image: Annotated[
        str | None,
        Opt(
            help="Image reference (the gateway's, or with --function the function's).",
            metavar="IMAGE",
        ),
    ] = None,
    namespace: Annotated[
        str, Opt("--namespace", help="Kubernetes namespace of every object.", metavar="NS")
    ] = "cumulo",
    replicas: Annotated[
        int | None, Opt(help="Gateways to start with (the HPA's floor).", metavar="N")
    ] = None,
    max_replicas: Annotated[
        int | None, Opt(help="Most gateways the HPA may run.", metavar="N")
    ] = None,
    db_secret: Annotated[
        str | None, Opt(help="Secret holding the PostgreSQL URL (key: url).", metavar="NAME")
    ] = None,
    subject_keys_secret: Annotated[
        str | None,
        Opt(help="Secret holding the subject-keys PostgreSQL URL (key: url).", metavar="NAME"),
    ] = None,
    master_secret: Annotated[
        str | None,
        Opt(help="Secret holding master-key and keyhash-secret.", metavar="NAME"),
    ] = None,
    cpu: Annotated[
        str | None, Opt(help="CPU limit of a gateway pod, e.g. 2.", metavar="CPU")
    ] = None,
    memory: Annotated[
        str | None, Opt(help="Memory limit of a gateway pod, e.g. 4Gi.", metavar="SIZE")
    ] = None,
    function: Annotated[
        str | None,
        Opt(help="Export this function's image instead: NAME or NAME@VERSION.", metavar="NAME"),
    ] = None,
    knative: Annotated[
        bool, Opt("--knative", help="With --function: a Knative Service (scales to zero).")
    ] = False,
    from_namespace: Annotated[
        str, Opt(help="With --function: the cumulo namespace it lives in.", metavar="NS")
    ] = "default",
) -> None:
    """Kubernetes manifests (kustomize-ready YAML) for the platform or a function image."""
    platform_flags = {
        "--replicas": replicas,
        "--max-replicas": max_replicas,
        "--db-secret": db_secret,
        "--subject-keys-secret": subject_keys_secret,
        "--master-secret": master_secret,
        "--cpu": cpu,
        "--memory": memory,
    }
    try:
        if function is None:
            if knative:
                fail("--knative goes with --function")
            files = k8s.platform_manifests(_platform_spec(image, namespace, platform_flags))
            default_dir = "k8s"
        else:
            given = [flag for flag, value in platform_flags.items() if value is not None]
            if given:
                fail(f"{given[0]} is for the platform, not with --function")
            if image is None:
                fail("--function needs --image: the function's image (from `cumulo build`)")
            assert image is not None
            spec = _function_spec(function, image, from_namespace, namespace)
            files = k8s.function_manifests(spec, knative=knative)
            default_dir = f"k8s-{k8s.object_name(spec.name)}"
    except k8s.ExportError as exc:
        fail(str(exc))
        raise
    _write(files, namespace, output or default_dir)


def _platform_spec(image: str | None, namespace: str, flags: Mapping[str, Any]) -> k8s.PlatformSpec:
    defaults = k8s.PlatformSpec()
    replicas = flags["--replicas"] if flags["--replicas"] is not None else defaults.replicas
    high = flags["--max-replicas"]
    return k8s.PlatformSpec(
        image=image or defaults.image,
        namespace=namespace,
        replicas=replicas,
        max_replicas=high if high is not None else max(defaults.max_replicas, replicas),
        db_secret=flags["--db-secret"] or defaults.db_secret,
        subject_keys_secret=flags["--subject-keys-secret"] or defaults.subject_keys_secret,
        master_secret=flags["--master-secret"] or defaults.master_secret,
        cpu=_quantity("--cpu", flags["--cpu"]) or defaults.cpu,
        memory=_quantity("--memory", flags["--memory"]) or defaults.memory,
    )


def _quantity(flag: str, value: str | None) -> str | None:
    import re

    # A Kubernetes quantity: digits, an optional fraction, an optional suffix.
    if value is not None and not re.fullmatch(r"\d+(\.\d+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?", value):
        raise k8s.ExportError(f"{flag} takes a Kubernetes quantity such as 2, 500m or 4Gi")
    return value


def _function_spec(target: str, image: str, from_ns: str, k8s_ns: str) -> k8s.FunctionSpec:
    # Loaded here, not at import: app.py imports this module to register it.
    from cumulo.cli.app import client, run

    name, _, version_text = target.partition("@")
    wanted: int | None = None
    if version_text:
        if not version_text.isdigit() or int(version_text) < 1:
            fail(f"--function takes NAME or NAME@VERSION, not {target!r}")
        wanted = int(version_text)
    if not name:
        fail(f"--function takes NAME or NAME@VERSION, not {target!r}")
    view = run(lambda: client(from_ns).versions(name))
    version = _pick(name, view, wanted)
    return k8s.FunctionSpec.from_version(
        name, version, image, cumulo_namespace=from_ns, k8s_ns=k8s_ns
    )


def _pick(name: str, view: Mapping[str, Any], wanted: int | None) -> Mapping[str, Any]:
    """The version asked for, else the live one (the largest share of traffic)."""
    versions: dict[int, Mapping[str, Any]] = {
        int(v["version"]): v for v in view.get("versions", [])
    }
    if wanted is None:
        traffic = {int(v): int(w) for v, w in (view.get("traffic") or {}).items() if int(w) > 0}
        if not traffic:
            fail(f"{name} has no live version: name one as {name}@VERSION")
        wanted = max(traffic, key=lambda v: (traffic[v], v))
    if wanted not in versions:
        fail(f"{name} has no version {wanted}")
    return versions[wanted]


def _write(files: Mapping[str, Sequence[k8s.Manifest]], namespace: str, output: str) -> None:
    texts = k8s.render(files, namespace)
    if output == "-":
        # A stream for `kubectl apply -f -`: neither the kustomization nor the secret
        # templates, whose placeholders would replace real Secrets.
        listed = k8s.kustomization(files, namespace)["resources"]
        sys.stdout.write("".join(texts[name] for name in listed))
        return
    directory = Path(output)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (directory / name).write_text(text)
    except OSError as exc:
        fail(f"cannot write {directory}: {exc.strerror or exc}")
    sys.stdout.write(f"wrote {len(texts)} files to {directory}\n")
    if "secrets.example.yaml" in texts:
        sys.stdout.write(
            f"fill the secrets (see {directory / 'secrets.example.yaml'}, docs/kubernetes.md), "
            f"then: kubectl apply -k {directory}\n"
        )


def register(root: typer.Typer) -> None:
    app.command("k8s")(export_k8s)
    root.add_typer(app, name="export")
