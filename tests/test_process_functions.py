"""Any-language functions (cumulo.toml `command`, runtime/process_pool.py), with a real
Node.js server: started on demand, proxied to, scaled to zero, replaced after a crash."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from cumulo.errors import BadRequest
from cumulo.runtime import sandbox
from cumulo.runtime.settings import RuntimeSettings
from tests.conftest import FUNCTIONS, RunningPlatform, wait_until

NODE_SERVER = FUNCTIONS / "node_server"

SANDBOX = sandbox.status(RuntimeSettings())

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed"),
    pytest.mark.skipif(
        SANDBOX.drop_uid and not SANDBOX.sandboxed,
        reason="a root gateway runs process functions only inside bubblewrap",
    ),
]


def test_node_function_serves_get_and_post(platform: RunningPlatform, unique_name: str) -> None:
    record = platform.client().deploy(NODE_SERVER, name=unique_name)
    assert record["kind"] == "process"
    with platform.http() as http:
        first = http.get(f"/fn/default/{unique_name}/hello", params={"x": "1"})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["method"] == "GET"
        assert body["path"] == "/hello"
        assert body["query"] == {"x": "1"}
        assert body["node"].startswith("v")
        assert body["greeting"] == "hi from toml"
        assert body["invocation"] == first.headers["x-cumulo-invocation-id"]
        assert first.headers["x-served-by"] == "node"
        assert first.headers["x-cumulo-start"] == "cold"
        posted = http.post(f"/fn/default/{unique_name}/items", json={"name": "widget", "n": 3})
        assert posted.status_code == 200, posted.text
        assert posted.json()["method"] == "POST"
        assert posted.json()["body"] == {"name": "widget", "n": 3}
        assert posted.json()["pid"] == body["pid"]
        assert posted.headers["x-cumulo-start"] == "warm"
        assert http.get(f"/fn/default/{unique_name}/teapot").status_code == 418


def test_node_function_scales_to_zero_and_back(
    fresh_platform: Callable[..., RunningPlatform],
) -> None:
    running = fresh_platform("--idle-timeout", "1")
    client = running.client()
    client.deploy(NODE_SERVER, name="node-idle")
    with running.http() as http:
        first = http.get("/fn/default/node-idle/")
        assert first.status_code == 200, first.text
        [instance] = client.workers("node-idle")[0]["workers"]
        wait_until(
            lambda: not any(z["workers"] for z in client.workers("node-idle")),
            15,
            "the idle node process to stop",
        )
        again = http.get("/fn/default/node-idle/")
        assert again.status_code == 200, again.text
        assert again.headers["x-cumulo-start"] == "cold"
        [restarted] = client.workers("node-idle")[0]["workers"]
        assert restarted["pid"] != instance["pid"]


def test_crash_is_502_and_the_next_call_starts_a_new_process(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    client.deploy(NODE_SERVER, name=unique_name)
    with platform.http() as http:
        assert http.get(f"/fn/default/{unique_name}/").status_code == 200
        before = client.workers(unique_name)[0]["workers"][0]["pid"]
        crashed = http.get(f"/fn/default/{unique_name}/crash")
        assert crashed.status_code == 502, crashed.text
        assert crashed.json()["error"]["code"] == "function_crashed"
        assert "exited with code 3" in crashed.json()["error"]["message"]
        after = http.get(f"/fn/default/{unique_name}/")
        assert after.status_code == 200, after.text
        assert after.headers["x-cumulo-start"] == "cold"
        assert client.workers(unique_name)[0]["workers"][0]["pid"] != before


def test_hanging_handler_is_504_and_the_process_is_replaced(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    client.deploy(NODE_SERVER, name=unique_name)
    with platform.http() as http:
        assert http.get(f"/fn/default/{unique_name}/").status_code == 200
        before = client.workers(unique_name)[0]["workers"][0]["pid"]
        hung = http.get(f"/fn/default/{unique_name}/hang")
        assert hung.status_code == 504, hung.text
        assert hung.json()["error"]["code"] == "function_timeout"
        after = http.get(f"/fn/default/{unique_name}/")
        assert after.status_code == 200, after.text
        assert client.workers(unique_name)[0]["workers"][0]["pid"] != before


def test_no_outbound_network_unless_declared(platform: RunningPlatform, unique_name: str) -> None:
    if not SANDBOX.sandboxed:
        pytest.skip("network isolation of process functions needs bubblewrap")
    platform.client().deploy(NODE_SERVER, name=unique_name)
    with socket.socket() as listener, platform.http() as http:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        reply = http.get(f"/fn/default/{unique_name}/connect", params={"port": str(port)})
        assert reply.status_code == 200, reply.text
        assert reply.json()["connected"] is False


def test_bad_manifests_are_refused(platform: RunningPlatform, tmp_path: Path) -> None:
    client = platform.client()
    (tmp_path / "server.js").write_text("")
    manifest = tmp_path / "cumulo.toml"
    manifest.write_text('command = ["no-such-program-xyz"]\n')
    with pytest.raises(BadRequest, match="not installed"):
        client.deploy(tmp_path, name="bad-manifest")
    manifest.write_text('command = ["node", "server.js"]\nbogus = 1\n')
    with pytest.raises(BadRequest, match="unknown setting bogus"):
        client.deploy(tmp_path, name="bad-manifest")
    manifest.write_text('command = ["node", "server.js"]\n')
    with pytest.raises(BadRequest, match="needs a name"):
        client.deploy(tmp_path)


def test_a_root_gateway_without_bubblewrap_refuses_them(
    fresh_platform: Callable[..., RunningPlatform], monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a root gateway drops to a uid that cannot reach the data dir")
    monkeypatch.setenv("CUMULO_BWRAP", "")  # the platform below runs without bubblewrap
    running = fresh_platform()
    with pytest.raises(BadRequest, match="bubblewrap") as caught:
        running.client().deploy(NODE_SERVER, name="no-sandbox")
    assert caught.value.code == "sandbox_unavailable"
