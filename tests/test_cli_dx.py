"""The CLI's first hour (issue 17): idempotent deploys, a demo that leaves your functions
alone, contexts from any directory, failures with the user's traceback, and the exact
words of each message."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CUMULO, FUNCTIONS, RunningPlatform

KIT = FUNCTIONS / "kit.py"
BOOM = FUNCTIONS / "dx_boom.py"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_cli(
    *args: str,
    env: dict[str, str],
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CUMULO, *args], capture_output=True, text=True, env=env, cwd=cwd, input=input, timeout=120
    )


def bare_env(config_home: Path) -> dict[str, str]:
    """A user's shell: no CUMULO_* variables, contexts in `config_home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env["XDG_CONFIG_HOME"] = str(config_home)
    return env


# ---------------------------------------------------------------- idempotent deploys
def test_redeploying_the_same_bundle_is_unchanged(
    platform: RunningPlatform, unique_name: str
) -> None:
    args = ("deploy", str(KIT), "--name", unique_name, "--handler", "kit.whoami")
    first = platform.cli(*args)
    assert first.stdout == (
        f"deployed {unique_name} version 1 (live: v1=100%)\n"
        f"{platform.url}/fn/default/{unique_name}\n"
    )
    again = platform.cli(*args)
    assert again.returncode == 0, again.stderr
    assert again.stdout == (
        f"unchanged {unique_name} version 1 (live: v1=100%)\n"
        f"{platform.url}/fn/default/{unique_name}\n"
    )
    changed = platform.cli(*args, "--env", "MODE=two")
    assert changed.stdout.startswith(f"deployed {unique_name} version 2 (live: v2=100%)\n")
    versions = platform.client().versions(unique_name)["versions"]
    assert [v["version"] for v in versions] == [1, 2]


def test_unchanged_redeploy_with_promote_moves_live_back(
    platform: RunningPlatform, unique_name: str
) -> None:
    args = ("deploy", str(KIT), "--name", unique_name, "--handler", "kit.whoami")
    platform.cli(*args)
    platform.cli(*args, "--env", "MODE=two", "--no-promote")
    assert platform.cli("traffic", unique_name, "1=50", "2=50").returncode == 0
    same_as_v2 = platform.cli(*args, "--env", "MODE=two")
    assert same_as_v2.stdout.startswith(f"unchanged {unique_name} version 2 (live: v2=100%)\n")


def test_lambda_handler_is_named_after_its_module(platform: RunningPlatform) -> None:
    deployed = platform.cli("deploy", str(FUNCTIONS / "lam.py"), "--handler", "lam.handler")
    assert deployed.stdout.startswith("deployed lam version ")
    assert platform.cli("rm", "lam", "--yes").stdout == "removed lam\n"


# ---------------------------------------------------------------- the demo
def test_demo_restart_never_moves_a_live_alias_it_did_not_create(
    fresh_platform: Callable[..., RunningPlatform], tmp_path: Path
) -> None:
    # Started outside the repository: the examples come from the installed package.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The user's own `echo`, deployed before the demo ever ran, under a demo's name.
    first = fresh_platform(cwd=elsewhere)
    first.client().deploy(KIT, name="echo", handler="kit.whoami")
    first.stop()
    demo = fresh_platform("--demo", cwd=elsewhere)
    c = demo.client()
    names = {f["name"] for f in c.functions()}
    assert {"hello", "webhook", "echo"} <= names
    assert [v["handler"] for v in c.versions("echo")["versions"]] == ["kit.whoami"]
    # The README's user redeploys `hello` with their own code: version 2, live.
    mine = c.deploy(KIT, name="hello", handler="kit.whoami")
    assert mine["version"] == 2
    hello_v = {v["version"]: v["bundle_sha256"] for v in c.versions("webhook")["versions"]}
    demo.stop()
    again = fresh_platform("--demo", cwd=elsewhere)
    c = again.client()
    assert c.versions("hello")["traffic"] == {"2": 100}
    assert [v["version"] for v in c.versions("hello")["versions"]] == [1, 2]
    assert [v["handler"] for v in c.versions("echo")["versions"]] == ["kit.whoami"]
    # The demo's own, unchanged: the same version, not a new one per restart.
    assert {v["version"]: v["bundle_sha256"] for v in c.versions("webhook")["versions"]} == (
        hello_v
    )
    assert "demo hello left alone: the function is not the demo's" in again.log()


# ---------------------------------------------------------------- failures
def test_failed_invoke_shows_status_id_and_the_user_traceback(
    platform: RunningPlatform, unique_name: str
) -> None:
    platform.cli("deploy", str(BOOM), "--name", unique_name)
    failed = platform.cli("invoke", unique_name, "--data", '{"x": 0}')
    assert failed.returncode == 1
    assert failed.stdout == ""
    match = re.search(r"invocation ([0-9a-f]{24})", failed.stderr)
    assert match, failed.stderr
    iid = match.group(1)
    assert failed.stderr == (
        "Traceback (most recent call last):\n"
        '  File "dx_boom.py", line 12, in dx_boom\n'
        '    return {"r": helper(event.get("x", 0))}\n'
        "                 ^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "dx_boom.py", line 7, in helper\n'
        "    return 1 / x\n"
        "           ~~^~~\n"
        "ZeroDivisionError: division by zero\n"
        f"error: 500 function_error, invocation {iid}: ZeroDivisionError: division by zero\n"
    )
    assert "cumulo/" not in failed.stderr  # the user's frames only
    logs = platform.cli("logs", unique_name).stdout
    assert f"{iid[:12]} error   invocation failed: 500 function_error: " in logs
    assert 'File "dx_boom.py", line 7, in helper' in logs
    record = json.loads(platform.cli("invocations", "get", iid, "-o", "json").stdout)
    assert (record["id"], record["status"], record["code"]) == (iid, 500, "function_error")
    assert any("ZeroDivisionError" in line["message"] for line in record["logs"])
    listed = json.loads(platform.cli("invocations", "ls", unique_name, "-o", "json").stdout)
    assert iid in [i["id"] for i in listed]


def test_one_line_errors_word_for_word(platform: RunningPlatform, tmp_path: Path) -> None:
    cases = [
        (
            ("invoke", "x", "--data", "@/nonexistent.json"),
            "error: cannot read /nonexistent.json: No such file or directory\n",
        ),
        (("invoke", "no-such-fn"), "error: function 'no-such-fn' not found\n"),
        (("ls", "-o", "yaml"), "error: -o takes table or json, not 'yaml'\n"),
        (
            ("rm", "anything"),
            "error: Remove anything with all its versions and state? Pass --yes to confirm "
            "(stdin is not a terminal)\n",
        ),
        (
            ("privacy", "erase", "user:x"),
            "error: Erase user:x for good? Pass --yes to confirm (stdin is not a terminal)\n",
        ),
        (
            ("context", "show", "--field", "password"),
            "error: --field takes url, api_key or source, not 'password'\n",
        ),
    ]
    for args, message in cases:
        result = platform.cli(*args)
        assert result.returncode == 1, args
        assert result.stderr == message, (args, result.stderr)
    empty = platform.cli("secrets", "set", "EMPTY", input="\n")
    assert empty.stderr == "error: refusing an empty value for secret EMPTY\n"


def test_version_and_help(platform: RunningPlatform) -> None:
    from cumulo import __version__
    from cumulo.cli.app import app
    from cumulo.cli.main import HELP

    assert platform.cli("--version").stdout == f"cumulo {__version__}\n"
    assert platform.cli("--help").stdout == HELP
    assert platform.cli().stdout == HELP
    # The fast path's help lists exactly the commands the full CLI has.
    import typer.main

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    names = set(group.commands)
    listed = set(re.findall(r"^  ([a-z]+)  ", HELP.split("Options:")[0], flags=re.MULTILINE))
    assert listed == names
    assert "<bool>" not in platform.cli("deploy", "--help").stdout


def test_lists_take_output_json(platform: RunningPlatform, unique_name: str) -> None:
    platform.cli("deploy", str(KIT), "--name", unique_name, "--handler", "kit.whoami")
    functions = json.loads(platform.cli("ls", "-o", "json").stdout)
    assert unique_name in [f["name"] for f in functions]
    versions = json.loads(platform.cli("versions", unique_name, "-o", "json").stdout)
    assert versions[0]["version"] == 1
    keys = platform.cli("keys", "ls").stdout.splitlines()[0].split()
    assert keys == ["ID", "NAMESPACE", "SCOPES", "NAME", "CREATED", "EXPIRES", "REVOKED"]
    assert isinstance(json.loads(platform.cli("keys", "ls", "-o", "json").stdout), list)
    assert isinstance(json.loads(platform.cli("secrets", "ls", "-o", "json").stdout), list)
    created = platform.cli("versions", unique_name).stdout.splitlines()[1]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+s ago\)$", created), created


# ---------------------------------------------------------------- contexts
def test_login_saves_a_context_used_from_anywhere(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    config_home = tmp_path / "config"
    env = bare_env(config_home)
    anywhere = tmp_path / "anywhere"
    anywhere.mkdir()
    refused = run_cli("login", platform.url, env=env, input="cmo_wrong\n")
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: {platform.url} refused the key (401): check it, or create one with "
        "`cumulo keys create`\n"
    )
    logged = run_cli("login", platform.url, "--name", "dev", env=env, input=platform.api_key)
    config = config_home / "cumulo" / "config.toml"
    assert logged.stdout == f"logged in to {platform.url} as context dev (saved in {config})\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert platform.api_key not in logged.stdout + logged.stderr
    assert run_cli("ls", env=env, cwd=anywhere).returncode == 0
    shown = run_cli("context", "show", env=env, cwd=anywhere)
    assert shown.stdout == f"url:     {platform.url}\nsource:  context dev\n"
    key = run_cli("context", "show", "--field", "api_key", env=env).stdout
    assert key == platform.api_key + "\n"
    listed = run_cli("context", "ls", env=env).stdout.splitlines()
    assert listed == ["CURRENT  NAME  URL", f"*        dev   {platform.url}"]
    unknown = run_cli("context", "use", "prod", env=env)
    assert unknown.stderr == "error: no context 'prod' (not saved); known contexts: dev\n"
    # Precedence: the env variables beat the current context; --context beats both.
    env_wins = run_cli("ls", env={**env, "CUMULO_URL": "http://127.0.0.1:9", "CUMULO_API_KEY": "k"})
    assert env_wins.stderr.startswith("error: cannot reach http://127.0.0.1:9")
    flag_wins = run_cli("--context", "dev", "ls", env={**env, "CUMULO_URL": "http://127.0.0.1:9"})
    assert flag_wins.returncode == 0, flag_wins.stderr
    missing = run_cli("invoke", "x", env={**env, "CUMULO_CONTEXT": "nope"})
    assert missing.stderr == (
        "error: no context 'nope' (from CUMULO_CONTEXT); known contexts: dev\n"
    )


def test_up_registers_its_platform_as_a_context(
    fresh_platform: Callable[..., RunningPlatform],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    running = fresh_platform()
    config = config_home / "cumulo" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    port = running.url.rsplit(":", 1)[1]
    name = f"local-127.0.0.1-{port}"
    assert f"and as context {name} in {config}" in running.log()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = bare_env(config_home)
    listed = run_cli("context", "ls", "-o", "json", env=env, cwd=elsewhere)
    assert json.loads(listed.stdout) == [{"current": True, "name": name, "url": running.url}]
    assert run_cli("ls", env=env, cwd=elsewhere).returncode == 0


# ---------------------------------------------------------------- progress
def test_long_work_prints_plain_progress_lines_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from rich.console import Console

    from cumulo.cli import progress
    from tests.conftest import wait_until

    monkeypatch.setattr(progress, "PLAIN_AFTER_S", 0.05)
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.05)
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False)
    with progress.progress(console, "deploying x.py: building its environment") as update:
        wait_until(lambda: "building" in buffer.getvalue(), 10, "a first progress line")
        update("deploying x.py: validating")
        wait_until(lambda: "validating" in buffer.getvalue(), 10, "the updated line")
    lines = buffer.getvalue().splitlines()
    assert re.fullmatch(r"deploying x\.py: building its environment \(\d+s\)", lines[0])
    assert re.fullmatch(r"deploying x\.py: validating \(\d+s\)", lines[-1])
    quick = io.StringIO()
    with progress.progress(Console(file=quick, force_terminal=False), "quick"):
        pass
    assert quick.getvalue() == ""  # short work prints nothing of its own
