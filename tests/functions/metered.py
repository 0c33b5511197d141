"""Functions with a known cost, for the metering tests (deployed with --handler)."""

import time

import cumulo


@cumulo.function(memory_mb=256, timeout_s=10)
def burn(event: dict, ctx: cumulo.Context) -> dict:
    """Burns `cpu` seconds of this thread's CPU, then sleeps `sleep` seconds; returns what it
    measured itself, and pads its answer to `pad` bytes."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    while time.thread_time() - cpu0 < float(event.get("cpu", 0)):
        pass
    time.sleep(float(event.get("sleep", 0)))
    return {
        "cpu": time.thread_time() - cpu0,
        "wall": time.perf_counter() - wall0,
        "pad": "x" * int(event.get("pad", 0)),
    }


@cumulo.function(memory_mb=128, timeout_s=5)
def fail(event: dict, ctx: cumulo.Context) -> dict:
    raise RuntimeError("metered failure")
