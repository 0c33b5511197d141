"""Runtime settings as plain data (one object for the whole executor)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    idle_timeout_s: float = 60.0
    zygote_idle_timeout_s: float = 600.0
    queue_size: int = 256
    max_request_bytes: int = 6 * MB
    max_response_bytes: int = 6 * MB
    zygote_start_timeout_s: float = 120.0
    python: str = field(default_factory=lambda: sys.executable)
    reap_interval_s: float = 0.5
    # Frames a busy concurrency-1 worker may hold queued behind the running one.
    prefetch: int = 1
    # "strict": refuse to start without bubblewrap; "auto": bubblewrap when installed (a
    # bwrap that is installed but fails refuses to start), else process isolation under a
    # private uid; "process": never bubblewrap (docs/sandbox.md, "Start-up").
    isolation: str = "auto"
    # Hidden from every worker (the sandbox mounts an empty tmpfs over it).
    data_dir: Path | None = None
    # Sandboxed interpreters kept started (cumulo imported, no function yet) for full cold
    # starts to adopt (spares.py); 0: every zygote is a new interpreter.
    spare_zygotes: int = 1
    # The function memory (= /tmp size) spares are started for; others take the old path.
    spare_memory_mb: int = 256
    # Operator ceilings (`cumulo up --max-…`): a deploy asking for more is a 400, whatever
    # its bundle says (control/limits.py).
    max_memory_mb: int = 2048
    max_instances: int = 100
    max_concurrency: int = 1000
    max_timeout_s: float = 900.0
    # Processes and threads one version's whole tree may hold (its control group's pids.max
    # and RLIMIT_NPROC), whatever max_instances x concurrency would allow.
    max_pids: int = 2048
    # Largest container image a deploy may bring, archive and unpacked root alike
    # (`cumulo up --max-image-mb`; runtime/oci_image.py).
    max_image_mb: int = 512
