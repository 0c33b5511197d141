"""Model file loaders for `load()` of a `@cumulo.model`: ONNX, scikit-learn (skops), PyTorch.

```python
from cumulo.ai.formats import load_onnx, load_skops, load_torch
```
`onnx_signature(path)` reads an ONNX graph's input and output tensors for the KServe V2
signature of `@cumulo.model(**onnx_signature("model.onnx"))` (ai/kserve.py).
Each library is imported when its loader is called (inside the zygote), never by the
gateway. A raw pickle or joblib file runs arbitrary code when loaded, so `load_pickle` and
`load_joblib` refuse unless the deployer said so (`cumulo deploy --trust-pickle`, or
`@cumulo.model(trust_pickle=True)`). That is a guard against loading an unreviewed file by
accident; the sandbox, not this check, is what confines the code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Set by the zygote from the function's config before `load()` runs (sdk/model.py).
_pickle_trusted = False


class PickleRefused(Exception):
    """A raw pickle/joblib load without --trust-pickle."""


class UntrustedTypes(Exception):
    """A skops file names types outside skops' trusted defaults and the caller's list."""


def trust_pickle(allowed: bool) -> None:
    global _pickle_trusted
    _pickle_trusted = allowed


def pickle_trusted() -> bool:
    return _pickle_trusted


def _require_trust(path: str | os.PathLike[str], how: str) -> None:
    if not _pickle_trusted:
        raise PickleRefused(
            f"refusing to load {Path(path).name} with {how}: it can run arbitrary code. "
            "Save the model with skops, ONNX or a torch state_dict, or redeploy with "
            "--trust-pickle if you trust this file"
        )


def load_onnx(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An onnxruntime InferenceSession on the CPU; `threads` caps its intra-op threads."""
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


# ONNX element types (onnxruntime's spelling) → Open Inference Protocol datatypes.
ONNX_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def onnx_signature(path: str | os.PathLike[str]) -> dict[str, list[tuple[str, str, list[int]]]]:
    """`{"inputs": [...], "outputs": [...]}` of an ONNX graph as `@cumulo.model` takes them:
    each tensor's name, datatype and shape, a symbolic or unknown dimension as -1.

    It runs where the module is imported (the zygote, and the deploy's validation), not in
    the gateway; ValueError names a tensor whose element type has no V2 datatype."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def tensors(args: Any) -> list[tuple[str, str, list[int]]]:
        found = []
        for arg in args:
            datatype = ONNX_DATATYPES.get(arg.type)
            if datatype is None:
                raise ValueError(
                    f"{Path(path).name}: tensor {arg.name!r} is {arg.type}, which has no "
                    "KServe V2 datatype"
                )
            shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
            found.append((str(arg.name), datatype, shape or [-1]))
        return found

    return {"inputs": tensors(session.get_inputs()), "outputs": tensors(session.get_outputs())}


def load_skops(path: str | os.PathLike[str], *, trusted: Sequence[str] = ()) -> Any:
    """A scikit-learn estimator saved with `skops.io.dump`.

    skops refuses types it does not know to be safe; list the ones you reviewed in
    `trusted` (as `skops.io.get_untrusted_types` names them)."""
    import skops.io  # type: ignore[import-untyped]

    untrusted = skops.io.get_untrusted_types(file=str(path))
    unknown = sorted(set(untrusted) - set(trusted))
    if unknown:
        raise UntrustedTypes(
            f"{Path(path).name} holds types skops does not trust: {', '.join(unknown)}; "
            "review them and pass load_skops(path, trusted=[...])"
        )
    return skops.io.load(str(path), trusted=list(untrusted))


def load_torch(
    path: str | os.PathLike[str], model: Any = None, *, threads: int | None = None
) -> Any:
    """A PyTorch model in eval mode: with `model` (an nn.Module), its `state_dict` is read
    from `path` (weights only: no code runs); without, `path` is a `torch.export` program
    (`.pt2`) or a TorchScript archive."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    if model is None and str(path).endswith(".pt2"):
        return torch.export.load(str(path)).module()
    if model is None:
        loaded = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        loaded = model
    loaded.eval()
    return loaded


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """A raw pickle: only with --trust-pickle."""
    _require_trust(path, "pickle")
    import pickle

    with open(path, "rb") as fh:
        return pickle.load(fh)  # noqa: S301 - the deployer vouched for this file


def load_joblib(path: str | os.PathLike[str]) -> Any:
    """A joblib file (pickle inside): only with --trust-pickle."""
    _require_trust(path, "joblib")
    import joblib  # type: ignore[import-untyped]

    return joblib.load(str(path))
