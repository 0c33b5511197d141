"""Caps on function log volume, applied where every log record enters the gateway.

A function's output is hostile input: 100 MB of `print` must not become 100 MB of database
rows or of gateway memory. Every record (ctx.log, captured stdout/stderr, process
functions' pipes) passes `LogLimiter.admit` before anything else touches it. Past a cap the
rest is dropped and one visible marker line says so, e.g.
`[cumulo: log output truncated after 1048576 bytes]`.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from cumulo.fds import MAX_LINE, TRUNCATED
from cumulo.store.base import LogRecord

MiB = 1024 * 1024
TRACKED_INVOCATIONS = 4096  # per-invocation counters kept (least recently logging dropped)
TRACKED_FUNCTIONS = 4096


@dataclass(frozen=True, slots=True)
class LogLimits:
    invocation_bytes: int = 1 * MiB
    invocation_lines: int = 10_000
    function_bytes: int = 8 * MiB  # per function per window
    function_lines: int = 50_000
    window_s: float = 60.0
    line_bytes: int = MAX_LINE  # one message; longer ones are cut (and end with TRUNCATED)
    fields_bytes: int = 16 * 1024  # one record's fields (JSON); more: replaced by a note
    retain_rows: int = 10_000  # stored lines kept per function, oldest dropped
    retain_bytes: int = 16 * MiB
    buffer_bytes: int = 16 * MiB  # lines waiting for the next flush, all functions


def marker(after: int, unit: str) -> str:
    return f"[cumulo: log output truncated after {after} {unit}]"


@dataclass(slots=True)
class _Budget:
    bytes: int = 0
    lines: int = 0
    closed: bool = False
    started: float = 0.0


def record_size(record: LogRecord) -> int:
    return len(record.message.encode("utf-8", "surrogatepass")) + 64


class LogLimiter:
    """Counts each invocation's and each function's lines and bytes; `admit` returns the
    record (perhaps cut), the truncation marker that replaces the first record over a cap,
    or None once a cap is reached."""

    def __init__(self, limits: LogLimits | None = None) -> None:
        self.limits = limits or LogLimits()
        self._invocations: OrderedDict[tuple[str, str, str], _Budget] = OrderedDict()
        self._functions: OrderedDict[tuple[str, str], _Budget] = OrderedDict()
        self.dropped = 0

    def admit(self, record: LogRecord, now: float) -> LogRecord | None:
        record = self._shrink(record)
        size = record_size(record)
        limits = self.limits
        fn_key = (record.namespace, record.function)
        function = self._functions.get(fn_key)
        if function is None or now - function.started >= limits.window_s:
            function = _Budget(started=now)
        self._functions[fn_key] = function
        self._functions.move_to_end(fn_key)
        if len(self._functions) > TRACKED_FUNCTIONS:
            self._functions.popitem(last=False)
        inv_key = (record.namespace, record.function, record.invocation_id)
        invocation = self._invocations.setdefault(inv_key, _Budget(started=now))
        self._invocations.move_to_end(inv_key)
        if len(self._invocations) > TRACKED_INVOCATIONS:
            self._invocations.popitem(last=False)
        for budget, max_bytes, max_lines, scope in (
            (invocation, limits.invocation_bytes, limits.invocation_lines, ""),
            (function, limits.function_bytes, limits.function_lines, " for this function"),
        ):
            if budget.closed:
                self.dropped += 1
                return None
            if budget.bytes + size > max_bytes or budget.lines + 1 > max_lines:
                budget.closed = True
                self.dropped += 1
                if budget.bytes + size > max_bytes:
                    text = marker(budget.bytes, "bytes")
                else:
                    text = marker(budget.lines, "lines")
                if scope:
                    text = f"{text[:-1]}{scope} in {limits.window_s:.0f}s]"
                return dataclasses.replace(record, level="warning", message=text, fields={})
        for budget in (invocation, function):
            budget.bytes += size
            budget.lines += 1
        return record

    def _shrink(self, record: LogRecord) -> LogRecord:
        limits = self.limits
        message, fields = record.message, record.fields
        # A line an output pipe already cut (fds.OutputPipe) ends with the same marker and
        # is not cut twice.
        body = message.removesuffix(TRUNCATED)
        if (
            len(body) > limits.line_bytes // 4
            and len(encoded := body.encode("utf-8", "surrogatepass")) > limits.line_bytes
        ):
            message = encoded[: limits.line_bytes].decode("utf-8", "ignore") + TRUNCATED
        if fields:
            try:
                too_big = len(orjson.dumps(fields)) > limits.fields_bytes
            except (TypeError, orjson.JSONEncodeError):
                too_big = True
            if too_big:
                fields = {"cumulo": f"fields over {limits.fields_bytes} bytes dropped"}
        if message is record.message and fields is record.fields:
            return record
        return dataclasses.replace(record, message=message, fields=fields)
