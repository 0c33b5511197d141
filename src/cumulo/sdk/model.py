"""`@cumulo.model`: serve a class with `load()` and `predict(batch)` as a batched endpoint.

```python
@cumulo.model(batch_max_size=32, batch_wait_ms=5)
class Sentiment:
    def load(self) -> None:            # once, in the zygote: forked workers share the weights
        self.model = load_skops("model.skops")

    def predict(self, batch: list) -> list:   # one result per instance, in order
        return self.model.predict(batch).tolist()
```

The gateway gathers concurrent requests into one batch (ai/batching.py); `load()` runs in
the version's zygote before it forks, so every worker shares the loaded weights
copy-on-write. The runtime half lives here too (`load_model`, `run_batch`): it runs inside
zygotes and workers, never in the gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import msgpack
import orjson

from cumulo.sdk.decorators import make_spec
from cumulo.sdk.spec import SPEC_ATTR, FunctionConfig

if TYPE_CHECKING:
    from cumulo.runtime.loader import FoundHandler

C = TypeVar("C", bound=type)

# Worker allowance above the zygote (which holds the weights). Measured: a forked worker's
# address space grows ~300 MB for torch inference threads and arenas (MiniLM, batch 32);
# 1 GiB leaves room for larger batches and onnxruntime's arena.
DEFAULT_MODEL_MEMORY_MB = 1024
DEFAULT_MODEL_TIMEOUT_S = 60.0
# Models are CPU-bound: more workers than cores only shrinks each batch.
DEFAULT_MODEL_MAX_INSTANCES = 4

# orjson writes numpy arrays and scalars directly (a predict may return array rows).
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@overload
def model(cls: C, /) -> C: ...


@overload
def model(
    cls: None = None,
    /,
    *,
    name: str | None = None,
    batch_max_size: int = 32,
    batch_wait_ms: float = 5.0,
    memory_mb: int = DEFAULT_MODEL_MEMORY_MB,
    timeout_s: float = DEFAULT_MODEL_TIMEOUT_S,
    min_instances: int = 0,
    max_instances: int = DEFAULT_MODEL_MAX_INSTANCES,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    secrets: Iterable[str] = (),
    network: bool = False,
    public: bool = False,
    rate_limit: str = "",
    trust_pickle: bool = False,
    inputs: Iterable[Any] = (),
    outputs: Iterable[Any] = (),
) -> Callable[[C], C]: ...


def model(
    cls: C | None = None,
    /,
    *,
    name: str | None = None,
    batch_max_size: int = 32,
    batch_wait_ms: float = 5.0,
    memory_mb: int = DEFAULT_MODEL_MEMORY_MB,
    timeout_s: float = DEFAULT_MODEL_TIMEOUT_S,
    min_instances: int = 0,
    max_instances: int = DEFAULT_MODEL_MAX_INSTANCES,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    secrets: Iterable[str] = (),
    network: bool = False,
    public: bool = False,
    rate_limit: str = "",
    trust_pickle: bool = False,
    inputs: Iterable[Any] = (),
    outputs: Iterable[Any] = (),
) -> C | Callable[[C], C]:
    """Mark a class with `load(self)` and `predict(self, batch: list) -> list` as a model.

    Concurrent requests are batched: up to `batch_max_size` instances, waiting at most
    `batch_wait_ms` for the batch to fill. `trust_pickle` (or `cumulo deploy
    --trust-pickle`) allows raw pickle/joblib loads in `cumulo.ai.formats`. `inputs` and
    `outputs` declare the KServe V2 signature: `(name, datatype, shape)` per tensor, -1 for
    a dimension of any size (ai/tensors.py)."""
    spec = make_spec(
        name,
        model=True,
        memory_mb=memory_mb,
        timeout_s=timeout_s,
        min_instances=min_instances,
        max_instances=max_instances,
        concurrency=concurrency,
        env=dict(env or {}),
        secrets=tuple(secrets),
        network=network,
        public=public,
        rate_limit=rate_limit,
        batch_max_size=batch_max_size,
        batch_wait_ms=float(batch_wait_ms),
        trust_pickle=trust_pickle,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
    )

    def mark(target: C) -> C:
        if not isinstance(target, type):
            raise TypeError("@cumulo.model decorates a class with load() and predict(batch)")
        if not callable(getattr(target, "predict", None)):
            raise TypeError(f"model class {target.__name__} needs a predict(self, batch) method")
        setattr(target, SPEC_ATTR, spec)
        return target

    if cls is not None:
        return mark(cls)
    return mark


# ------------------------------------------------------------------ runtime (zygote, worker)
class ModelOutputError(Exception):
    """predict() broke its contract: the invocation fails with 502 and this message."""


def load_model(handler: FoundHandler, config: FunctionConfig, code_dir: Path) -> FoundHandler:
    """In the zygote, before any fork: instantiate the class, run its `load()`, and return
    the handler whose callable is the loaded instance's `predict`."""
    import dataclasses

    from cumulo.ai.formats import trust_pickle
    from cumulo.runtime.loader import UserCodeError, user_traceback

    trust_pickle(config.trust_pickle)
    try:
        instance = handler.func()
        load = getattr(instance, "load", None)
        if callable(load):
            load()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserCodeError(
            f"loading model {handler.name} failed: {type(exc).__name__}: {exc}",
            user_traceback(exc, code_dir),
        ) from exc
    return dataclasses.replace(handler, func=instance.predict)


def run_batch(predict: Callable[[list[Any]], Any], message: dict[str, Any]) -> bytes:
    """Run one invocation frame of a model.

    A batch frame (`batch`: JSON documents, from the gateway's batcher) answers with a
    msgpack list of JSON documents, one per instance; any other frame (async invocations,
    events) is a batch of one and answers with its single JSON result."""
    raw_items = message.get("batch")
    if raw_items is None:
        raw = message.get("ev")
        items = [orjson.loads(raw) if raw else message.get("q", {})]
    else:
        items = [orjson.loads(raw) for raw in raw_items]
    results = predict(items)
    if not isinstance(results, list | tuple):
        raise ModelOutputError(
            f"predict() must return a list (one result per instance), not "
            f"{type(results).__name__}" + (": use .tolist()" if hasattr(results, "tolist") else "")
        )
    if len(results) != len(items):
        raise ModelOutputError(
            f"predict() returned {len(results)} results for a batch of {len(items)} instances"
        )
    try:
        encoded = [orjson.dumps(result, option=_DUMPS_OPTIONS) for result in results]
    except TypeError as exc:
        raise ModelOutputError(f"a predict() result is not JSON-serializable: {exc}") from None
    if raw_items is None:
        return encoded[0]
    return bytes(msgpack.packb(encoded, use_bin_type=True))


def split_batch(body: bytes) -> list[bytes]:
    """The gateway's half of `run_batch`: the per-instance JSON documents of a batch reply."""
    items = msgpack.unpackb(body, raw=False)
    if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
        raise ValueError("a model's batch reply is not a list of JSON documents")
    return items
