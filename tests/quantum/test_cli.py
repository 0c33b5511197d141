"""`cumulo quantum run/status/cancel` against a live server."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from cumulo.cli.quantum import app, histogram
from tests.quantum.circuits import BELL, direct_counts, slow_circuit
from tests.quantum.conftest import QuantumServer, free_port


@pytest.fixture
def cli(quantum_server: QuantumServer, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CUMULO_URL", quantum_server.url)
    monkeypatch.setenv("CUMULO_API_KEY", "test-key")
    return CliRunner()


@pytest.fixture
def bell_file(tmp_path: Path) -> Path:
    path = tmp_path / "bell.qasm"
    path.write_text(BELL)
    return path


def test_run_prints_histogram(cli: CliRunner, bell_file: Path) -> None:
    result = cli.invoke(app, ["run", str(bell_file), "--shots", "1000", "--seed", "7"])
    assert result.exit_code == 0, result.output
    counts = direct_counts(BELL, 1000, 7, "stabilizer")
    assert "register c · 1000 shots" in result.stdout
    for key, n in counts.items():
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(key))
        assert "█" in line
        assert str(n) in line


def test_run_json_and_status(cli: CliRunner, bell_file: Path) -> None:
    result = cli.invoke(app, ["run", str(bell_file), "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    job = orjson.loads(result.stdout)
    assert job["state"] == "succeeded"
    assert job["result"]["pubs"][0]["data"]["c"]["counts"] == direct_counts(
        BELL, 1024, 3, "stabilizer"
    )
    status = cli.invoke(app, ["status", job["id"]])
    assert status.exit_code == 0, status.output
    assert f"{job['id']}: succeeded" in status.stdout
    assert "running" in status.stdout


def test_no_wait_then_cancel(cli: CliRunner, tmp_path: Path) -> None:
    slow = tmp_path / "slow.qasm"
    slow.write_text(slow_circuit())
    submitted = cli.invoke(app, ["run", str(slow), "--shots", "1000000", "--no-wait"])
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    assert job_id.startswith("qj_")
    cancelled = cli.invoke(app, ["cancel", job_id])
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.strip() in (f"{job_id}: cancelled", f"{job_id}: cancelling")
    status = cli.invoke(app, ["status", job_id, "--wait", "--json"])
    assert orjson.loads(status.stdout)["state"] == "cancelled"


def test_dry_run(cli: CliRunner, bell_file: Path) -> None:
    result = cli.invoke(app, ["run", str(bell_file), "--dry-run", "--method", "statevector"])
    assert result.exit_code == 0, result.output
    assert "admitted: statevector on CPU, 2 qubits, about 64 bytes" in result.stdout


def test_bad_circuit_is_one_line_error(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.qasm"
    bad.write_text('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\nfrob q[0];\n')
    result = cli.invoke(app, ["run", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "line 4, column 1" in result.stderr
    assert "Traceback" not in result.output


def test_missing_file_and_unreachable_server(
    cli: CliRunner, tmp_path: Path, bell_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli.invoke(app, ["run", str(tmp_path / "nope.qasm")])
    assert result.exit_code == 1
    assert "cannot read" in result.stderr
    monkeypatch.setenv("CUMULO_URL", f"http://127.0.0.1:{free_port()}")
    result = cli.invoke(app, ["run", str(bell_file)])
    assert result.exit_code == 1
    assert "cannot reach" in result.stderr


def test_histogram_orders_and_truncates() -> None:
    counts = {format(i, "05b"): i + 1 for i in range(20)}
    lines = histogram(counts, sum(counts.values()), "title")
    assert lines[0] == "title"
    assert lines[1].strip().startswith("10011")
    assert lines[-1].startswith("  … 4 more outcome(s)")
