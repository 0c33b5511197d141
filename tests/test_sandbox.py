"""The worker sandbox and its corpus of malicious functions (tests/functions/malicious).

Each attack is deployed next to a healthy function that is invoked in a loop for the whole
attack: the attack must be contained, and the healthy function must answer 200 throughout.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform as host
import re
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from cumulo.client import Client
from cumulo.errors import FunctionCrashed, FunctionTimeout, PayloadTooLarge
from cumulo.runtime import sandbox
from cumulo.runtime.settings import RuntimeSettings
from tests.conftest import CUMULO, FUNCTIONS, RunningPlatform, free_port, wait_until

KIT = FUNCTIONS / "kit.py"
EVIL = FUNCTIONS / "malicious"
STATUS = sandbox.status(RuntimeSettings())
needs_bwrap = pytest.mark.skipif(not STATUS.sandboxed, reason=f"no sandbox: {STATUS.reason}")
needs_confinement = pytest.mark.skipif(
    not (STATUS.sandboxed or STATUS.drop_uid), reason="neither bubblewrap nor a root gateway"
)
_ns = itertools.count(1)


# ---------------------------------------------------------------- helpers
@contextlib.contextmanager
def healthy_alongside(running: RunningPlatform, name: str) -> Iterator[None]:
    """A healthy function invoked in a loop during the block; all answers must be 200."""
    healthy = f"{name}-healthy"
    running.client().deploy(KIT, name=healthy, handler="kit.echo", max_instances=2)
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        with running.http() as http:
            while not stop.is_set():
                statuses.append(http.post(f"/fn/default/{healthy}", json={"ok": 1}).status_code)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    wait_until(lambda: len(statuses) > 0, 30, "the healthy function to answer once")
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
    assert statuses, "the healthy function was never called"
    assert set(statuses) == {200}, f"the healthy function answered {sorted(set(statuses))}"
    assert running.client().invoke(healthy, {"after": True}) == {"after": True}


def proc_status(pid: int | str) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in fh if ":" in line)}


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (zombies are dead)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def worker_pids(client: Client, name: str) -> list[int]:
    return [w["pid"] for z in client.workers(name) for w in z["workers"]]


def in_background(action: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run `action` in a thread; its return value or exception lands in the list."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# ---------------------------------------------------------------- the corpus
def test_fork_bomb_is_capped_and_dies_with_its_worker(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    client.deploy(
        EVIL / "fork_bomb.py",
        name=unique_name,
        handler="fork_bomb.handler",
        timeout_s=3,
        max_instances=1,
    )
    with healthy_alongside(platform, unique_name):
        thread, outcome = in_background(lambda: client.invoke(unique_name, {}))
        wait_until(lambda: bool(worker_pids(client, unique_name)), 30, "the bomb's worker")
        worker = worker_pids(client, unique_name)[0]
        zygote = client.workers(unique_name)[0]["pid"]
        limit_line = next(
            line
            for line in Path(f"/proc/{zygote}/limits").read_text().splitlines()
            if line.startswith("Max processes")
        )
        nproc = int(limit_line.split()[2])
        peak = 0
        while thread.is_alive():
            peak = max(peak, len(group_members(worker)))
            thread.join(0.05)
        # Capped by processes (it spins until its timeout) or, where its copies fill the
        # version's memory first, by the OOM killer (502 out_of_memory, not a crash).
        assert isinstance(outcome[0], FunctionTimeout) or (
            isinstance(outcome[0], FunctionCrashed) and outcome[0].code == "out_of_memory"
        ), outcome[0]
    assert 1 < peak <= nproc, (peak, nproc)
    wait_until(lambda: group_members(worker) == [], 10, "every process of the bomb to be gone")
    if STATUS.drop_uid:
        uid = int(proc_status(zygote)["Uid"].split()[0])
        assert uid != 0
        assert nproc < 4096


def test_ten_gigabytes_is_a_502_out_of_memory(platform: RunningPlatform, unique_name: str) -> None:
    client = platform.client()
    client.deploy(EVIL / "memory_bomb.py", name=unique_name, handler="memory_bomb.handler")
    with healthy_alongside(platform, unique_name), pytest.raises(FunctionCrashed) as info:
        client.invoke(unique_name, {})
    assert info.value.code == "out_of_memory"


def test_busy_loop_times_out_with_504_and_its_worker_is_killed(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    client.deploy(EVIL / "busy_loop.py", name=unique_name, handler="busy_loop.handler", timeout_s=1)
    with healthy_alongside(platform, unique_name):
        thread, outcome = in_background(lambda: client.invoke(unique_name, {}))
        wait_until(lambda: bool(worker_pids(client, unique_name)), 30, "the spinning worker")
        worker = worker_pids(client, unique_name)[0]
        thread.join(30)
        assert isinstance(outcome[0], FunctionTimeout)
    wait_until(lambda: group_members(worker) == [], 10, "the spinning worker to die")


@pytest.mark.skipif(not (STATUS.sandboxed or STATUS.seccomp), reason="no network isolation")
def test_network_is_off_unless_the_function_declares_it(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    offline, online = f"{unique_name}-off", f"{unique_name}-on"
    client.deploy(EVIL / "network.py", name=offline, handler="network.offline")
    client.deploy(EVIL / "network.py", name=online, handler="network.online")
    accepted: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(5)
                    accepted.append(conn.recv(100))

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            with healthy_alongside(platform, unique_name):
                blocked = client.invoke(offline, {"port": port})
            assert blocked["connected"] is False, blocked
            assert accepted == []
            allowed = client.invoke(online, {"port": port})
            assert allowed == {"connected": True, "error": None}
            wait_until(lambda: accepted == [b"exfiltrated"], 10, "the declared connection")
        finally:
            stop.set()
            thread.join(5)


@needs_confinement
def test_the_data_dir_and_other_functions_code_are_out_of_reach(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    client.deploy(EVIL / "data_dir.py", name=unique_name, handler="data_dir.handler")
    other = f"{unique_name}-other"
    client.deploy(KIT, name=other, handler="kit.echo")
    other_code = next(path for path in (platform.data_dir / "code").glob("*/kit.py"))
    assert (platform.data_dir / "credentials.json").exists()
    with healthy_alongside(platform, unique_name):
        found = client.invoke(
            unique_name, {"data_dir": str(platform.data_dir), "other_code": str(other_code)}
        )
    for what in (
        "listing",
        "credentials.json",
        "cumulo.db",
        "keyhash.secret",
        "code_listing",
        "other_code",
    ):
        assert found[what]["ok"] is False, (what, found[what])
    assert found["own_code"]["ok"] is True
    assert "cmo_" not in orjson.dumps(found).decode()


def test_forged_frames_reach_no_other_tenant(platform: RunningPlatform, unique_name: str) -> None:
    canary = f"victim-secret-{uuid.uuid4().hex}"
    victim_ns = f"victim{next(_ns)}-{uuid.uuid4().hex[:6]}"
    victim = platform.client(namespace=victim_ns)
    victim.deploy(EVIL / "forge_frames.py", name="vault", handler="forge_frames.seed")
    assert victim.invoke("vault", {"value": canary}) == {"seeded": True}
    victim.set_secret("VICTIM", canary)
    client = platform.client()
    client.deploy(
        EVIL / "forge_frames.py",
        name=unique_name,
        handler="forge_frames.attack",
        secrets=["VICTIM"],
    )
    with healthy_alongside(platform, unique_name):
        loot = client.invoke(unique_name, {"namespace": victim_ns, "function": "vault"})
    assert canary not in orjson.dumps(loot).decode()
    get_claimed, get_path, list_claimed, list_all, incr, secrets, get_after = (
        r["reply"] for r in loot["replies"]
    )
    assert get_claimed == {"t": "rpr", "rid": get_claimed["rid"], "ok": True, "value": None}
    assert get_path["value"] is None
    assert list_claimed["value"] in ([], {})
    assert list_all["value"] in ([], {})
    assert incr["value"] == 1  # the attacker's own, fresh counter
    assert secrets["value"] == {}
    assert get_after["value"]["value"] == 1
    assert loot["own"] == 1
    # The victim's own state is untouched.
    assert victim.invoke("vault", {"value": canary}) == {"seeded": True}


def test_the_gateway_environment_never_reaches_a_worker(
    fresh_platform: Callable[..., RunningPlatform], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A well-formed master key (64 hex digits) the gateway really uses, and another secret.
    canary = uuid.uuid4().hex + uuid.uuid4().hex
    monkeypatch.setenv("CUMULO_MASTER_KEY", canary)
    monkeypatch.setenv("SOME_SECRET", canary)
    running = fresh_platform()
    assert canary in Path(f"/proc/{running.proc.pid}/environ").read_text(errors="replace")
    client = running.client()
    client.deploy(EVIL / "gateway_env.py", name="snoop", handler="gateway_env.handler")
    with healthy_alongside(running, "snoop"):
        found = client.invoke("snoop", {"gateway_pid": running.proc.pid})
    assert canary not in orjson.dumps(found).decode()
    assert "CUMULO_MASTER_KEY" not in found["environ"]
    assert "SOME_SECRET" not in found["environ"]
    assert found["gateway"]["ok"] is False
    if STATUS.sandboxed:
        # Its own pid namespace: the gateway is not even there.
        assert found["gateway"]["error"] == "FileNotFoundError"


@needs_bwrap
def test_writes_outside_tmp_fail_and_tmp_is_private(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    name = f"cumulo-pwned-{uuid.uuid4().hex}"
    marker = Path("/tmp") / f"cumulo-host-marker-{uuid.uuid4().hex}"
    marker.write_text("host")
    try:
        client = platform.client()
        client.deploy(
            EVIL / "write_outside_tmp.py", name=unique_name, handler="write_outside_tmp.handler"
        )
        with healthy_alongside(platform, unique_name):
            found = client.invoke(unique_name, {"name": name, "data_dir": str(platform.data_dir)})
    finally:
        marker.unlink()
    assert found["tmp"] == "private"
    assert marker.name not in found["tmp_listing"]
    assert not (Path("/tmp") / name).exists()
    for path, outcome in found["outside"].items():
        assert outcome in ("OSError", "PermissionError", "FileNotFoundError"), (path, outcome)
        assert not Path(path).exists(), path


def test_a_one_gigabyte_response_is_a_413_and_the_gateway_buffers_none_of_it(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    as_json, honest, raw = (f"{unique_name}-{kind}" for kind in ("json", "honest", "raw"))
    client.deploy(EVIL / "huge_response.py", name=as_json, handler="huge_response.as_json")
    client.deploy(
        EVIL / "huge_response.py",
        name=honest,
        handler="huge_response.honest",
        memory_mb=2048,
        timeout_s=60,
    )
    client.deploy(EVIL / "huge_response.py", name=raw, handler="huge_response.raw", timeout_s=60)

    def rss_mb() -> int:
        return int(proc_status(platform.proc.pid)["VmRSS"].split()[0]) // 1024

    before = rss_mb()
    with healthy_alongside(platform, unique_name):
        with pytest.raises(FunctionCrashed) as crashed:
            client.invoke(as_json, {})
        assert crashed.value.code == "out_of_memory"
        with pytest.raises(PayloadTooLarge) as info:
            client.invoke(honest, {})
        assert info.value.code == "response_too_large"
        with pytest.raises(PayloadTooLarge) as info:
            client.invoke(raw, {})
        assert info.value.code == "response_too_large"
    assert rss_mb() - before < 200


# ---------------------------------------------------------------- the sandbox itself
@needs_bwrap
def test_workers_run_confined_and_report_host_pids(
    platform: RunningPlatform, unique_name: str
) -> None:
    if host.machine() != "x86_64":
        pytest.skip("the probe uses x86_64 system call numbers")
    client = platform.client()
    client.deploy(EVIL / "syscalls.py", name=unique_name, handler="syscalls.handler")
    with healthy_alongside(platform, unique_name):
        found = client.invoke(unique_name, {})
    for call, error in found["errors"].items():
        assert error in ("Operation not permitted", "Function not implemented"), (call, error)
    assert found["no_new_privs"] == "1"
    assert found["seccomp"] == "2"
    # Its own pid namespace: the bubblewrap init, the zygote and its workers only.
    assert len(found["processes"]) <= 4
    assert max(found["processes"]) < 100
    # The API shows host pids; the worker's view of itself is its namespace pid.
    (pid,) = worker_pids(client, unique_name)
    nspids = proc_status(pid)["NSpid"].split()
    assert int(nspids[0]) == pid
    assert int(nspids[-1]) == found["pid"]
    if STATUS.drop_uid:
        assert found["uid"] != 0
        assert int(proc_status(pid)["Uid"].split()[0]) == found["uid"]


def test_auto_without_bubblewrap_warns_once_and_still_confines(
    fresh_platform: Callable[..., RunningPlatform], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sandbox.BWRAP_ENV, "/nonexistent/bwrap")
    running = fresh_platform()
    assert running.log().count("WARNING: functions run WITHOUT the bubblewrap sandbox") == 1
    client = running.client()
    client.deploy(KIT, name="who", handler="kit.whoami")
    reply = client.invoke("who", {})
    assert reply["version"] == "1"
    (pid,) = worker_pids(client, "who")
    status = proc_status(pid)
    assert status["NoNewPrivs"] == "1"
    if STATUS.seccomp:
        assert status["Seccomp"] == "2"
    if STATUS.drop_uid:
        assert int(status["Uid"].split()[0]) != 0
    assert "bwrap" not in Path(f"/proc/{status['PPid']}/cmdline").read_text()


def test_strict_refuses_to_start_without_bubblewrap(tmp_path: Path) -> None:
    env = {**os.environ, sandbox.BWRAP_ENV: "/nonexistent/bwrap"}
    result = subprocess.run(
        [
            CUMULO,
            "up",
            "--isolation",
            "strict",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert re.search(r"--isolation strict: the worker sandbox cannot be built", output), output


@needs_bwrap
def test_strict_starts_when_bubblewrap_works(
    fresh_platform: Callable[..., RunningPlatform],
) -> None:
    running = fresh_platform("--isolation", "strict")
    assert "WITHOUT the bubblewrap sandbox" not in running.log()
    running.client().deploy(KIT, name="echo", handler="kit.echo")
    assert running.client().invoke("echo", {"a": 1}) == {"a": 1}
    with httpx.Client(base_url=running.url, headers=running.headers) as http:
        assert http.get("/readyz").status_code == 200


@pytest.mark.skipif(os.geteuid() != 0, reason="running a process as another uid needs root")
def test_a_released_uid_still_running_processes_is_not_handed_out_again() -> None:
    # A zygote got the uid of one that had just died, whose processes were still being
    # killed: the kernel counted them against the new zygote's RLIMIT_NPROC, its first fork
    # failed and the zygote died with it (zygote_died for every waiting caller).
    pool = sandbox.UidPool(base=3_900_000, slots=4)
    pool.claimed, pool.base = True, 3_900_000  # a range of our own, without the lock file
    first = [pool.acquire() for _ in range(3)]
    assert first == [3_900_000, 3_900_001, 3_900_002]  # never-used uids, in order
    pool.release(3_900_001)
    with subprocess.Popen(["sleep", "60"], user=3_900_001) as straggler:
        try:
            with pytest.raises(OSError, match="all 3 private uids of this platform in use"):
                pool.acquire()
        finally:
            straggler.kill()
    assert pool.acquire() == 3_900_001  # its last process gone: free again
