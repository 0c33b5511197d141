"""The worker sandbox: bubblewrap around each zygote, a seccomp filter, a private uid.

Layers, outermost first (see docs/sandbox.md):

- bubblewrap (when it is installed and works here): new mount, pid, ipc, uts and (unless the
  function declares ``network=True``) network namespaces; the root file system read-only;
  a private ``/tmp``; the data dir hidden under an empty tmpfs with only the function's own
  code dir bound back read-only; unreadable host directories (``/root``…) hidden, with the
  interpreter and the virtualenv bound back. Only the zygote's start is wrapped: workers are
  still forks of the zygote, so a cold start stays a fork.
- a private uid per zygote when the gateway runs as root (the zygote drops to it before it
  imports user code): ordinary permission checks then deny signals, ptrace, ``/proc/PID/mem``
  and ``/proc/PID/environ`` across tenants and towards the gateway, and ``RLIMIT_NPROC``
  counts each tenant's processes apart.
- ``PR_SET_NO_NEW_PRIVS`` and a seccomp filter (libseccomp through ctypes) that answers
  EPERM to the system calls a function never needs (ptrace, mount, bpf, kexec, modules,
  namespaces, keyrings, io_uring…) and, without ``network=True``, to non-Unix sockets.
- rlimits (limits.py), always.

The gateway calls :func:`check` once at start-up: ``strict`` refuses to start without the
bubblewrap layer, ``auto`` logs one loud warning and carries on with the inner layers.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cumulo.errors import ConfigError
from cumulo.runtime import limits
from cumulo.runtime.settings import RuntimeSettings

log = logging.getLogger("cumulo.sandbox")

# Names the bubblewrap binary; empty or a missing path means "not installed" (tests use it).
BWRAP_ENV = "CUMULO_BWRAP"
# Zygotes of a root gateway run as a uid of the platform's own range (same gid).
UID_BASE = 200_000
UID_SLOTS = 4096
# How many platforms (ranges of UID_SLOTS) one host may run; each claims one (UidPool).
UID_RANGES = 1024
UID_LOCK_DIR = Path("/run/cumulo/uids")
NOBODY = 65534
MB = 1024 * 1024
PROBE_TIMEOUT_S = 20.0


class SandboxUnavailable(ConfigError):
    """`--isolation strict` and the sandbox cannot be built on this machine."""


@dataclass(frozen=True, slots=True)
class SandboxStatus:
    """What isolation zygotes get on this machine (probed once per process)."""

    bwrap: str | None  # the working bubblewrap binary; None: process isolation only
    reason: str  # why bubblewrap is not used ("" when it is)
    seccomp: bool  # libseccomp is loadable: zygotes install the filter
    drop_uid: bool  # the gateway is root: each zygote runs under a private uid
    broken: bool = False  # bubblewrap is installed but its probe failed

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    def describe(self) -> str:
        layers = ["bubblewrap" if self.sandboxed else "process isolation"]
        layers.append("seccomp" if self.seccomp else "no seccomp")
        layers.append("private uid" if self.drop_uid else "gateway uid")
        return ", ".join(layers)


_probed: dict[tuple[str | None, str, str, str], SandboxStatus] = {}
_warned: set[tuple[str | None, str, str]] = set()


def find_bwrap() -> str | None:
    """The bubblewrap binary: $CUMULO_BWRAP when set (empty: none), else bwrap on PATH."""
    configured = os.environ.get(BWRAP_ENV)
    if configured is not None:
        if configured and os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        return None
    return shutil.which("bwrap")


def status(settings: RuntimeSettings) -> SandboxStatus:
    """The sandbox this process can build, probed on first use and remembered."""
    bwrap = find_bwrap()
    key = (bwrap, settings.python, str(settings.data_dir), settings.isolation)
    found = _probed.get(key)
    if found is None:
        found = _probe(bwrap, settings)
        _probed[key] = found
    return found


def prepare_data_dir(settings: RuntimeSettings) -> None:
    """Create the data dir (0700) before anything probes or mounts over it: bubblewrap
    mounts a tmpfs there, and cannot create the mount point on a read-only `/`."""
    if settings.data_dir is not None:
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            settings.data_dir.chmod(0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the data dir {settings.data_dir}: {exc.strerror}"
            ) from None


def check(settings: RuntimeSettings) -> SandboxStatus:
    """Probe the sandbox at platform start-up; raises SandboxUnavailable (one line) when
    functions could not be confined here.

    - strict: bubblewrap must work.
    - auto: bubblewrap when it works; when it is installed but fails, refuse (never a silent
      fall-back) unless `--isolation process` says so.
    - any mode: a gateway that is not root cannot drop functions to another uid, so without
      a working bubblewrap they would run as the uid that owns the data dir: refuse.
    Otherwise (a root gateway without bubblewrap, or `process`) logs one loud warning."""
    prepare_data_dir(settings)
    if os.geteuid() == 0 and uids.claim() is None:
        raise SandboxUnavailable(f"functions cannot get private uids here ({uids.reason})")
    found = status(settings)
    if found.sandboxed:
        log.info("sandbox: %s", found.describe())
        return found
    if settings.isolation == "strict":
        raise SandboxUnavailable(
            f"--isolation strict: the worker sandbox cannot be built ({found.reason})"
        )
    if found.broken and settings.isolation == "auto":
        raise SandboxUnavailable(
            f"bubblewrap is installed but does not work here ({found.reason}); fix it, or "
            "start with --isolation process to run functions without it"
        )
    if not found.drop_uid:
        raise SandboxUnavailable(
            f"functions would run as uid {os.geteuid()}, which owns the data dir: a gateway "
            f"that is not root needs a working bubblewrap ({found.reason})"
        )
    key = (found.bwrap, settings.python, str(settings.data_dir))
    if key not in _warned:
        _warned.add(key)
        message = (
            f"WARNING: functions run WITHOUT the bubblewrap sandbox ({found.reason}); "
            f"isolation is {found.describe()} only: no private /tmp, no network or "
            "file-system isolation. Install bubblewrap (apt-get install -y bubblewrap) or "
            "start with --isolation strict to refuse this."
        )
        log.warning(message)
        if not log.hasHandlers():
            print(message, file=sys.stderr, flush=True)
    return found


PROBE_MODULE = "cumulo_probe"


def _probe(bwrap: str | None, settings: RuntimeSettings) -> SandboxStatus:
    seccomp = seccomp_available()
    drop_uid = os.geteuid() == 0
    if settings.isolation == "process":
        return SandboxStatus(None, "--isolation process", seccomp, drop_uid)
    if bwrap is None:
        reason = (
            f"${BWRAP_ENV} names no executable"
            if os.environ.get(BWRAP_ENV) is not None
            else "bubblewrap (bwrap) is not installed"
        )
        return SandboxStatus(None, reason, seccomp, drop_uid)
    # The real thing, minus user code: the command line a zygote gets (the data dir hidden,
    # a code dir inside it bound back), the interpreter importing the zygote module and a
    # module from that code dir under the uid zygotes will run as.
    uid = probe_uid() if drop_uid else None
    lines = [
        "import os",
        f"uid = {uid!r}",
        "if uid is not None:",
        "    os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)",
        "import cumulo.runtime.zygote",
        "open('/tmp/probe', 'w').close()",
    ]
    probe_dir: Path | None = None
    try:
        if settings.data_dir is not None:
            prepare_data_dir(settings)
            probe_dir = Path(tempfile.mkdtemp(prefix=".probe-", dir=settings.data_dir))
            probe_dir.chmod(0o755)  # like an unpacked code dir: the dropped uid reads it
            (probe_dir / f"{PROBE_MODULE}.py").write_text("OK = True\n")
            lines.append(f"import {PROBE_MODULE}")
        code_dir = probe_dir or Path(__file__).resolve().parent
        argv = bwrap_argv(
            bwrap,
            settings,
            code_dir,
            network=False,
            tmp_bytes=max(settings.spare_memory_mb, 16) * MB,
            drop_uid=drop_uid,
        )
        result = subprocess.run(
            [*argv, settings.python, "-c", "\n".join([*lines, "print('ok')", ""])],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"},
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SandboxStatus(None, f"{bwrap} could not run: {exc}", seccomp, drop_uid, True)
    finally:
        if probe_dir is not None:
            shutil.rmtree(probe_dir, ignore_errors=True)
    if result.returncode != 0 or result.stdout.strip() != "ok":
        last = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        return SandboxStatus(
            None,
            f"{bwrap} failed (exit {result.returncode}): {last[-1][:200]}",
            seccomp,
            drop_uid,
            True,
        )
    return SandboxStatus(bwrap, "", seccomp, drop_uid)


# ---------------------------------------------------------------- the bubblewrap command
def _reachable(path: Path) -> bool:
    """Whether any user may traverse to `path` (every ancestor has o+x)."""
    for part in (path, *path.parents):
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _hidden_ancestor(path: Path) -> Path | None:
    """The topmost ancestor of `path` that other users cannot traverse (e.g. /root)."""
    for part in reversed((path, *path.parents)):
        try:
            if not part.stat().st_mode & stat.S_IXOTH:
                return part
        except OSError:
            return None
    return None


PRIVATE_TMP = Path("/tmp")  # noqa: S108 - the sandbox's own /tmp, a tmpfs


def runtime_paths(settings: RuntimeSettings) -> list[Path]:
    """Directories the interpreter needs: its prefixes, sys.path, the cumulo package."""
    candidates = [
        Path(settings.python).resolve().parent,
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.exec_prefix),
        Path(sys.base_exec_prefix),
        Path(__file__).resolve().parents[2],
        # Not /tmp itself (a script run from /tmp puts it on sys.path): bound back
        # read-only, it would hide the sandbox's private, writable /tmp.
        *(Path(p) for p in sys.path if p and not _under(PRIVATE_TMP, Path(p).resolve())),
    ]
    seen: list[Path] = []
    for path in candidates:
        try:
            resolved = path.resolve()
        except OSError:
            continue
        if resolved.is_dir() and resolved not in seen:
            seen.append(resolved)
    return seen


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def bwrap_argv(
    bwrap: str,
    settings: RuntimeSettings,
    code_dir: Path | None,
    *,
    network: bool,
    tmp_bytes: int,
    drop_uid: bool,
    extra_caps: tuple[str, ...] = (),
    ro_paths: tuple[Path, ...] = (),
    rw_paths: tuple[Path, ...] = (),
) -> list[str]:
    """The bubblewrap command line (everything before the interpreter) for one zygote.

    `code_dir` None: a spare's (spares.py), which binds no code and starts in `/`; the code
    is mounted later from a detached mount the gateway sends (see `detached_tree`).
    `ro_paths` are bound back read-only like the code dir (a function's virtualenv, which
    lives in the hidden data dir); `rw_paths` writable (a dependency build's target, a
    process function's socket directory)."""
    code_dir = code_dir.resolve() if code_dir is not None else None
    writable = {p.resolve() for p in rw_paths}
    argv = [
        bwrap,
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "cumulo",
        "--ro-bind",
        "/",
        "/",
    ]
    if not network:
        argv.append("--unshare-net")
    if not drop_uid:
        # An unprivileged gateway: bubblewrap needs a user namespace; none may nest inside.
        argv += ["--unshare-user", "--disable-userns"]
    else:
        # A root gateway: bubblewrap keeps only what the zygote needs to drop to its uid.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        for cap in extra_caps:
            argv += ["--cap-add", cap]
    # /tmp and /dev/shm together hold at most the function's memory: their pages are
    # charged to its control group (cgroups.py), and without one they are still bounded.
    size = str(max(tmp_bytes // 2, 8 * MB))
    argv += ["--dev", "/dev", "--proc", "/proc"]
    argv += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]  # noqa: S108 - inside the sandbox
    # Empty tmpfs over: /tmp (private, writable), every directory other users cannot
    # traverse that holds something the interpreter needs (/root/.pyenv…), the data dir.
    needed = [
        *runtime_paths(settings),
        *([code_dir] if code_dir is not None else []),
        *(p.resolve() for p in ro_paths),
        *writable,
    ]
    tmp = PRIVATE_TMP
    tops: list[Path] = [tmp]
    for path in needed:
        top = _hidden_ancestor(path)
        if top is not None:
            tops.append(top)
    if settings.data_dir is not None:
        tops.append(settings.data_dir.resolve())
    minimal: list[Path] = []
    for top in sorted(set(tops), key=lambda p: len(p.parts)):
        if not any(_under(top, other) for other in minimal):
            minimal.append(top)
    for top in minimal:
        if top == tmp:
            argv += ["--perms", "1777", "--size", size, "--tmpfs", str(top)]
        else:
            argv += ["--perms", "0711", "--tmpfs", str(top)]
    # Then bind back, read-only, what lies under them and is needed.
    made: set[Path] = set()
    dirs: set[Path] = set()
    for path in sorted(set(needed), key=lambda p: len(p.parts)):
        top = next((t for t in minimal if _under(path, t)), None)
        if any(_under(path, m) for m in made) or (top is None and path not in writable):
            continue  # already visible (read-only `/`), unless it must be writable
        for parent in reversed(path.parents):
            if top is not None and _under(parent, top) and parent != top and parent not in dirs:
                # Intermediate directories in the tmpfs: traversable, not listable.
                argv += ["--perms", "0711", "--dir", str(parent)]
                dirs.add(parent)
        argv += ["--bind" if path in writable else "--ro-bind", str(path), str(path)]
        made.add(path)
    argv += ["--chdir", str(code_dir or "/"), "--"]
    return argv


# ---------------------------------------------------------------- uids
def _uid_range_mapped(first: int, count: int) -> bool:
    try:
        text = Path("/proc/self/uid_map").read_text()
        gtext = Path("/proc/self/gid_map").read_text()
    except OSError:
        return False

    def covered(table: str) -> bool:
        for line in table.splitlines():
            inside, _outside, length = (int(x) for x in line.split())
            if inside <= first and first + count <= inside + length:
                return True
        return False

    return covered(text) and covered(gtext)


class UidPool:
    """Private uids for the zygotes of a root gateway: one per live zygote.

    Each platform on the host claims a range of its own (`claim`: range k is
    UID_BASE + k*slots … + slots-1, held by an flock on /run/cumulo/uids/k.lock for the
    gateway's lifetime, released by the kernel even on SIGKILL), so two platforms never
    share a uid: neither RLIMIT_NPROC counts nor signals cross between them."""

    def __init__(self, base: int = UID_BASE, slots: int = UID_SLOTS) -> None:
        self.first = base
        self.base: int | None = None
        self.slots = slots
        self.used: set[int] = set()
        self.fresh = 0  # slots below this were handed out at least once
        self.claimed = False
        self.lock_fd: int | None = None
        self.reason = ""

    def claim(self, lock_dir: Path = UID_LOCK_DIR) -> int | None:
        """Claim this platform's range (idempotent); None when no range is free or mapped."""
        if self.claimed:
            return self.base
        self.claimed = True
        try:
            lock_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            self.reason = f"cannot create {lock_dir}: {exc.strerror}"
            return None
        for k in range(UID_RANGES):
            first = self.first + k * self.slots
            if not _uid_range_mapped(first, self.slots):
                break
            fd = os.open(lock_dir / f"{k}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.lock_fd, self.base = fd, first
            return first
        self.reason = "no free uid range (every range is claimed or not mapped)"
        return None

    def acquire(self) -> int:
        if not self.claimed:
            self.claim()
        if self.base is None:
            raise OSError(errno.EAGAIN, f"no private uid for the zygote: {self.reason}")
        # Never-used uids first (no check needed). A released uid may still run a dead
        # zygote's last processes (a SIGKILL lands asynchronously, a fork bomb's tree takes
        # a while): the kernel would count them against the next zygote's RLIMIT_NPROC,
        # which that zygote measures inside its own pid namespace, blind to them.
        if self.fresh < self.slots - 1:  # the last one is the probe's
            uid = self.base + self.fresh
            self.fresh += 1
            self.used.add(uid)
            return uid
        for slot in range(self.slots - 1):
            uid = self.base + slot
            if uid not in self.used and limits.tasks_of(uid) == 0:
                self.used.add(uid)
                return uid
        raise OSError(errno.EAGAIN, f"all {self.slots - 1} private uids of this platform in use")

    def release(self, uid: int) -> None:
        self.used.discard(uid)


uids = UidPool()


def probe_uid() -> int:
    base = uids.claim()
    return base + uids.slots - 1 if base is not None else NOBODY


# ---------------------------------------------------------------- seccomp (libseccomp)
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_NE = 1
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
AF_UNIX = 1
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

# Answered with EPERM: a function has no business with any of these.
DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "bpf",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "userfaultfd",
    "unshare",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "quotactl",
    "syslog",
    "vhangup",
    "iopl",
    "ioperm",
    "setsid",
)
# clone() flags that would make a new namespace.
CLONE_NAMESPACE_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_lib: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL | None:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            return None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = (ctypes.c_uint32,)
        lib.seccomp_release.argtypes = (ctypes.c_void_p,)
        lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_rule_add_array.argtypes = (
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        )
        lib.seccomp_load.argtypes = (ctypes.c_void_p,)
        lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
        _lib = lib
    return _lib


def seccomp_available() -> bool:
    return _libseccomp() is not None


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class SeccompError(OSError):
    pass


class _Filter:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        if not self.ctx:
            raise SeccompError("seccomp_init failed")

    def deny(self, name: str, *conditions: tuple[int, int, int, int], code: int = 0) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not a system call on this architecture
        array = (_ArgCmp * max(1, len(conditions)))(*(_ArgCmp(*c) for c in conditions))
        rc = self.lib.seccomp_rule_add_array(
            self.ctx, _errno_action(code or errno.EPERM), nr, len(conditions), array
        )
        if rc < 0:
            raise SeccompError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise SeccompError(-rc, f"seccomp_load: {os.strerror(-rc)}")

    def export(self) -> bytes:
        r, w = os.pipe()
        try:
            rc = self.lib.seccomp_export_bpf(self.ctx, w)
            os.close(w)
            w = -1
            if rc < 0:
                raise SeccompError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            chunks = []
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def release(self) -> None:
        if self.ctx:
            self.lib.seccomp_release(self.ctx)
            self.ctx = None


def no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: execve never grants privileges again (setuid bits, file caps)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"PR_SET_NO_NEW_PRIVS: {os.strerror(code)}")


def install_filter(*, network: bool) -> bytes | None:
    """Install the zygote's seccomp filter (inherited by every worker) before user code runs.

    Returns the worker's extra filter as BPF bytes (no more process groups: a worker's
    descendants stay in its group, which is how they are all killed with it) for
    :func:`load_bpf` after fork; None when libseccomp is missing."""
    lib = _libseccomp()
    if lib is None:
        return None
    base = _Filter(lib)
    try:
        for name in DENIED_SYSCALLS:
            base.deny(name)
        for flag in CLONE_NAMESPACE_FLAGS:
            base.deny("clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        # clone3 passes its flags in memory a filter cannot read: glibc falls back to clone.
        base.deny("clone3", code=errno.ENOSYS)
        for request in (TIOCSTI, TIOCLINUX):
            base.deny("ioctl", (1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, request))
        if not network:
            base.deny("socket", (0, SCMP_CMP_NE, AF_UNIX, 0))
            base.deny("socketpair", (0, SCMP_CMP_NE, AF_UNIX, 0))
        base.load()
    finally:
        base.release()
    worker = _Filter(lib)
    try:
        worker.deny("setpgid")
        worker.deny("setsid")
        program = worker.export()
    finally:
        worker.release()
    _prepare(program)
    return program


def _prepare(program: bytes) -> None:
    global _prepared
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _prepared = (program, buf, prog, ctypes.CDLL(None, use_errno=True))


_prepared: tuple[bytes, ctypes.Array[ctypes.c_char], _SockFprog, ctypes.CDLL] | None = None


def load_bpf(program: bytes) -> None:
    """Stack a precompiled filter on this process: one prctl, cheap enough for each fork
    (the buffers are prepared once, in the zygote, and inherited)."""
    if _prepared is None or _prepared[0] is not program:
        _prepare(program)
    assert _prepared is not None
    _, _, prog, libc = _prepared
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"PR_SET_SECCOMP: {os.strerror(code)}")


# ---------------------------------------------------------------- privilege drop
def drop_privileges(uid: int, gid: int) -> None:
    """Become `uid`/`gid` for good (no supplementary groups, no capabilities left)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError(errno.EPERM, f"could not drop to uid {uid}")


def reachable_path(path: str, keep: list[int]) -> str:
    """`path`, or an equivalent /proc/self/fd path when other users cannot traverse to it.

    Without bubblewrap a dropped uid cannot reach an interpreter under /root or a code dir
    inside the 0700 data dir; an O_PATH descriptor opened before the drop can (it reaches
    that one directory, not its hidden parents)."""
    p = Path(path)
    if not p.is_absolute() or _reachable(p):
        return path
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
        keep.append(fd)
        return f"/proc/self/fd/{fd}"
    return path


def reroute_imports(keep: list[int]) -> None:
    """Before a uid drop without bubblewrap: every import path, and the `__path__` of every
    package already imported, through descriptors the new uid can use.

    Rewriting sys.path alone is not enough: a submodule imported later (importlib.metadata
    when a model loads, encodings.*) is looked up in its package's `__path__`, which still
    names the unreachable directory (an interpreter under a 0700 /root/.pyenv)."""
    mapping: dict[str, str] = {}
    rerouted = []
    for entry in sys.path:
        moved = reachable_path(entry, keep)
        if moved != entry:
            mapping[os.path.normpath(entry)] = moved
        rerouted.append(moved)
    sys.path[:] = rerouted
    if not mapping:
        return
    prefixes = sorted(mapping, key=len, reverse=True)

    def rebase(path: str) -> str:
        normal = os.path.normpath(path)
        for prefix in prefixes:
            if normal == prefix or normal.startswith(prefix + os.sep):
                return mapping[prefix] + normal[len(prefix) :]
        return path

    for module in list(sys.modules.values()):
        package_path = getattr(module, "__path__", None)
        if isinstance(package_path, list):
            package_path[:] = [rebase(p) if isinstance(p, str) else p for p in package_path]
    sys.path_importer_cache.clear()


# ---------------------------------------------------------------- mounts for spare zygotes
# The new mount API; these numbers are the same on every architecture (>= 424 are unified).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _syscall(number: int, *args: object) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = int(libc.syscall(number, *args))
    if rc < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return rc


def detached_tree(path: Path) -> int:
    """A read-only, nosuid, nodev copy of the mount at `path` (a directory), attached
    nowhere: an fd another mount namespace can attach with `attach_tree` (the code dir of an
    adopted spare, which reaches nothing above it, exactly like bubblewrap's --ro-bind)."""
    fd = _syscall(
        _SYS_OPEN_TREE,
        _AT_FDCWD,
        os.fsencode(path),
        _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE,
    )
    try:
        attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, 0, 0, 0)
        _syscall(
            _SYS_MOUNT_SETATTR,
            fd,
            b"",
            _AT_EMPTY_PATH | _AT_RECURSIVE,
            ctypes.byref(attr),
            ctypes.sizeof(attr),
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def attach_tree(fd: int, target: Path) -> None:
    """Mount a tree from `detached_tree` at `target`, creating the missing directories
    (traversable, not listable, like bubblewrap's --dir). Needs CAP_SYS_ADMIN."""
    for part in [*reversed(target.parents), target]:
        if not part.exists():
            os.mkdir(part)
            # Not through mkdir's mode: the umask would change it.
            os.chmod(part, 0o711)  # noqa: S103 - traversable only, as bubblewrap's --dir
    _syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH)


def capabilities_left() -> int:
    """This process's effective capabilities (CapEff), 0 when none."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0
