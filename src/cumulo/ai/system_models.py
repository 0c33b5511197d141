"""Built-in model deployments: models the platform itself serves (today: embeddings).

A built-in model is a `VersionSpec` the gateway makes up instead of reading from the
store: its code ships inside the cumulo package (ai/builtin/), it runs like any model
(its own sandboxed zygote loads it, workers fork from it, it scales from zero and idles
out, the batcher batches it, Platform.invoke records and meters it) and it never loads in
the gateway process. Its invocations are recorded in the reserved namespace `_system`,
which no user namespace can be (names allow only a-z, 0-9 and '-').
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from cumulo.runtime.loader import KIND_MODEL
from cumulo.runtime.spec import VersionSpec
from cumulo.sdk.spec import FunctionConfig

SYSTEM_NAMESPACE = "_system"
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_ALIASES = frozenset({EMBEDDING_MODEL, f"sentence-transformers/{EMBEDDING_MODEL}"})
EMBEDDING_DIMENSIONS = 384
# Weights (~90 MB) and torch live in the zygote; a worker needs room for the activations of
# a batch and torch's per-thread arenas (measured: ~300 MB at peak, 32 texts × 256 tokens).
EMBEDDING_MEMORY_MB = 1024


@cache
def embedding_spec() -> VersionSpec:
    """The built-in embedding deployment: a worker per core (`CUMULO_EMBEDDING_WORKERS`),
    one torch thread each (`CUMULO_TORCH_THREADS`), batches of up to 32 texts."""
    workers = int(os.environ.get("CUMULO_EMBEDDING_WORKERS") or os.cpu_count() or 1)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    threads = os.environ.get("CUMULO_TORCH_THREADS")
    if threads:
        env["CUMULO_TORCH_THREADS"] = threads
    return VersionSpec(
        namespace=SYSTEM_NAMESPACE,
        function="embeddings",
        version=1,
        code_dir=BUILTIN_DIR,
        module="minilm",
        attr="MiniLM",
        kind=KIND_MODEL,
        config=FunctionConfig(
            memory_mb=EMBEDDING_MEMORY_MB,
            timeout_s=60.0,
            max_instances=max(1, workers),
            batch_max_size=32,
            batch_wait_ms=5.0,
            env=env,
        ),
    )
