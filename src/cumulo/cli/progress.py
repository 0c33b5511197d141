"""Progress for long CLI operations: a rich spinner on a terminal, plain lines otherwise.

Scripts and tests read a command's plain output: when stderr is not a TTY, `progress`
stays quiet for the first PLAIN_AFTER_S seconds (a quick command prints only its own
lines) and then writes one plain line to stderr every PLAIN_EVERY_S seconds with the
current message and the time so far.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

Update = Callable[[str], None]
PLAIN_AFTER_S = 5.0
PLAIN_EVERY_S = 10.0


@contextlib.contextmanager
def progress(console: Console, message: str) -> Iterator[Update]:
    """A spinner with `message` and the time elapsed; yields a function that changes the
    message. The spinner disappears when the block ends."""
    if not console.is_terminal:
        with _plain_lines(console, message) as plain:
            yield plain
        return
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(message, total=None)

    def update(text: str) -> None:
        bar.update(task, description=text)

    with bar:
        yield update


@contextlib.contextmanager
def _plain_lines(console: Console, message: str) -> Iterator[Update]:
    import threading

    current = [message]
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        wait = PLAIN_AFTER_S
        while not done.wait(wait):
            elapsed = time.monotonic() - started
            console.print(f"{current[0]} ({elapsed:.0f}s)", highlight=False, markup=False)
            wait = PLAIN_EVERY_S

    def update(text: str) -> None:
        current[0] = text

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        yield update
    finally:
        done.set()
        reporter.join(1)


ASYNC_DONE = ("succeeded", "failed", "dead")
POLL_FIRST_S = 0.1
POLL_MAX_S = 1.0


def wait_for_invocation(
    fetch: Callable[[], dict[str, Any]], invocation_id: str, console: Console
) -> dict[str, Any]:
    """Poll an async invocation (`fetch` = GET /v1/invocations/{id}) until it is done."""
    delay = POLL_FIRST_S
    with progress(console, f"{invocation_id}: queued") as update:
        while True:
            view = fetch()
            status = view.get("status", "?")
            if status in ASYNC_DONE:
                return view
            attempts = f"attempt {view.get('attempts', 0)} of {view.get('max_attempts', '?')}"
            update(f"{invocation_id}: {status} ({attempts})")
            time.sleep(delay)
            delay = min(POLL_MAX_S, delay * 2)
