"""One version's pool of a container-image function: containers run with crun, directly.

A process function whose command is an OCI image (oci_image.py): each instance is one
container, started on demand with `crun run` on a bundle made here (a config.json of our
own over the image's unpacked, shared, read-only root), reached through a Unix socket that
container_relay.py serves from inside the container's network namespace. Dispatch,
queueing, concurrency, scale to zero, timeouts (504, the container killed) and the
response limit are ProcessPool's; this module only starts, measures and kills containers.

Why crun directly and not podman: on this kind of host a podman start took ~20 s (storage
and network set-up) against ~30 ms for crun on a prepared bundle (docs/containers.md).

Confinement (the runtime config below): user, pid, mount, ipc, uts and (unless the
function's `network` is on) network namespaces; the container's root is a uid of the
platform's range on the host; no capabilities; NO_NEW_PRIVS; a seccomp deny-list; a
read-only root with a private /tmp (tmpfs, half the memory); limits from a control group of
ours (memory incl. tmpfs, pids, one core) that crun and everything in the container run in
from their first instruction: crun's own cgroup handling is off (`--cgroup-manager
disabled`), which also spares it cgroup "hybrid" mode, which crun refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from cumulo import fds
from cumulo.errors import FunctionCrashed
from cumulo.runtime import cgroups, container_relay, sandbox
from cumulo.runtime.oci_image import ImageInfo, ImageStore
from cumulo.runtime.pool import InvokeResult
from cumulo.runtime.process_pool import (
    MB,
    ProcessInstance,
    ProcessPool,
    _describe_exit,
    _free_port,
)

IMAGE_FILE = "image.json"  # the version's bundle: which image, and how to start it
# The port a server listens on inside its own network namespace (any would do).
CONTAINER_PORT = 8080
# A never-listening image fails its first call within this, whatever its timeout says.
MIN_START_S = 5.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Run by `unshare -m` (a private mount namespace that dies with crun): hide a cgroup2 mount
# that makes crun see "hybrid" mode (here /sys/fs/cgroup/unified: crun refuses it, and
# cumulo's groups do the limiting anyway), bind the image's root where the container's
# uid can reach it (the data dir is 0700 root), then become crun.
LAUNCH = (
    "if [ -d /sys/fs/cgroup/unified ]; then umount /sys/fs/cgroup/unified 2>/dev/null; fi; "
    'mount --bind "$1" "$2" || exit 125; '
    'exec crun --root "$4" --cgroup-manager=disabled run --bundle "$3" --pid-file "$5" "$6"'
)
# What a container may not do even as its own root (EPERM): the kernel's riskiest surfaces,
# much as sandbox.py denies them to Python functions.
DENIED_SYSCALLS = (
    "add_key", "bpf", "delete_module", "finit_module", "init_module", "kexec_file_load",
    "kexec_load", "keyctl", "open_by_handle_at", "perf_event_open", "process_vm_readv",
    "process_vm_writev", "ptrace", "reboot", "request_key", "setns", "swapoff", "swapon",
    "syslog", "umount2", "mount", "pivot_root", "unshare", "userfaultfd", "quotactl",
    "acct", "io_uring_setup", "io_uring_enter", "io_uring_register",
)  # fmt: skip
NO_CAPS: dict[str, list[str]] = {
    k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
}


def runtime_config(
    info: ImageInfo,
    rootfs: Path,
    *,
    env: dict[str, str],
    uid: int,
    memory_bytes: int,
    network: bool,
) -> dict[str, Any]:
    """The OCI runtime config of one container (config.json)."""
    namespaces = ["pid", "ipc", "uts", "mount", "user", "cgroup"]
    if not network:
        namespaces.append("network")  # loopback only; crun brings `lo` up
    merged = dict(e.split("=", 1) for e in info.env)
    merged.update(env)
    tmp = max(memory_bytes // 2, MB)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(info.args),
            "env": [f"{k}={v}" for k, v in merged.items()],
            "cwd": info.cwd or "/",
            "capabilities": NO_CAPS,
            "noNewPrivileges": True,
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
                {"type": "RLIMIT_FSIZE", "hard": memory_bytes, "soft": memory_bytes},
            ],
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "function",
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "noexec", "strictatime", "mode=755", "size=1m"],
            },
            {
                "destination": "/dev/shm",  # noqa: S108 - inside the container
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={tmp}"],
            },
            {
                "destination": "/tmp",  # noqa: S108 - inside the container
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", f"size={tmp}"],
            },
        ],
        "linux": {
            # Only the container's root exists, as one unprivileged host uid: the image's
            # files (host root's) are "nobody" inside, readable, not writable.
            "uidMappings": [{"containerID": 0, "hostID": uid, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": uid, "size": 1}],
            "namespaces": [{"type": t} for t in namespaces],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/asound",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
                "syscalls": [
                    {"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
                ],
            },
        },
    }


class ContainerInstance(ProcessInstance):
    """One container: crun (the tracked process) and its relay."""

    relay: fds.Child | None = None
    oom_baseline = 0
    oom_killed = False

    @property
    def pid_file(self) -> Path:
        return self.sock_dir / "container.pid"

    def container_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None

    def kill(self) -> None:
        # The container's init first: crun killed alone would leave it running (its own
        # pid namespace dies with its init); the group catches anything else.
        pid = self.container_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        super().kill()
        if self.group is not None:
            self.group.kill()
        if self.relay is not None:
            self.relay.killpg()

    def oom_since_start(self) -> bool:
        if self.group is None:
            return False
        return (self.group.oom_kills() or 0) > self.oom_baseline


class ContainerPool(ProcessPool):
    _info: ImageInfo | None = None

    def _image(self) -> tuple[ImageInfo, Path]:
        if self._info is None:
            try:
                data = json.loads((self.spec.code_dir / IMAGE_FILE).read_text())
                self._info = ImageInfo.from_dict(data)
            except (OSError, ValueError, KeyError) as exc:
                raise FunctionCrashed(
                    f"the image of {self.spec.function} is unreadable ({exc})", code="image_missing"
                ) from None
        data_dir = self.settings.data_dir or Path(tempfile.gettempdir())
        rootfs = ImageStore(data_dir / "images").rootfs(self._info.digest)
        if not rootfs.is_dir():
            raise FunctionCrashed(
                f"the image {self._info.digest} of {self.spec.function} is not on this node",
                code="image_missing",
            )
        return self._info, rootfs

    def _start_bound_s(self) -> float:
        return min(self.settings.zygote_start_timeout_s, max(self.config.timeout_s, MIN_START_S))

    def _queue_wait_s(self) -> float:
        # A call that waits for a container's start waits out the start's own bound first,
        # so a server that never listens answers 502 start_timeout, not 429.
        return self.config.timeout_s + (0.0 if self.instances else self._start_bound_s() + 1.0)

    async def _launch(self) -> ContainerInstance:
        settings, spec, config = self.settings, self.spec, self.spec.config
        if os.geteuid() != 0:
            raise FunctionCrashed(
                "container functions need a root gateway on this platform "
                "(rootless: docs/containers.md)",
                code="containers_unavailable",
            )
        if cgroups.current is None:
            raise FunctionCrashed(
                "container functions need writable control groups to enforce their limits",
                code="containers_unavailable",
            )
        info, rootfs = self._image()
        memory = max(config.memory_mb, 16) * MB
        group = cgroups.current.new_group(
            "c", cgroups.instance_limits(config.memory_mb, config.concurrency, settings.max_pids)
        )
        if group is None:
            raise FunctionCrashed("could not make a control group", code="containers_unavailable")
        uid = sandbox.uids.acquire()
        inst = Path(tempfile.mkdtemp(prefix="cumulo-ctr-"))
        # The container's root (uid) crosses this directory to its root's mount point.
        os.chown(inst, uid, uid)
        for name in ("rootfs", "bundle", "state"):
            (inst / name).mkdir()
        port = _free_port() if config.network else CONTAINER_PORT
        env = {**config.env, "PORT": str(port)}
        conf = runtime_config(
            info, inst / "rootfs", env=env, uid=uid, memory_bytes=memory, network=config.network
        )
        (inst / "bundle" / "config.json").write_text(json.dumps(conf))
        name = f"cumulo-{inst.name.removeprefix('cumulo-ctr-')}"
        argv = group.wrap(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "/bin/sh",
                "-c",
                LAUNCH,
                "cumulo-crun",
                str(rootfs),
                str(inst / "rootfs"),
                str(inst / "bundle"),
                str(inst / "state"),
                str(inst / "container.pid"),
                name,
            ]
        )
        output = fds.Output(self.handle_output)  # the container's stdout/stderr: its logs
        relay: _Relay | None = None
        try:
            # The relay first: nothing is running yet if it cannot start.
            relay, ready_r = _take_relay(settings.python)
            proc = fds.spawn(
                argv,
                env={"PATH": PATH},
                cwd=str(inst),
                stdout=output.child_fds[0],
                stderr=output.child_fds[1],
            )
            order = f"{inst / 'container.pid'} {port} {inst / 'http.sock'} {uid}\n"
            os.write(relay.stdin_w, order.encode())
            os.close(relay.stdin_w)
        except BaseException:
            if relay is not None:
                relay.child.killpg()
                for fd in (relay.stdin_w, relay.ready_r):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            output.close()
            shutil.rmtree(inst, ignore_errors=True)
            sandbox.uids.release(uid)
            cgroups.current.release(group)
            raise
        output.start()
        instance = ContainerInstance(proc, inst, uid, output)
        instance.group = group
        instance.relay = relay.child
        instance.oom_baseline = group.oom_kills() or 0
        self._tasks.spawn(self._watch(instance))
        bound = self._start_bound_s()
        ready = _ready_line(ready_r)
        exited: asyncio.Future[Any] = instance.exited
        try:
            done, _ = await asyncio.wait(
                [ready, exited], timeout=bound, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            instance.kill()
            raise
        finally:
            if not ready.done():
                ready.cancel()
        if ready in done and not ready.cancelled() and ready.result() == b"ready\n":
            _prestart_relay(settings.python)  # the next cold start's, now this one is done
            return instance
        if not done:
            instance.kill()
            raise FunctionCrashed(
                f"{spec.function} did not listen on $PORT within {bound:g}s",
                code="start_timeout",
            )
        instance.kill()
        code = await instance.exited
        raise FunctionCrashed(
            f"the container of {spec.function} {_describe_exit(code)} before it listened on $PORT",
            code="start_failed",
        )

    async def _forward(
        self, instance: ProcessInstance, frame: dict[str, Any], cold: bool
    ) -> InvokeResult:
        assert isinstance(instance, ContainerInstance)
        group = instance.group
        cpu0 = (group.cpu_seconds() if group else None) or 0.0
        try:
            result = await super()._forward(instance, frame, cold)
        except FunctionCrashed:
            self._raise_if_oom(instance)
            raise
        self._raise_if_oom(instance)
        if group is not None:
            # Metering: the container's CPU over the call and its memory now, from its
            # control group (`usage` as a Python worker reports it: [cpu_s, rss_kb]).
            cpu = max((group.cpu_seconds() or 0.0) - cpu0, 0.0)
            frame["usage"] = [float(cpu), int((group.memory_usage() or 0) // 1024)]
        return result

    def _raise_if_oom(self, instance: ContainerInstance) -> None:
        if instance.oom_killed or instance.oom_since_start():
            self._remove(instance)  # what the killed process held is gone: start afresh
            raise FunctionCrashed(
                f"{self.spec.function} ran out of memory ({self.config.memory_mb} MB) and was "
                "killed",
                code="out_of_memory",
            )

    async def _watch(self, instance: ProcessInstance) -> None:
        assert isinstance(instance, ContainerInstance)
        code = await instance.proc.wait()
        # Read before the group goes: was it the OOM killer?
        instance.oom_killed = instance.oom_since_start()
        instance.alive = False
        if instance.relay is not None:
            instance.relay.killpg()
        if instance.group is not None:
            instance.group.kill()
        instance.exited.set_result(code)
        with contextlib.suppress(ValueError):
            self.instances.remove(instance)
        await instance.cleanup()
        if self.queue and not self.closed:
            self._scale_up()

    def describe(self) -> dict[str, Any]:
        info = self._info
        return {**super().describe(), "kind": "container", "image": info.digest if info else None}


def _ready_line(fd: int) -> asyncio.Future[bytes]:
    """The relay's `ready` line (or b"" at EOF), read from `fd`, which it then closes:
    exactly once, on the loop's own reader (no file object that could close it again)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()
    got = bytearray()

    def readable() -> None:
        try:
            chunk = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        got.extend(chunk)
        if not chunk or b"\n" in got:
            finish()
            if not fut.done():
                fut.set_result(bytes(got))

    def finish() -> None:
        loop.remove_reader(fd)
        os.close(fd)

    def cancelled(f: asyncio.Future[bytes]) -> None:
        if f.cancelled():
            finish()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    fut.add_done_callback(cancelled)
    return fut


class _Relay:
    """A relay process waiting for its order on stdin, and its `ready` pipe."""

    def __init__(self, python: str) -> None:
        ready_r, ready_w = os.pipe()
        stdin_r, self.stdin_w = os.pipe()
        try:
            self.child = fds.spawn(
                [python, "-I", "-S", container_relay.__file__, str(ready_w)],
                keep=[ready_w],
                stdin=stdin_r,
                env={"PATH": PATH},
                cwd="/",
            )
        except BaseException:
            for fd in (ready_r, self.stdin_w):
                os.close(fd)
            raise
        finally:
            os.close(ready_w)
            os.close(stdin_r)
        self.ready_r = ready_r


_spare_relays: dict[str, _Relay] = {}


def _take_relay(python: str) -> tuple[_Relay, int]:
    relay = _spare_relays.pop(python, None)
    if relay is None or relay.child.returncode is not None:
        if relay is not None:
            os.close(relay.stdin_w)
            os.close(relay.ready_r)
        relay = _Relay(python)
    return relay, relay.ready_r


def _prestart_relay(python: str) -> None:
    if python not in _spare_relays:
        _spare_relays[python] = _Relay(python)


def stop_spare_relays() -> None:
    """At shutdown: a spare relay ends at EOF on its stdin."""
    while _spare_relays:
        _, relay = _spare_relays.popitem()
        os.close(relay.stdin_w)
        os.close(relay.ready_r)
