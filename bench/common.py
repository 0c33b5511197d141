"""Shared helpers for the benchmarks: processes, the platform under test, wrk, /proc readers.

Every process a benchmark starts goes through `Proc`, which puts it in its own session
(process group) and registers it, so `stop_all()` can end whatever is still running when a
benchmark fails half-way. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import platform as _platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
FUNCTIONS_DIR = BENCH_DIR / "functions"
DOCS_DIR = ROOT / "docs"
VENV_BIN = ROOT / ".venv" / "bin"
HOST = "127.0.0.1"


class BenchError(Exception):
    """A benchmark could not run (the message says why, in one line or a short block)."""


def log(msg: str) -> None:
    """Progress line on stderr (stdout stays free for the summary)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def python_exe() -> str:
    """The venv interpreter (the one cumulo workers use), else the running one."""
    venv_python = VENV_BIN / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def cumulo_exe() -> str:
    exe = VENV_BIN / "cumulo"
    if exe.exists():
        return str(exe)
    found = shutil.which("cumulo")
    if found is None:
        raise BenchError("the `cumulo` command is not installed (.venv/bin/cumulo missing)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# statistics


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(pct / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


# ---------------------------------------------------------------------------------------------
# /proc readers


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, starttime) of a live process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    fields = raw.rsplit(")", 1)[1].split()
    # fields[0] is state, [1] ppid, ... starttime is field 22 of stat => index 19 here
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st is not None:
            tree.setdefault(st[0], []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    tree = children_map()
    out: list[int] = []
    stack = list(tree.get(pid, []))
    while stack:
        child = stack.pop()
        out.append(child)
        stack.extend(tree.get(child, []))
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of a process and each of its descendants, by pid."""
    out: dict[int, float] = {}
    for p in [pid, *descendants(pid)]:
        value = cpu_seconds(p)
        if value is not None:
            out[p] = value
    return out


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kb(pid: int) -> int | None:
    """Resident set size (VmRSS) in KiB."""
    return _status_kb(pid, "VmRSS")


def smaps_rollup(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            out[parts[0][:-1]] = int(parts[1])
    return out


def uss_kb(pid: int) -> int | None:
    """Unique set size in KiB: Private_Clean + Private_Dirty from smaps_rollup."""
    roll = smaps_rollup(pid)
    if "Private_Clean" not in roll:
        return None
    return roll["Private_Clean"] + roll.get("Private_Dirty", 0)


def pss_kb(pid: int) -> int | None:
    return smaps_rollup(pid).get("Pss")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# processes


_LIVE: list[Proc] = []


class Proc:
    """A child process in its own session, output to a log file, stopped with `stop()`."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
        )
        self.pid = self.popen.pid
        self.leftovers: list[str] = []
        _LIVE.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> list[str]:
        """SIGTERM the process (only it: the platform must stop its own workers), wait, then
        kill whatever of its process tree or group is still there. Returns a description of
        each process that had to be killed after the grace period (empty when clean)."""
        if self not in _LIVE:
            return self.leftovers
        _LIVE.remove(self)
        tree = [(p, _proc_stat(p)) for p in descendants(self.pid)]
        try:
            if self.alive():
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.leftovers.append(f"{self.name} pid {self.pid} ignored SIGTERM")
            # give children a moment to follow their parent
            deadline = time.monotonic() + 5.0
            survivors = _survivors(tree)
            while survivors and time.monotonic() < deadline:
                time.sleep(0.1)
                survivors = _survivors(tree)
            for pid in survivors:
                self.leftovers.append(f"pid {pid} still running after stop: {cmdline(pid)[:120]}")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        finally:
            self._log.close()
        return self.leftovers


def _survivors(tree: list[tuple[int, tuple[int, int] | None]]) -> list[int]:
    out = []
    for pid, st in tree:
        now = _proc_stat(pid)
        if st is not None and now is not None and now[1] == st[1]:
            out.append(pid)
    return out


def stop_all() -> None:
    """Stop every process a benchmark started and has not stopped yet."""
    for proc in list(reversed(_LIVE)):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5)


atexit.register(stop_all)


# ---------------------------------------------------------------------------------------------
# HTTP (http.client: least client overhead, exact timing, no redirects, no pooling magic)


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


class HttpConn:
    """One keep-alive connection to a loopback server; reconnects once on a dropped socket."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.host = parsed.hostname or HOST
        self.port = parsed.port or 80
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._conn.connect()
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in (0, 1):
            conn = self._connect()
            try:
                t0 = time.perf_counter()
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
                elapsed = time.perf_counter() - t0
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
                continue
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return HttpResponse(
                resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, elapsed
            )
        raise AssertionError("unreachable")


def http_request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> HttpResponse:
    parsed = urllib.parse.urlsplit(url)
    conn = HttpConn(f"http://{parsed.netloc}", timeout=timeout)
    try:
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        return conn.request(method, path or "/", body, headers)
    finally:
        conn.close()


def wait_http_ok(url: str, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise BenchError(
                f"{proc.name} exited with {proc.popen.returncode} before {url} answered:\n"
                + proc.log_tail()
            )
        try:
            resp = http_request("GET", url, timeout=2.0)
            if resp.status == 200:
                return
            last = f"HTTP {resp.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{url} not ready after {timeout:.0f}s ({last})")


# ---------------------------------------------------------------------------------------------
# wrk

_WRK_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHWRK {{\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, "
    .. "\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, "
    .. "\\"timeout\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, "
    .. "\\"mean_us\\": %d}}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean))
end
"""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    wrk_cpu_s: float = 0.0  # CPU wrk itself used (is the load generator the bottleneck?)
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)  # server side

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    connections: int = 32,
    threads: int = 1,
    duration_s: float = 10.0,
) -> WrkResult:
    """POST `body` to `url` over `connections` keep-alive connections for `duration_s`."""
    if not wrk_available():
        raise BenchError("wrk is not installed (apt-get install -y wrk)")
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    header_lines = "\n".join(f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in all_headers.items())
    script = _WRK_LUA.format(body=body.decode(), headers=header_lines)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-wrk-", delete=False) as f:
        f.write(script)
        script_path = f.name
    try:
        argv = [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(duration_s))}s",
            "--timeout",
            "10s",
            "-s",
            script_path,
            url,
        ]
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"wrk did not finish within {duration_s + 60:.0f}s") from exc
    finally:
        os.unlink(script_path)
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCHWRK ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (rc {proc.returncode}): {proc.stdout}{proc.stderr}".strip())
    data = json.loads(line.removeprefix("BENCHWRK "))
    duration = data["duration_us"] / 1e6
    errors = {k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout")}
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=duration,
        rps=data["requests"] / duration if duration else 0.0,
        p50_ms=data["p50_us"] / 1000.0,
        p90_ms=data["p90_us"] / 1000.0,
        p99_ms=data["p99_us"] / 1000.0,
        errors={k: v for k, v in errors.items() if v},
        wrk_cpu_s=wrk_cpu,
    )


# ---------------------------------------------------------------------------------------------
# the platform under test


class Platform:
    """`cumulo up` in a temporary data dir on a free loopback port, per the public contract."""

    def __init__(
        self,
        *,
        idle_timeout: float | None = None,
        zygote_idle_timeout: float | None = None,
        start_timeout: float = 60.0,
        label: str = "cumulo",
        demo: bool = False,
        extra: Sequence[str] = (),
        data_dir: Path | None = None,
    ) -> None:
        self.demo = demo  # `--demo`: deploys ./examples, so it runs from the repository root
        self.extra = tuple(extra)
        # A data dir given is another gateway's: shared, and left for its owner to delete.
        self.owns_data_dir = data_dir is None
        self.idle_timeout = idle_timeout
        self.zygote_idle_timeout = zygote_idle_timeout
        self.start_timeout = start_timeout
        self.label = label
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="cumulo-bench-"))
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.api_key = ""
        self.proc: Proc | None = None
        self.startup_s = float("nan")
        self.leftovers: list[str] = []

    # -- lifecycle

    def start(self) -> Platform:
        argv = [cumulo_exe(), "up", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.idle_timeout is not None:
            argv += ["--idle-timeout", _num(self.idle_timeout)]
        if self.zygote_idle_timeout is not None:
            argv += ["--zygote-idle-timeout", _num(self.zygote_idle_timeout)]
        if self.demo:
            argv.append("--demo")
        argv += self.extra
        log(f"starting {' '.join(argv[1:])}")
        t0 = time.perf_counter()
        self.proc = Proc(
            argv,
            name=self.label,
            log_path=Path(tempfile.mkstemp(prefix="cumulo-bench-up-", suffix=".log")[1]),
            cwd=ROOT if self.demo else self.data_dir,
        )
        creds_path = self.data_dir / "credentials.json"
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not self.proc.alive():
                raise BenchError(
                    f"`{' '.join(argv[1:])}` exited with {self.proc.popen.returncode}:\n"
                    + self.proc.log_tail()
                )
            if creds_path.exists():
                try:
                    creds = json.loads(creds_path.read_text())
                    url = str(creds["url"]).rstrip("/")
                    # A shared data dir's credentials may name the other gateway.
                    self.url = f"{url.rsplit(':', 1)[0]}:{self.port}"
                    self.api_key = str(creds["api_key"])
                    break
                except (ValueError, KeyError):
                    pass  # being written
            if time.monotonic() > deadline:
                raise BenchError(
                    f"no {creds_path.name} after {self.start_timeout:.0f}s:\n"
                    + self.proc.log_tail()
                )
            time.sleep(0.05)
        wait_http_ok(f"{self.url}/readyz", max(1.0, deadline - time.monotonic()), proc=self.proc)
        self.startup_s = time.perf_counter() - t0
        log(f"{self.label} ready at {self.url} (pid {self.proc.pid}, {self.startup_s:.2f}s)")
        return self

    def stop(self) -> list[str]:
        try:
            if self.proc is not None:
                self.leftovers = self.proc.stop()
                for line in self.leftovers:
                    log(f"PLATFORM LEAK: {line}")
        finally:
            if self.owns_data_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            if self.proc is not None:
                with contextlib.suppress(OSError):
                    self.proc.log_path.unlink()
        return self.leftovers

    def __enter__(self) -> Platform:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        return self.proc.log_tail(lines) if self.proc else ""

    # -- contract

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def env(self) -> dict[str, str]:
        return {**os.environ, "CUMULO_URL": self.url, "CUMULO_API_KEY": self.api_key}

    def deploy(self, path: Path, name: str, timeout: float = 120.0) -> float:
        """`cumulo deploy PATH --name NAME`; returns the seconds it took."""
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [cumulo_exe(), "deploy", str(path), "--name", name],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=self.data_dir,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"`cumulo deploy {path.name} --name {name}` hung") from exc
        if proc.returncode != 0:
            raise BenchError(
                f"`cumulo deploy {path.name} --name {name}` exited {proc.returncode}: "
                f"{(proc.stdout + proc.stderr).strip()[-800:]}"
            )
        return time.perf_counter() - t0

    def invoke_path(self, name: str) -> str:
        return f"/fn/default/{name}"

    def invoke(self, name: str, event: Any, timeout: float = 60.0) -> HttpResponse:
        return http_request(
            "POST",
            self.url + self.invoke_path(name),
            json.dumps(event).encode(),
            self.auth,
            timeout=timeout,
        )

    def workers(self, name: str) -> dict[str, Any]:
        resp = http_request(
            "GET",
            f"{self.url}/v1/namespaces/default/functions/{name}/workers",
            headers=self.auth,
            timeout=10.0,
        )
        if resp.status != 200:
            raise BenchError(
                f"GET .../functions/{name}/workers -> HTTP {resp.status}: {resp.body[:300]!r}"
            )
        data = resp.json()
        if not isinstance(data, dict) or not isinstance(data.get("zygotes"), list):
            raise BenchError(f"unexpected workers answer for {name}: {resp.body[:300]!r}")
        return data

    def functions(self) -> list[str]:
        resp = http_request(
            "GET", f"{self.url}/v1/namespaces/default/functions", headers=self.auth, timeout=10.0
        )
        if resp.status != 200:
            raise BenchError(f"GET /v1/namespaces/default/functions -> HTTP {resp.status}")
        return [str(f["name"]) for f in resp.json().get("functions", [])]

    def worker_list(self, name: str) -> list[dict[str, Any]]:
        return [w for z in self.workers(name)["zygotes"] for w in z.get("workers", [])]

    def zygote_pids(self, name: str) -> list[int]:
        return [int(z["pid"]) for z in self.workers(name)["zygotes"] if "pid" in z]

    def wait_until(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str,
        poll_s: float = 0.05,
    ) -> float:
        """Poll the workers endpoint until `predicate(answer)`; returns seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.workers(name)
            if predicate(last):
                return time.monotonic() - t0
            time.sleep(poll_s)
        raise BenchError(f"{name}: not {what} after {timeout:.0f}s (last: {json.dumps(last)})")

    def wait_no_workers(self, name: str, timeout: float) -> float:
        return self.wait_until(
            name,
            lambda d: not any(z.get("workers") for z in d["zygotes"]),
            timeout,
            "scaled to zero",
        )

    def wait_no_zygotes(self, name: str, timeout: float) -> float:
        return self.wait_until(name, lambda d: not d["zygotes"], timeout, "without zygotes")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# ---------------------------------------------------------------------------------------------
# machine description


def machine_info() -> dict[str, str]:
    def sh(argv: list[str]) -> str:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=10, check=False, cwd=ROOT
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": sh(["nproc"]),
        "free_g": sh(["free", "-g"]),
        "cpu": cpu,
        "kernel": _platform.release(),
        "python": _platform.python_version(),
        "commit": sh(["git", "rev-parse", "--short", "HEAD"]) or "(no commit)",
    }


@contextlib.contextmanager
def section(name: str, results: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Collect one benchmark's results under `results[name]`; a failure is recorded there
    as `error` instead of stopping the run."""
    out: dict[str, Any] = results.setdefault(name, {})
    try:
        yield out
    except BenchError as exc:
        log(f"{name}: FAILED: {exc}")
        out["error"] = str(exc)
    except Exception as exc:  # a bug in one benchmark must not lose the others
        log(f"{name}: FAILED with {type(exc).__name__}: {exc}")
        out["error"] = f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------
# options shared by the benchmark modules


@dataclass
class Options:
    duration_s: float = 10.0  # one measured wrk run
    warmup_s: float = 3.0  # one wrk warm-up run per target
    rounds: int = 4  # measured runs per target, interleaved between targets
    connections: int = 32
    wrk_threads: int = 1
    warm_calls: int = 200  # sequential warm calls for the warm-latency baseline
    cold_samples: int = 20  # cold calls with the zygote warm
    full_cold_samples: int = 15  # cold calls without a zygote
    ray: bool = True  # include the Ray Serve peer

    @classmethod
    def quick(cls) -> Options:
        return cls(
            duration_s=3.0,
            warmup_s=1.0,
            rounds=1,
            warm_calls=50,
            cold_samples=5,
            full_cold_samples=3,
        )


def kill_matching(needle: str) -> list[str]:
    """SIGKILL every process whose command line contains `needle` (a unique temp path of
    ours, never a broad name); returns what was killed."""
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        line = cmdline(int(entry))
        if needle in line:
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGKILL)
                killed.append(f"pid {entry}: {line[:120]}")
    return killed


@contextlib.contextmanager
def starlette_server(workers: int = 1) -> Iterator[tuple[str, Proc]]:
    """The bare Starlette peer (bench/peers/starlette_echo.py) on uvicorn with uvloop and
    httptools, no access log: one process, or `workers` processes behind uvicorn's
    supervisor (`--workers N`, one shared listening socket). Yields (echo URL, process)
    once it answers."""
    port = free_port()
    proc = Proc(
        [
            python_exe(),
            *("-m", "uvicorn", "bench.peers.starlette_echo:app"),
            *("--host", HOST, "--port", str(port)),
            *("--loop", "uvloop", "--http", "httptools"),
            *("--no-access-log", "--log-level", "warning"),
            *(("--workers", str(workers)) if workers > 1 else ()),
        ],
        name="starlette",
        log_path=Path(tempfile.mkstemp(prefix="bench-starlette-", suffix=".log")[1]),
        cwd=ROOT,
    )
    url = f"http://{HOST}:{port}/echo"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_request("POST", url, b"{}", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if not proc.alive() or time.monotonic() > deadline:
                raise BenchError("bare Starlette did not start:\n" + proc.log_tail())
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.stop()
        with contextlib.suppress(OSError):
            proc.log_path.unlink()


@dataclass
class PairResult:
    """Two targets run alternately, round by round: the median of per-round ratios
    a/b cancels most of the drift of a shared machine."""

    a_rps: float
    b_rps: float
    ratio: float


def interleaved_ratio(
    label: str,
    a: tuple[str, str, Mapping[str, str]],
    b: tuple[str, str, Mapping[str, str]],
    *,
    body: bytes,
    rounds: int,
    duration_s: float,
) -> PairResult:
    """(name, url, headers) for each side; the order alternates every round."""
    a_rps, b_rps, ratios = [], [], []
    for r in range(rounds):
        order = [a, b] if r % 2 == 0 else [b, a]
        got: dict[str, float] = {}
        for name, url, headers in order:
            res = run_wrk(url, body=body, headers=headers, duration_s=duration_s)
            if res.error_count:
                raise BenchError(f"{name}: {res.error_count} errors")
            got[name] = res.rps
        a_rps.append(got[a[0]])
        b_rps.append(got[b[0]])
        ratios.append(got[a[0]] / got[b[0]])
        log(f"{label} round {r + 1}: {a[0]} {got[a[0]]:,.0f} req/s, {b[0]} {got[b[0]]:,.0f}")
    return PairResult(median(a_rps), median(b_rps), median(ratios))


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster on loopback (tests/pg.py `PgCluster`: Debian's
    binaries, fsync off); yields the cluster (`create_database()` gives a DSN), stops and
    deletes it after. BenchError when PostgreSQL or psycopg is not installed."""
    try:
        from tests.pg import PgCluster, why_unavailable
    except ImportError as exc:
        raise BenchError(f"tests/pg.py does not import ({exc}): pip install psycopg") from exc
    why = why_unavailable()
    if why is not None:
        raise BenchError(why)
    try:
        cluster = PgCluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"PostgreSQL did not start: {_first(str(exc))}") from exc
    log(f"PostgreSQL {cluster.bindir.parent.name} on 127.0.0.1:{cluster.port}")
    try:
        yield cluster
    finally:
        cluster.stop()


def _first(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""
