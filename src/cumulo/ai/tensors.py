"""Open Inference Protocol tensors in plain Python: datatypes, the binary tensor extension's
byte layout, and the input/output signature a `@cumulo.model` declares.

The gateway never imports numpy, so tensors are flat Python lists here. Binary tensor data
is the raw little-endian row-major bytes of the tensor (BOOL one byte per element; BYTES a
4-byte little-endian length before each element), as KServe and Triton lay it out.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Iterable, Mapping
from typing import Any

from cumulo.errors import BadRequest

# Bytes per element; BYTES has none (each element carries its own length).
ITEM_SIZE = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
}
DATATYPES = frozenset({*ITEM_SIZE, "BYTES"})
INTEGER = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})
FLOAT = frozenset({"FP16", "FP32", "FP64"})
_LIMITS = {
    t: (0, 2 ** (8 * ITEM_SIZE[t]) - 1)
    if t.startswith("U")
    else (-(2 ** (8 * ITEM_SIZE[t] - 1)), 2 ** (8 * ITEM_SIZE[t] - 1) - 1)
    for t in INTEGER
}
_SIGNED = {1: "b", 2: "h", 4: "i", 8: "q"}


def _typecode(datatype: str) -> str | None:
    """The `array` typecode of a datatype, None where `array` has none (FP16, BOOL)."""
    if datatype == "FP32":
        return "f"
    if datatype == "FP64":
        return "d"
    if datatype not in INTEGER:
        return None
    code = _SIGNED[ITEM_SIZE[datatype]]
    code = code.upper() if datatype.startswith("U") else code
    # `i` and `q` are C int / long long: check the width this interpreter gives them.
    return code if array(code).itemsize == ITEM_SIZE[datatype] else None


# ------------------------------------------------------------------ values
def values_match(datatype: str, values: list[Any]) -> bool:
    """Whether JSON-decoded `values` are valid elements of `datatype` (integers in range).

    Exact types, as a JSON decoder makes them (a bool is not an integer here); the checks
    run over the set of types and min/max, in C, so a megabyte tensor costs little."""
    types = set(map(type, values))
    if datatype == "BOOL":
        return types <= {bool}
    if datatype == "BYTES":
        return types <= {str}
    if datatype in INTEGER:
        if not types <= {int}:
            return False
        low, high = _LIMITS[datatype]
        return not values or (low <= min(values) and max(values) <= high)
    return types <= {int, float}


# ------------------------------------------------------------------ binary codec
def decode_binary(name: str, datatype: str, shape: list[int], raw: memoryview) -> list[Any]:
    """The flat elements of input `name` from its binary data (400 when the byte count
    disagrees with shape and datatype, or a BYTES element is not UTF-8 text)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes(name, shape, count, raw)
    needed = count * ITEM_SIZE[datatype]
    if len(raw) != needed:
        raise BadRequest(
            f"input {name!r}: shape {shape} of {datatype} needs {needed} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    if datatype == "BOOL":
        return [b != 0 for b in raw]
    code = _typecode(datatype)
    if code is None:  # FP16, or an integer width `array` lacks here
        fmt = "e" if datatype == "FP16" else _SIGNED[ITEM_SIZE[datatype]]
        fmt = fmt.upper() if datatype.startswith("U") else fmt
        return list(struct.unpack(f"<{count}{fmt}", raw))
    values = array(code)
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def _decode_bytes(name: str, shape: list[int], count: int, raw: memoryview) -> list[Any]:
    out: list[str] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise BadRequest(f"input {name!r}: BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise BadRequest(
                f"input {name!r}: a BYTES element of {size} bytes runs past binary_data_size"
            )
        try:
            out.append(bytes(raw[at : at + size]).decode())
        except UnicodeDecodeError:
            raise BadRequest(
                f"input {name!r}: BYTES element {len(out)} is not UTF-8 text"
            ) from None
        at += size
    if len(out) != count:
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {count} BYTES elements, "
            f"the binary data holds {len(out)}"
        )
    return out


def encode_binary(datatype: str, values: list[Any]) -> bytes:
    """The binary tensor data of flat `values` (already checked against `datatype`)."""
    if datatype == "BYTES":
        parts = []
        for value in values:
            data = value.encode() if isinstance(value, str) else bytes(value)
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    if datatype == "BOOL":
        return bytes(1 if v else 0 for v in values)
    code = _typecode(datatype)
    if code is None:
        fmt = "e" if datatype == "FP16" else _SIGNED[ITEM_SIZE[datatype]]
        fmt = fmt.upper() if datatype.startswith("U") else fmt
        return struct.pack(f"<{len(values)}{fmt}", *values)
    packed = array(code, values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


# ------------------------------------------------------------------ signatures
def tensor_specs(value: Any, what: str) -> tuple[dict[str, Any], ...]:
    """`inputs=` / `outputs=` of `@cumulo.model` as `({"name", "datatype", "shape"}, …)`.

    Each tensor is a mapping with those keys or a `(name, datatype, shape)` triple; -1 in a
    shape is a dimension of any size (the first one is the batch). Raises ValueError with
    one line on anything else."""
    if value is None:
        return ()
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise ValueError(f"{what} must be a list of tensors (name, datatype, shape)")
    specs: list[dict[str, Any]] = []
    for item in value:
        if isinstance(item, Mapping):
            name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        elif isinstance(item, list | tuple) and len(item) == 3:
            name, datatype, shape = item
        else:
            raise ValueError(f"each of {what} is (name, datatype, shape) or a dict of those")
        if not isinstance(name, str) or not name or len(name) > 128:
            raise ValueError(f"{what}: a tensor name must be 1-128 characters")
        if datatype not in DATATYPES:
            raise ValueError(
                f"{what}: tensor {name!r} has unknown datatype {datatype!r} (use one of "
                f"{', '.join(sorted(DATATYPES))})"
            )
        if (
            not isinstance(shape, list | tuple)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape)
        ):
            raise ValueError(
                f"{what}: tensor {name!r} needs a shape of integers (-1 for any size), "
                "batch dimension first"
            )
        if any(s["name"] == name for s in specs):
            raise ValueError(f"{what}: tensor {name!r} appears twice")
        specs.append({"name": name, "datatype": str(datatype), "shape": [int(d) for d in shape]})
    if len(specs) > 64:
        raise ValueError(f"{what}: at most 64 tensors")
    return tuple(specs)


def shape_fits(shape: list[int], declared: list[int]) -> bool:
    return len(shape) == len(declared) and all(
        d == -1 or d == s for s, d in zip(shape, declared, strict=True)
    )
