"""The `cumulo` command against a real platform: output and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import FUNCTIONS, RunningPlatform

KIT = FUNCTIONS / "kit.py"


def test_deploy_invoke_versions_traffic_rollback_rm(
    platform: RunningPlatform, unique_name: str
) -> None:
    deployed = platform.cli("deploy", str(KIT), "--name", unique_name, "--handler", "kit.whoami")
    assert deployed.returncode == 0, deployed.stderr
    assert f"deployed {unique_name} version 1" in deployed.stdout
    platform.cli(
        "deploy",
        str(KIT),
        "--name",
        unique_name,
        "--handler",
        "kit.whoami",
        "--env",
        "MODE=two",
        "--no-promote",
    )
    invoked = platform.cli("invoke", unique_name, "--data", "{}")
    assert json.loads(invoked.stdout)["version"] == "1"
    split = platform.cli("traffic", unique_name, "1=10", "2=90")
    assert split.stdout.strip() == f"{unique_name}: v1=10%, v2=90%"
    versions = platform.cli("versions", unique_name)
    assert "kit.whoami" in versions.stdout
    assert "90%" in versions.stdout
    listed = platform.cli("ls")
    assert unique_name in listed.stdout
    rolled = platform.cli("rollback", unique_name)
    assert rolled.stdout.strip() == f"{unique_name}: v1=100%"
    removed = platform.cli("rm", unique_name, "--yes")
    assert removed.returncode == 0
    assert platform.cli("versions", unique_name).returncode == 1


def test_errors_are_one_line_and_exit_nonzero(platform: RunningPlatform) -> None:
    cases = [
        (("invoke", "no-such-function"), "function 'no-such-function' not found"),
        (("invoke", "x", "--data", "{oops"), "--data is not valid JSON"),
        (("traffic", "x", "1=abc"), "whole numbers"),
        (("deploy", "/nonexistent/file.py"), "does not exist"),
        (("deploy", str(FUNCTIONS / "broken_syntax.py")), "SyntaxError"),
        (("keys", "create", "--scope", "everything"), "scopes must be some of"),
    ]
    for args, message in cases:
        result = platform.cli(*args)
        assert result.returncode == 1, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_no_credentials_is_a_clear_error(tmp_path: object) -> None:
    import os
    import subprocess

    from tests.conftest import CUMULO

    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env["XDG_CONFIG_HOME"] = str(Path(str(tmp_path)) / "config")  # no saved contexts
    result = subprocess.run(
        [CUMULO, "ls"], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=30
    )
    assert result.returncode == 1
    assert result.stderr == (
        "error: no credentials: run `cumulo login URL`, start `cumulo up` here, "
        "or set CUMULO_URL and CUMULO_API_KEY\n"
    )


def test_secrets_and_keys(platform: RunningPlatform) -> None:
    assert platform.cli("secrets", "set", "CLI_SECRET", input="from-stdin\n").returncode == 0
    listed = platform.cli("secrets", "ls")
    assert "CLI_SECRET" in listed.stdout
    assert "from-stdin" not in listed.stdout
    assert platform.cli("secrets", "rm", "CLI_SECRET").returncode == 0
    created = platform.cli("keys", "create", "--scope", "invoke", "--expires", "30d")
    assert created.returncode == 0
    key_line = next(line for line in created.stdout.splitlines() if line.startswith("key:"))
    key = key_line.split()[1]
    key_id = created.stdout.split()[1]
    listed_keys = platform.cli("keys", "ls").stdout
    assert key_id in listed_keys
    assert key not in listed_keys
    assert platform.cli("keys", "revoke", key_id).returncode == 0


def test_logs_prints_lines_with_invocation_ids(platform: RunningPlatform, unique_name: str) -> None:
    platform.cli("deploy", str(KIT), "--name", unique_name, "--handler", "kit.talk")
    invoked = platform.client().invoke_raw(unique_name, {"order": 7})
    iid = invoked.headers["x-cumulo-invocation-id"]
    out = platform.cli("logs", unique_name).stdout
    assert "structured line order=7" in out
    assert "a printed line" in out
    assert iid[:12] in out


def test_logs_follow_prints_new_lines_as_they_happen(
    platform: RunningPlatform, unique_name: str
) -> None:
    import os
    import subprocess
    import threading

    from tests.conftest import CUMULO, wait_until

    client = platform.client()
    client.deploy(KIT, name=unique_name, handler="kit.talk")
    env = {**os.environ, "CUMULO_URL": platform.url, "CUMULO_API_KEY": platform.api_key}
    seen: list[str] = []
    with subprocess.Popen(
        [CUMULO, "logs", unique_name, "-f"], stdout=subprocess.PIPE, text=True, env=env
    ) as follower:
        assert follower.stdout is not None
        stdout = follower.stdout
        reader = threading.Thread(target=lambda: seen.extend(stdout), daemon=True)
        reader.start()

        def followed(order: int) -> bool:
            client.invoke(unique_name, {"order": order})
            return any(f"order={order}" in line for line in list(seen))

        try:
            wait_until(lambda: followed(99), 10, "the followed line")
        finally:
            follower.terminate()
            reader.join(10)
