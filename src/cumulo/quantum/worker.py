"""A warm simulation worker: imports Qiskit Aer once, then runs jobs sent over a socket.

Started by the pool as `python -m cumulo.quantum.worker FD PARENT_PID`. It dies with its
parent (PR_SET_PDEATHSIG), so a SIGKILLed gateway leaves no simulators behind.

Messages in:  {"op": "run", "job", "pubs", "method", "device", "seed", "bitstrings",
               "bit_order", "max_memory_mb"}
Messages out: {"op": "hello", ...capabilities}, then per job {"op": "started"},
              {"op": "progress", "done"} after each PUB, and {"op": "result", "result"} or
              {"op": "error", "message"}.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import sys
import time
from typing import Any

from cumulo import fds
from cumulo.quantum.prepare import circuit_from_bytes
from cumulo.quantum.protocol import pack, recv_sync

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork and prctl; then nobody will signal us.
    if os.getppid() != parent_pid:
        os._exit(0)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        match = re.search(rf"^{field}:\s+(\d+)", fh.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux ≥ 4.0), so the peak is this job's alone.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class Runner:
    def __init__(self) -> None:
        import qiskit
        import qiskit_aer
        from qiskit_aer import AerSimulator

        self._aer = AerSimulator
        self.versions = {"qiskit": qiskit.__version__, "qiskit_aer": qiskit_aer.__version__}
        self.devices = [str(d) for d in AerSimulator().available_devices()]
        self._sims: dict[tuple[str, str], Any] = {}

    def warm_up(self) -> None:
        """Load Aer's kernels and thread pool now, not on the first user job."""
        from qiskit import QuantumCircuit

        bell = QuantumCircuit(2, 2)
        bell.h(0)
        bell.cx(0, 1)
        bell.measure([0, 1], [0, 1])
        for method in ("statevector", "stabilizer", "matrix_product_state"):
            self._sim(method, "CPU").run(bell, shots=16, seed_simulator=1).result()

    def _sim(self, method: str, device: str) -> Any:
        key = (method, device)
        if key not in self._sims:
            self._sims[key] = self._aer(method=method, device=device)
        return self._sims[key]

    def run(self, job: dict[str, Any], send: Any) -> dict[str, Any]:
        from cumulo.quantum.results import SCHEMA

        _reset_peak_rss()
        started = time.perf_counter()
        send({"op": "started", "job": job["job"]})
        out: list[dict[str, Any]] = []
        for i, pub in enumerate(job["pubs"]):
            seed = int(job["seed"]) + i
            if pub["kind"] == "sampler":
                out.append(self._sample(job, pub, seed))
            else:
                out.append(self._estimate(job, pub, seed))
            send({"op": "progress", "job": job["job"], "done": i + 1})
        return {
            "schema": SCHEMA,
            "pubs": out,
            "metadata": {
                "seed": int(job["seed"]),
                "method": job["method"],
                "device": job["device"],
                "qiskit_version": self.versions["qiskit"],
                "qiskit_aer_version": self.versions["qiskit_aer"],
                "run_time_s": round(time.perf_counter() - started, 6),
                "peak_memory_bytes": _status_kib("VmHWM") * 1024,
            },
        }

    def _execute(
        self, job: dict[str, Any], circuit: Any, pub: dict[str, Any], **options: Any
    ) -> Any:
        binds = None
        if pub["param_names"]:
            by_name = {p.name: p for p in circuit.parameters}
            columns = list(zip(*pub["values"], strict=True))
            binds = [
                {
                    by_name[name]: list(col)
                    for name, col in zip(pub["param_names"], columns, strict=True)
                }
            ]
        sim = self._sim(job["method"], job["device"])
        result = sim.run(
            circuit,
            parameter_binds=binds,
            max_memory_mb=job["max_memory_mb"],
            **options,
        ).result()
        if not result.success:
            failed = [r.status for r in result.results if not r.success]
            raise RuntimeError(failed[0] if failed else str(result.status))
        return result

    def _sample(self, job: dict[str, Any], pub: dict[str, Any], seed: int) -> dict[str, Any]:
        from cumulo.quantum.results import nest, registers, split_counts, split_memory

        circuit = circuit_from_bytes(pub["circuit"])
        bitstrings = bool(job["bitstrings"])
        result = self._execute(
            job, circuit, pub, shots=pub["shots"], seed_simulator=seed, memory=bitstrings
        )
        regs = registers(circuit)
        big = job["bit_order"] == "big"
        shape = pub["shape"]
        per_binding_counts = []
        per_binding_memory = []
        elapsed = 0.0
        for k in range(len(result.results)):
            data = result.data(k)
            per_binding_counts.append(split_counts(data.get("counts", {}), regs, big))
            if bitstrings:
                per_binding_memory.append(split_memory(data.get("memory", []), regs, big))
            elapsed += float(result.results[k].metadata.get("time_taken", 0.0) or 0.0)
        data_out: dict[str, Any] = {}
        for name, indices in regs:
            entry: dict[str, Any] = {
                "num_bits": len(indices),
                "counts": nest([c[name] for c in per_binding_counts], shape),
            }
            if bitstrings:
                entry["bitstrings"] = nest([m[name] for m in per_binding_memory], shape)
            data_out[name] = entry
        return {
            "kind": "sampler",
            "shape": shape,
            "shots": pub["shots"],
            "bit_order": job["bit_order"],
            "data": data_out,
            "metadata": {
                "seed": seed,
                "method": job["method"],
                "num_qubits": circuit.num_qubits,
                "parameters": pub["param_names"],
                "time_s": round(elapsed, 6),
            },
        }

    def _estimate(self, job: dict[str, Any], pub: dict[str, Any], seed: int) -> dict[str, Any]:
        import numpy as np
        from qiskit.quantum_info import Pauli
        from qiskit_aer.library import SaveExpectationValue

        from cumulo.quantum.results import estimates

        circuit = circuit_from_bytes(pub["circuit"])
        for j, label in enumerate(pub["paulis"]):
            circuit.append(SaveExpectationValue(Pauli(label), label=f"ev{j}"), circuit.qubits)
        result = self._execute(job, circuit, pub, shots=1, seed_simulator=seed)
        exact = np.array(
            [
                [float(np.real(result.data(k)[f"ev{j}"])) for j in range(len(pub["paulis"]))]
                for k in range(len(result.results))
            ]
        ).reshape(len(result.results), len(pub["paulis"]))
        terms = [[(int(i), float(c)) for i, c in row] for row in pub["observables"]]
        evs, stds, shots = estimates(
            exact,
            terms,
            pub["obs_shape"],
            pub["param_shape"],
            pub["shape"],
            float(pub["precision"]),
            seed,
        )
        elapsed = sum(float(r.metadata.get("time_taken", 0.0) or 0.0) for r in result.results)
        return {
            "kind": "estimator",
            "shape": pub["shape"],
            "evs": evs,
            "stds": stds,
            "precision": pub["precision"],
            "metadata": {
                "seed": seed,
                "method": job["method"],
                "num_qubits": circuit.num_qubits,
                "parameters": pub["param_names"],
                "shots_per_term": shots,
                "time_s": round(elapsed, 6),
            },
        }


def serve(sock: socket.socket) -> None:
    runner = Runner()
    runner.warm_up()

    def send(message: dict[str, Any]) -> None:
        sock.sendall(pack(message))

    send(
        {
            "op": "hello",
            "pid": os.getpid(),
            "versions": runner.versions,
            "devices": runner.devices,
            "rss_bytes": _status_kib("VmRSS") * 1024,
        }
    )
    while True:
        message = recv_sync(sock)
        if message is None:
            return
        if message.get("op") != "run":
            continue
        try:
            result = runner.run(message, send)
        except Exception as exc:
            text = str(exc).strip() or type(exc).__name__
            send({"op": "error", "job": message["job"], "message": text})
        else:
            send({"op": "result", "job": message["job"], "result": result})


def main(argv: list[str]) -> None:
    fd, parent_pid = int(argv[1]), int(argv[2])
    # Its socket and stdio: nothing else the gateway had open.
    fds.keep_only([fd])
    die_with_parent(parent_pid)
    sock = socket.socket(fileno=fd)
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    main(sys.argv)
