"""OpenQASM 2 / 3 text → `qiskit.QuantumCircuit`, with errors that carry a line and a column.

Both importers number columns from 0; every message here numbers lines and columns from 1,
the way editors do.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from cumulo.errors import BadRequest

_VERSION = re.compile(r"^\s*OPENQASM\s+([0-9]+)(?:\.([0-9]+))?\s*;", re.MULTILINE)
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_QASM2_POS = re.compile(r"^(?:<input>:)?(\d+),(\d+):\s*(.*)$", re.DOTALL)
_QASM3_POS = re.compile(r"^(\d+),(\d+):\s*(.*)$", re.DOTALL)
_UNKNOWN_GATE = re.compile(r"(?:gate )?'([^']+)' is not defined|gate '([^']+)' is not defined")
_MAX_MESSAGE = 300


class QasmError(BadRequest):
    """A circuit that does not parse; the message names the line and column."""

    def __init__(
        self, message: str, *, line: int | None = None, column: int | None = None, code: str
    ) -> None:
        where = ""
        if line is not None:
            where = f"line {line}" + (f", column {column}" if column is not None else "") + ": "
        super().__init__(f"invalid OpenQASM: {where}{_shorten(message)}", code=code)
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class ParsedCircuit:
    circuit: Any  # qiskit.QuantumCircuit
    qasm_version: int


def _shorten(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


def qasm_version(source: str) -> int:
    """2 or 3 from the `OPENQASM` header; OpenQASM 3 makes the header optional."""
    match = _VERSION.search(_COMMENTS.sub(lambda m: "\n" * m.group(0).count("\n"), source))
    if match is None:
        return 3
    major = int(match.group(1))
    if major not in (2, 3):
        line = source.count("\n", 0, match.start(1)) + 1
        raise QasmError(
            f"unsupported OpenQASM version {major} (2 and 3 are supported)",
            line=line,
            code="qasm_version",
        )
    return major


def _code_for(message: str) -> str:
    return "unknown_gate" if _UNKNOWN_GATE.search(message) else "qasm_error"


def _parse_qasm2(source: str) -> Any:
    from qiskit import qasm2

    try:
        return qasm2.loads(source, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    except qasm2.QASM2ParseError as exc:
        text = str(exc.message if hasattr(exc, "message") else exc).strip("\"'")
        match = _QASM2_POS.match(text)
        if match is None:
            raise QasmError(text, code=_code_for(text)) from None
        message = match.group(3)
        raise QasmError(
            message,
            line=int(match.group(1)),
            column=int(match.group(2)) + 1,
            code=_code_for(message),
        ) from None


class _SyntaxError(Exception):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


def _listener() -> Any:
    error_listener: Any = importlib.import_module("antlr4.error.ErrorListener").ErrorListener

    class _Raise(error_listener):  # type: ignore[misc]
        # The stock listeners print to stderr and let the parser limp on; the first error is
        # the one the author needs.
        def syntaxError(
            self,
            recognizer: object,
            offending_symbol: object,
            line: int,
            column: int,
            msg: str,
            exc: object,
        ) -> None:
            raise _SyntaxError(line, column + 1, msg)

    return _Raise()


def _parse_qasm3(source: str) -> Any:
    # Untyped packages: imported by name so the type checker treats them as Any.
    antlr4: Any = importlib.import_module("antlr4")
    oq3: Any = importlib.import_module("openqasm3.parser")
    importer: Any = importlib.import_module("qiskit_qasm3_import")
    conversion_error: Any = importlib.import_module("qiskit_qasm3_import.exceptions")
    convert = importer.convert
    ConversionError = conversion_error.ConversionError

    lexer = oq3.qasm3Lexer(antlr4.InputStream(source))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_listener())
    parser = oq3.qasm3Parser(antlr4.CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(_listener())
    try:
        program = oq3.QASMNodeVisitor().visitProgram(parser.program())
    except _SyntaxError as exc:
        raise QasmError(str(exc), line=exc.line, column=exc.column, code="qasm_syntax") from None
    try:
        return convert(program)
    except ConversionError as exc:
        text = str(exc.message)
        match = _QASM3_POS.match(text)
        if match is None:
            raise QasmError(text, code=_code_for(text)) from None
        message = match.group(3)
        raise QasmError(
            message,
            line=int(match.group(1)),
            column=int(match.group(2)) + 1,
            code=_code_for(message),
        ) from None


def parse_qasm(source: str) -> ParsedCircuit:
    """Parse OpenQASM 2 or 3 text; raise `QasmError` (a 400) naming where it went wrong."""
    version = qasm_version(source)
    try:
        circuit = _parse_qasm2(source) if version == 2 else _parse_qasm3(source)
    except QasmError:
        raise
    except Exception as exc:
        raise QasmError(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, code="qasm_error"
        ) from None
    return ParsedCircuit(circuit=circuit, qasm_version=version)


def to_qasm(circuit: Any) -> str:
    """QASM text for a `QuantumCircuit` (OpenQASM 3, which can carry parameters)."""
    from qiskit import qasm3

    return str(qasm3.dumps(circuit))
