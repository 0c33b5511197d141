"""Pure pieces, tested without a platform: keys, bundles, routing, scaling, the SDK."""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

import cumulo
from cumulo.control.bundle import BundleStore, pack
from cumulo.control.routes import Route
from cumulo.errors import BadRequest, StateConflict
from cumulo.runtime.pool import scale_up_count
from cumulo.runtime.spec import VersionSpec
from cumulo.security.keys import KeyHasher, generate_key, well_formed


def test_generated_keys_are_well_formed_and_typos_are_caught_offline() -> None:
    key = generate_key()
    assert key.startswith("cmo_")
    assert len(key) == 53
    assert well_formed(key)
    typo = key[:10] + ("a" if key[10] != "a" else "b") + key[11:]
    assert not well_formed(typo)
    assert not well_formed(key[:-1])
    assert not well_formed("cmo_" + "!" * 49)


def test_key_hash_depends_on_the_server_secret() -> None:
    key = generate_key()
    assert KeyHasher(b"a" * 32).hash(key) != KeyHasher(b"b" * 32).hash(key)
    assert KeyHasher(b"a" * 32).hash(key) == KeyHasher(b"a" * 32).hash(key)


def test_bundles_are_deterministic_and_skip_caches(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    first = pack(tmp_path)
    (tmp_path / "main.py").touch()
    assert pack(tmp_path) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert tar.getnames() == ["main.py"]


def _archive(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize(
    "bundle",
    [
        _archive("../escape.py"),
        _archive("/abs.py"),
        _archive("link.py", kind=tarfile.SYMTYPE),
        b"not a tarball",
    ],
    ids=["dotdot", "absolute", "symlink", "garbage"],
)
def test_unsafe_bundles_are_refused(tmp_path: Path, bundle: bytes) -> None:
    store = BundleStore(tmp_path)
    with pytest.raises(BadRequest):
        store.add(bundle)
    assert not (tmp_path / "escape.py").exists()
    assert [p.name for p in store.code.iterdir()] == []


def _spec(version: int) -> VersionSpec:
    return VersionSpec(
        "default", "f", version, Path("."), "m", "a", "event", cumulo.FunctionConfig()
    )


def test_route_pick_follows_weights() -> None:
    route = Route.build([(_spec(1), 90), (_spec(2), 10), (_spec(3), 0)])
    assert [s.version for s in route.specs] == [1, 2]
    points = [i / 1000 for i in range(1000)]
    counts = Counter(route.pick(lambda p=p: p).version for p in points)  # type: ignore[misc]
    assert counts == {1: 900, 2: 100}


@pytest.mark.parametrize(
    ("demand", "workers", "starting", "concurrency", "max_instances", "expected"),
    [
        (1, 0, 0, 1, 10, 1),
        (5, 0, 0, 1, 3, 3),
        (5, 2, 1, 1, 10, 2),
        (3, 1, 0, 4, 10, 0),
        (9, 1, 0, 4, 10, 2),
        (100, 10, 0, 1, 10, 0),
    ],
)
def test_scale_up_count(
    demand: int, workers: int, starting: int, concurrency: int, max_instances: int, expected: int
) -> None:
    assert scale_up_count(demand, workers, starting, concurrency, max_instances) == expected


def test_handlers_are_plain_functions_testable_with_a_local_context() -> None:
    @cumulo.function(secrets=["TOKEN"])
    def greet(event: dict[str, str], ctx: cumulo.Context) -> dict[str, object]:
        ctx.log.info("hi")
        return {"n": ctx.state.incr("n"), "token": ctx.secrets["TOKEN"]}

    ctx = cumulo.local_context(secrets={"TOKEN": "t"})
    assert greet({}, ctx) == {"n": 1, "token": "t"}
    assert greet({}, ctx) == {"n": 2, "token": "t"}
    version = ctx.state.put("k", 1)
    with pytest.raises(StateConflict, match="not the expected version 0"):
        ctx.state.put("k", 2, expected_version=0)
    assert ctx.state.put("k", 2, expected_version=version) == version + 1


def test_decorator_rejects_bad_config_at_import_time() -> None:
    with pytest.raises(BadRequest, match="concurrency must be an integer"):
        cumulo.function(concurrency=0)
    with pytest.raises(BadRequest, match="invalid function name"):
        cumulo.function(name="Bad Name")


def test_every_public_name_is_exported_and_typed() -> None:
    import inspect

    exported = set(cumulo.__all__)
    public = {n for n in vars(cumulo) if not n.startswith("_") and n not in {"annotations"}}
    modules = {n for n in public if inspect.ismodule(getattr(cumulo, n))}
    assert public - modules == exported - {"__version__"}
    assert (Path(cumulo.__file__).parent / "py.typed").exists()
    for name in exported - {"__version__"}:
        obj = getattr(cumulo, name)
        if inspect.isclass(obj):
            methods = [
                m
                for n, m in vars(obj).items()
                if inspect.isfunction(m)
                and not n.startswith("_")
                and m.__module__.startswith("cumulo")
            ]
            for method in methods:
                hints = inspect.get_annotations(method)
                assert "return" in hints, f"{name}.{method.__name__} lacks a return type"
        elif callable(obj):
            assert "return" in inspect.get_annotations(obj), f"{name} lacks a return type"


def test_regression_script_in_tmp_keeps_the_sandbox_tmp_writable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A platform started from a script in /tmp had /tmp on sys.path, bound back read-only
    over the sandbox's private /tmp: the sandbox probe failed to write /tmp/probe."""
    from cumulo.runtime.sandbox import runtime_paths
    from cumulo.runtime.settings import RuntimeSettings

    monkeypatch.setattr(sys, "path", ["/tmp", "/", *sys.path])
    paths = runtime_paths(RuntimeSettings())
    assert Path("/tmp") not in paths
    assert Path("/") not in paths
    assert Path(sys.prefix).resolve() in paths
