"""Container-image functions (`cumulo deploy --image`, runtime/container_pool.py): images
built in the test (tests/images.py: BusyBox httpd as a hand-written OCI layout), run by
crun for real: deployed, invoked, scaled to zero and back, killed on timeout and on memory,
metered from their control group; and every kind of bad image refused with a clear 400."""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cumulo.errors import ApiError
from cumulo.runtime.oci_image import tools_missing
from tests import images
from tests.conftest import RunningPlatform, wait_until

WHY_NOT = tools_missing() or images.busybox_available()
pytestmark = [
    pytest.mark.skipif(WHY_NOT is not None, reason=f"container tools: {WHY_NOT}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="container functions need a root gateway"),
]


def _deploy_error(platform: RunningPlatform, ref: str, name: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        platform.client().deploy_image(ref, name=name)
    return caught.value


def test_deploy_invoke_and_logs(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    archive = images.httpd_image(tmp_path)
    client = platform.client()
    record = client.deploy_image(f"oci-archive:{archive}", name=unique_name)
    assert record["kind"] == "container"
    with platform.http() as http:
        first = http.get(f"/fn/default/{unique_name}/cgi-bin/hello", params={"x": "1"})
        assert first.status_code == 200, first.text
        assert first.json() == {"hello": "container", "method": "GET", "query": "x=1"}
        assert first.headers["x-cumulo-start"] == "cold"
        page = http.get(f"/fn/default/{unique_name}/index.html")
        assert page.status_code == 200
        assert page.text == "hello from a container\n"
        assert page.headers["x-cumulo-start"] == "warm"
        logged = http.get(f"/fn/default/{unique_name}/cgi-bin/log", params={"q": "marker7"})
        assert logged.text == "logged"
        # Confined: the container's root is no host root, holds no capability, no new privs.
        who = http.get(f"/fn/default/{unique_name}/cgi-bin/whoami").text.split()
        assert who[0] == "0"  # root inside its user namespace...
        assert who[who.index("CapEff:") + 1] == "0000000000000000"  # ...with nothing of root
        assert who[who.index("NoNewPrivs:") + 1] == "1"
        # No network but loopback without `network`.
        assert http.get(f"/fn/default/{unique_name}/cgi-bin/net").text.split() == ["lo"]
    # stderr of the container (the CGI's) lands in `cumulo logs`.
    wait_until(
        lambda: any(
            "cgi-log-line q=marker7" in line["message"] for line in client.logs(unique_name)
        ),
        10,
        "the container's stderr in the function's logs",
    )
    # Identical redeploy: the same version (the image is content-addressed).
    again = client.deploy_image(f"oci-archive:{archive}", name=unique_name)
    assert again["unchanged"]
    assert again["version"] == record["version"]


def test_oci_dir_and_docker_archive(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    images.write_layout(layout, entrypoint=images.HTTPD, tag="v1")
    client = platform.client()
    client.deploy_image(f"oci:{layout}:v1", name=unique_name)
    docker = images.docker_archive(layout, tmp_path / "docker.tar", tag="v1")
    client.deploy_image(f"docker-archive:{docker}", name=f"{unique_name}-d")
    with platform.http() as http:
        for name in (unique_name, f"{unique_name}-d"):
            reply = http.get(f"/fn/default/{name}/cgi-bin/hello")
            assert reply.status_code == 200, reply.text
            assert reply.json()["hello"] == "container"
    error = _deploy_error(platform, f"oci:{layout}:nope", f"{unique_name}-x")
    assert (error.status, error.code) == (400, "image_tag_not_found")


def test_scales_to_zero_and_back(
    fresh_platform: Callable[..., RunningPlatform], tmp_path: Path
) -> None:
    running = fresh_platform("--idle-timeout", "1")
    client = running.client()
    client.deploy_image(f"oci-archive:{images.httpd_image(tmp_path)}", name="ctr-idle")
    with running.http() as http:
        assert http.get("/fn/default/ctr-idle/").status_code == 200
        [instance] = client.workers("ctr-idle")[0]["workers"]
        wait_until(
            lambda: not any(p["workers"] for p in client.workers("ctr-idle")),
            15,
            "the idle container to stop",
        )
        again = http.get("/fn/default/ctr-idle/cgi-bin/hello")
        assert again.status_code == 200, again.text
        assert again.headers["x-cumulo-start"] == "cold"
        [restarted] = client.workers("ctr-idle")[0]["workers"]
        assert restarted["pid"] != instance["pid"]


def test_timeout_is_504_and_the_container_is_replaced(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    client = platform.client()
    client.deploy_image(
        f"oci-archive:{images.httpd_image(tmp_path)}", name=unique_name, timeout_s=2
    )
    with platform.http() as http:
        assert http.get(f"/fn/default/{unique_name}/").status_code == 200
        before = client.workers(unique_name)[0]["workers"][0]["pid"]
        started = time.monotonic()
        hung = http.get(f"/fn/default/{unique_name}/cgi-bin/slow")
        assert hung.status_code == 504, hung.text
        assert hung.json()["error"]["code"] == "function_timeout"
        assert time.monotonic() - started < 10
        after = http.get(f"/fn/default/{unique_name}/")
        assert after.status_code == 200, after.text
        assert after.headers["x-cumulo-start"] == "cold"
        assert client.workers(unique_name)[0]["workers"][0]["pid"] != before


def test_out_of_memory_is_502(platform: RunningPlatform, unique_name: str, tmp_path: Path) -> None:
    client = platform.client()
    client.deploy_image(
        f"oci-archive:{images.httpd_image(tmp_path)}", name=unique_name, memory_mb=64
    )
    with platform.http() as http:
        hog = http.get(f"/fn/default/{unique_name}/cgi-bin/hog")
        assert hog.status_code == 502, hog.text
        assert hog.json()["error"]["code"] == "out_of_memory"
        assert "\n" not in hog.json()["error"]["message"]
        fine = http.get(f"/fn/default/{unique_name}/cgi-bin/hello")
        assert fine.status_code == 200, fine.text


def test_metering_reports_cgroup_cpu_and_memory(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    client = platform.client()
    client.deploy_image(f"oci-archive:{images.httpd_image(tmp_path)}", name=unique_name)
    with platform.http() as http:
        for _ in range(3):
            assert http.get(f"/fn/default/{unique_name}/cgi-bin/hello").status_code == 200

    def metered() -> bool:
        usage = client.request("GET", "/v1/usage", params={"namespace": "default"}).json()
        for row in usage["rows"]:
            if row["function"] == unique_name:
                # The container's CPU from its control group (a CGI forks a shell per call).
                return bool(row["invocations"] == 3 and row["cpu_seconds"] > 0)
        return False

    wait_until(metered, 15, "CPU and memory of the container in metering")


def test_server_that_never_listens_fails_in_bounded_time(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    archive = images.httpd_image(tmp_path, entrypoint=["/bin/busybox", "sleep", "600"])
    platform.client().deploy_image(f"oci-archive:{archive}", name=unique_name, timeout_s=2)
    with platform.http() as http:
        started = time.monotonic()
        reply = http.get(f"/fn/default/{unique_name}/", timeout=30)
        assert reply.status_code == 502, reply.text
        assert reply.json()["error"]["code"] == "start_timeout"
        assert "$PORT" in reply.json()["error"]["message"]
        assert time.monotonic() - started < 15


def test_entrypoint_that_exits_is_start_failed(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    archive = images.httpd_image(tmp_path, entrypoint=["/bin/busybox", "false"])
    platform.client().deploy_image(f"oci-archive:{archive}", name=unique_name)
    with platform.http() as http:
        reply = http.get(f"/fn/default/{unique_name}/")
        assert reply.status_code == 502, reply.text
        assert reply.json()["error"]["code"] == "start_failed"


# ----------------------------------------------------------------- bad images: 400s


def test_a_file_that_is_not_an_image(platform: RunningPlatform, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive at all" * 100)
    error = _deploy_error(platform, f"oci-archive:{junk}", "junk")
    assert (error.status, error.code) == (400, "not_an_image")
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(__file__, arcname="readme.txt")
    error = _deploy_error(platform, f"oci-archive:{plain}", "plain")
    assert (error.status, error.code) == (400, "not_an_image")
    error = _deploy_error(platform, f"docker-archive:{junk}", "junk-d")
    assert (error.status, error.code) == (400, "not_an_image")
    assert "\n" not in error.message


def test_a_tampered_layer(platform: RunningPlatform, tmp_path: Path) -> None:
    archive = images.httpd_image(tmp_path, tamper=True)
    error = _deploy_error(platform, f"oci-archive:{archive}", "tampered")
    assert (error.status, error.code) == (400, "digest_mismatch")
    assert "does not match its digest" in error.message


def test_an_image_without_entrypoint(platform: RunningPlatform, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    images.write_layout(layout)  # no Entrypoint, no Cmd
    archive = images.oci_archive(layout, tmp_path / "noentry.tar")
    error = _deploy_error(platform, f"oci-archive:{archive}", "noentry")
    assert (error.status, error.code) == (400, "no_entrypoint")


def test_an_image_over_the_limit(
    fresh_platform: Callable[..., RunningPlatform], tmp_path: Path
) -> None:
    running = fresh_platform("--max-image-mb", "3")
    layer = images.busybox_layer()
    # Compresses to nearly nothing, unpacks past the limit: a bomb stops while it is read.
    layer.files["big.bin"] = (0o644, bytes(4 * 1024 * 1024))
    archive = images.httpd_image(tmp_path, layers=[layer])
    with pytest.raises(ApiError) as caught:
        running.client().deploy_image(f"oci-archive:{archive}", name="big")
    assert (caught.value.status, caught.value.code) == (400, "image_too_large")
    assert "3 MB" in caught.value.message


def test_hostile_layers_are_refused(platform: RunningPlatform, tmp_path: Path) -> None:
    for n, (kind, name, link) in enumerate(
        [
            (tarfile.CHRTYPE, "dev/evil", ""),
            (tarfile.REGTYPE, "../../escape", ""),
            (tarfile.LNKTYPE, "bin/passwd", "../../../etc/shadow"),
        ]
    ):
        layer = images.busybox_layer()
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        if kind == tarfile.CHRTYPE:
            info.devmajor, info.devminor = 1, 3
        layer.raw.append((info, b"" if kind == tarfile.REGTYPE else None))
        archive = images.httpd_image(tmp_path, name=f"hostile{n}", layers=[layer])
        error = _deploy_error(platform, f"oci-archive:{archive}", f"hostile{n}")
        assert (error.status, error.code) == (400, "unsafe_image"), name


def test_setuid_bits_are_cleared(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    layer = images.busybox_layer()
    layer.files["bin/suid"] = (0o4755, b"#!/bin/sh\n")
    platform.client().deploy_image(
        f"oci-archive:{images.httpd_image(tmp_path, layers=[layer])}", name=unique_name
    )
    found = list((platform.data_dir / "images").glob("*/bundle/rootfs/bin/suid"))
    assert found
    assert all(not (p.stat().st_mode & 0o6000) for p in found)


def test_registry_references_are_refused(platform: RunningPlatform) -> None:
    error = _deploy_error(platform, "docker://debian:bookworm", "reg")
    assert (error.status, error.code) == (400, "not_an_image")
    assert "skopeo copy" in error.message


def test_network_setting_gives_the_hosts_network(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    archive = images.httpd_image(tmp_path)
    platform.client().deploy_image(f"oci-archive:{archive}", name=unique_name, network=True)
    with platform.http() as http:
        reply = http.get(f"/fn/default/{unique_name}/cgi-bin/net")
        assert reply.status_code == 200, reply.text
        interfaces = reply.text.split()
        assert "lo" in interfaces
        assert len(interfaces) > 1  # the host's interfaces, not a namespace of its own


def test_scaled_by_concurrency(platform: RunningPlatform, unique_name: str, tmp_path: Path) -> None:
    client = platform.client()
    client.deploy_image(
        f"oci-archive:{images.httpd_image(tmp_path)}", name=unique_name, concurrency=1, timeout_s=2
    )
    with platform.http() as http:
        assert http.get(f"/fn/default/{unique_name}/").status_code == 200

    # Two slow calls at once with concurrency 1: a second container starts for the second.
    def slow() -> int:
        with platform.http() as http:
            return http.get(f"/fn/default/{unique_name}/cgi-bin/slow").status_code

    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(slow) for _ in range(2)]
        wait_until(
            lambda: len(client.workers(unique_name)[0]["workers"]) == 2,
            10,
            "a second container for the second concurrent call",
        )
        assert [c.result() for c in calls] == [504, 504]


def test_cli_deploy_image(platform: RunningPlatform, unique_name: str, tmp_path: Path) -> None:
    archive = images.httpd_image(tmp_path)
    done = platform.cli("deploy", "--image", f"oci-archive:{archive}", "--name", unique_name)
    assert done.returncode == 0, done.stderr
    assert f"deployed {unique_name} version 1" in done.stdout
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"junk")
    failed = platform.cli("deploy", "--image", f"oci-archive:{junk}", "--name", unique_name)
    assert failed.returncode == 1
    assert "not an image" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    both = platform.cli("deploy", str(tmp_path), "--image", f"oci-archive:{archive}")
    assert both.returncode == 1
