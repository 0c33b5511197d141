"""Start-up never leaves functions unconfined (issue 15, finding 3).

A non-root first start probed bubblewrap before the data dir existed, the probe failed, and
`--isolation auto` carried on without it: functions ran as the gateway's uid and read
master.key, credentials.json and cumulo.db. Now the probe runs against the real layout, a
bubblewrap that is installed but fails refuses the start (unless `--isolation process`),
and a gateway that cannot drop to another uid refuses without a working bubblewrap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cumulo.runtime import sandbox
from tests.conftest import CUMULO, RunningPlatform, free_port

Factory = Callable[..., RunningPlatform]
ROOT = Path(__file__).resolve().parents[2]
BROKEN_BWRAP = "bubblewrap is installed but does not work here"
NONROOT_REFUSAL = "a gateway that is not root needs a working bubblewrap"

PEEK = """
import os


def peek(event, ctx):
    data = event["data_dir"]
    found = {}
    for name in ("master.key", "credentials.json", "cumulo.db", "keyhash.secret"):
        try:
            with open(os.path.join(data, name), "rb") as fh:
                found[name] = len(fh.read())
        except OSError as exc:
            found[name] = type(exc).__name__
    try:
        found["listing"] = sorted(os.listdir(data))
    except OSError as exc:
        found["listing"] = type(exc).__name__
    found["uid"] = os.getuid()
    return found
"""

LAZY = """
def lazy(event, ctx):
    # Not imported by the zygote: found through the package's __path__ after the uid drop.
    import importlib.metadata
    import email.mime.text
    import json.tool

    return {"msgpack": importlib.metadata.version("msgpack"), "ok": True}
"""


def up_command(data_dir: Path, *extra: str) -> list[str]:
    return [CUMULO, "up", "--port", str(free_port()), "--data-dir", str(data_dir), *extra]


def refused(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run a start that must fail; returns its one line of output."""
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_requires_python_is_what_deploys_need() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11.4"


def test_a_python_without_extraction_filters_refuses_to_start(tmp_path: Path) -> None:
    """3.11.0-3.11.3 lack tarfile's filter=: every deploy was a 500. Played by raising the
    minimum above the running interpreter."""
    script = (
        "import sys, cumulo.cli.app as m\n"
        "m.MIN_PYTHON = (sys.version_info[0], sys.version_info[1] + 1, 0)\n"
        f"m.app(['up', '--data-dir', {str(tmp_path / 'd')!r}])\n"
    )
    line = refused([sys.executable, "-c", script], dict(os.environ), tmp_path)
    assert "cumulo needs Python" in line
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="as root; the non-root variant is below")
def test_auto_refuses_a_bubblewrap_that_is_installed_but_fails(tmp_path: Path) -> None:
    env = {**os.environ, sandbox.BWRAP_ENV: "/bin/false"}
    line = refused(up_command(tmp_path / "data"), env, tmp_path)
    assert BROKEN_BWRAP in line
    assert "--isolation process" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root gateway can run without bubblewrap")
def test_isolation_process_runs_without_bubblewrap_under_a_private_uid(
    fresh_platform: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sandbox.BWRAP_ENV, "/bin/false")
    running = fresh_platform("--isolation", "process")
    assert "WITHOUT the bubblewrap sandbox" in running.log()
    module = tmp_path / "peek.py"
    module.write_text(PEEK)
    client = running.client()
    client.deploy(module, name="peek", handler="peek.peek")
    found = client.invoke("peek", {"data_dir": str(running.data_dir)})
    assert found["uid"] not in (0, os.geteuid())
    for name in ("master.key", "credentials.json", "cumulo.db", "listing"):
        assert found[name] == "PermissionError", found


@pytest.mark.skipif(os.geteuid() != 0, reason="a root gateway dropping to a private uid")
def test_lazy_stdlib_imports_work_without_bubblewrap_under_a_hidden_interpreter(
    fresh_platform: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if sandbox._hidden_ancestor(Path(sys.base_prefix)) is None:
        pytest.skip("the interpreter is not under a directory others cannot enter")
    monkeypatch.setenv(sandbox.BWRAP_ENV, "")
    running = fresh_platform()
    module = tmp_path / "lazy.py"
    module.write_text(LAZY)
    client = running.client()
    client.deploy(module, name="lazy", handler="lazy.lazy")
    assert client.invoke("lazy", {})["ok"] is True


needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


@needs_bwrap
def test_first_start_as_non_root_is_sandboxed(nonroot_platform: Factory, tmp_path: Path) -> None:
    running = nonroot_platform()
    assert "WITHOUT the bubblewrap sandbox" not in running.log()
    module = tmp_path / "peek.py"
    module.write_text(PEEK)
    client = running.client()
    client.deploy(module, name="peek", handler="peek.peek")
    found = client.invoke("peek", {"data_dir": str(running.data_dir)})
    for name in ("master.key", "credentials.json", "cumulo.db", "keyhash.secret"):
        assert found[name] == "FileNotFoundError", found
    assert "credentials.json" not in found["listing"], found


request_cleanup: list[Path] = []


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    while request_cleanup:
        shutil.rmtree(request_cleanup.pop(), ignore_errors=True)


def nonroot_start(env_extra: dict[str, str], tmp_path: Path, *extra: str) -> str:
    """`cumulo up` as the unprivileged user of tests/security/conftest.py, expected to fail."""
    from tests.security.conftest import launcher_for, nonroot_ids

    if os.geteuid() == 0:
        uid, gid = nonroot_ids()
        # Under /tmp itself: pytest's own temporary directories are root's, 0700.
        base = Path(tempfile.mkdtemp(prefix="cumulo-start-", dir="/tmp"))
        request_cleanup.append(base)
        base.chmod(0o755)
        os.chown(base, uid, gid)
        launcher = launcher_for(uid, gid, base, base / "hold")
    else:
        base, launcher = tmp_path, []
    env = {**os.environ, **env_extra}
    return refused([*launcher, *up_command(base / "data", *extra)], env, base)


def test_non_root_with_a_broken_bubblewrap_refuses(tmp_path: Path) -> None:
    scripts = Path(tempfile.mkdtemp(prefix="cumulo-bwrap-", dir="/tmp"))
    request_cleanup.append(scripts)
    scripts.chmod(0o755)
    wrapper = scripts / "bwrap"
    wrapper.write_text(
        "#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n"
    )
    wrapper.chmod(0o755)
    line = nonroot_start({sandbox.BWRAP_ENV: str(wrapper)}, tmp_path)
    assert BROKEN_BWRAP in line, line
    assert "Permission denied" in line, line
    line = nonroot_start({sandbox.BWRAP_ENV: "/bin/false"}, tmp_path)
    assert BROKEN_BWRAP in line, line


def test_non_root_without_bubblewrap_refuses(tmp_path: Path) -> None:
    line = nonroot_start({sandbox.BWRAP_ENV: ""}, tmp_path)
    assert NONROOT_REFUSAL in line, line


def test_non_root_with_isolation_process_still_refuses(tmp_path: Path) -> None:
    """`process` would run functions as the gateway's own uid: never for a non-root one."""
    line = nonroot_start({sandbox.BWRAP_ENV: "/bin/false"}, tmp_path, "--isolation", "process")
    assert NONROOT_REFUSAL in line, line
