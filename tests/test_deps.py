"""Per-function dependencies (control/deps.py): a requirements.txt builds a cached
virtualenv that only that function's zygote uses. Needs the package index (PyPI)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cumulo.control.deps import DependencyBuilder
from cumulo.errors import BadRequest
from cumulo.runtime import sandbox
from cumulo.runtime.settings import RuntimeSettings
from tests.conftest import RunningPlatform


def _index_reachable() -> bool:
    host = urlsplit(os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")).hostname
    try:
        socket.create_connection((host or "pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


SANDBOX = sandbox.status(RuntimeSettings())

pytestmark = [
    pytest.mark.skipif(not _index_reachable(), reason="the package index is unreachable"),
    pytest.mark.skipif(
        SANDBOX.drop_uid and not SANDBOX.sandboxed,
        reason="a root gateway runs requirements.txt envs only inside bubblewrap",
    ),
]

# Tiny, pure Python, no dependencies of its own, and not one of the platform's packages.
PACKAGE = "humanize"
REQUIREMENT = "humanize==4.9.0\n"

USES_IT = """
import importlib.util

import cumulo
import humanize


@cumulo.function()
def fmt(event: dict, ctx: cumulo.Context) -> dict:
    return {
        "text": humanize.intcomma(event["n"]),
        "from": humanize.__file__,
        # A package of the gateway's that the zygote does not need stays out of sight...
        "typer": importlib.util.find_spec("typer") is not None,
        # ...but the platform's ASGI stack, which cumulo.app apps may rely on, is there.
        "fastapi": importlib.util.find_spec("fastapi") is not None,
    }
"""

WITHOUT = """
import importlib.util

import cumulo


@cumulo.function()
def probe(event: dict, ctx: cumulo.Context) -> dict:
    return {"humanize": importlib.util.find_spec("humanize") is not None}
"""


def _function_dir(root: Path, source: str, requirements: str | None) -> Path:
    root.mkdir()
    (root / "main.py").write_text(source)
    if requirements is not None:
        (root / "requirements.txt").write_text(requirements)
    return root


def test_requirements_build_an_env_the_function_imports_from(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    assert importlib.util.find_spec(PACKAGE) is None, f"the platform must not have {PACKAGE}"
    client = platform.client()
    code = _function_dir(tmp_path / "fn", USES_IT, REQUIREMENT)
    first = client.deploy(code, name=unique_name)
    env_hash = first["config"]["requirements"]
    assert env_hash
    env_dir = platform.data_dir / "envs" / env_hash
    assert env_dir.is_dir()
    built = env_dir.stat()
    result = client.invoke(unique_name, {"n": 1234567})
    assert result["text"] == "1,234,567"
    assert result["from"].startswith(str(env_dir))
    assert result["typer"] is False
    assert result["fastapi"] is True

    # Same requirements, other code: the same env, not built again (same inode and mtime,
    # no half-built leftovers).
    (code / "main.py").write_text(USES_IT + "\n# v2\n")
    second = client.deploy(code, name=unique_name)
    assert second["version"] == first["version"] + 1
    assert second["config"]["requirements"] == env_hash
    again = env_dir.stat()
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert not [p for p in env_dir.parent.iterdir() if p.name.startswith(".build-")]
    assert client.invoke(unique_name, {"n": 1000})["text"] == "1,000"


def test_a_function_without_requirements_does_not_see_the_package(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    client = platform.client()
    deployed = client.deploy(_function_dir(tmp_path / "fn", WITHOUT, None), name=unique_name)
    assert deployed["config"]["requirements"] == ""
    assert client.invoke(unique_name, {}) == {"humanize": False}


def test_a_failed_build_fails_the_deploy_with_its_log(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    code = _function_dir(tmp_path / "fn", WITHOUT, "cumulo-does-not-exist-xyz==9\n")
    with pytest.raises(BadRequest) as caught:
        platform.client().deploy(code, name=unique_name)
    error = caught.value
    assert error.code == "dependency_build_failed"
    assert "\n" not in error.message
    assert "cumulo-does-not-exist-xyz" in error.details["log"]
    assert not [p for p in (platform.data_dir / "envs").iterdir() if p.name.startswith(".build-")]
    with platform.http() as http:
        missing = http.get(f"/v1/namespaces/default/functions/{unique_name}")
        assert missing.status_code == 404
    # The CLI prints pip's log, then its one error line.
    cli = platform.cli("deploy", str(code), "--name", unique_name)
    assert cli.returncode == 1
    assert "cumulo-does-not-exist-xyz" in cli.stderr
    assert "error: installing requirements.txt failed" in cli.stderr


def test_concurrent_builds_of_one_hash_build_once(tmp_path: Path) -> None:
    code = _function_dir(tmp_path / "fn", USES_IT, REQUIREMENT)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    builder = DependencyBuilder(RuntimeSettings(data_dir=data), data / "envs")

    async def both() -> list[str | None]:
        return list(await asyncio.gather(builder.ensure(code), builder.ensure(code)))

    first, second = asyncio.run(both())
    assert first is not None
    assert first == second
    assert builder.builds == 1
    assert [p.name for p in (data / "envs").iterdir()] == [first]


RAISES = """
import cumulo
import humanize


@cumulo.function()
def fail(event: dict, ctx: cumulo.Context) -> dict:
    return {"text": humanize.intcomma(event["n"]) + 1}


@cumulo.function()
def deep(event: dict, ctx: cumulo.Context) -> dict:
    return {"text": humanize.naturalsize("not a number")}
"""


def test_a_requirements_env_traceback_holds_only_the_users_frames(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    """Regression: in a requirements.txt env cumulo is imported through a symlink, so its
    frames (with the env's server path) were not recognised as the platform's."""
    client = platform.client()
    code = _function_dir(tmp_path / "fn", RAISES, REQUIREMENT)
    client.deploy(code, name=unique_name, handler="main.fail")
    with platform.http() as http:
        error = http.post(f"/fn/default/{unique_name}", json={"n": 5}).json()["error"]
    lines = error["traceback"].splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1] == '  File "main.py", line 8, in fail'
    assert lines[-1] == 'TypeError: can only concatenate str (not "int") to str'
    assert str(platform.data_dir) not in error["traceback"]
    assert "cumulo" not in error["traceback"].replace(unique_name, "")
    client.deploy(code, name=unique_name, handler="main.deep")
    with platform.http() as http:
        deep = http.post(f"/fn/default/{unique_name}", json={}).json()["error"]["traceback"]
    assert '  File "main.py", line 13, in deep' in deep
    assert '  File "humanize/filesize.py"' in deep  # the dependency, by its import path
    assert str(platform.data_dir) not in deep
