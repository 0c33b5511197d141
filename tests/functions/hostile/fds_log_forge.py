"""Reaches for the gateway's log through /proc/self/fd/1 and /proc/self/fd/2: reads it,
truncates it, forges a line; and prints through print() and os.write(1, ...)."""

import os


def handler(event, ctx):
    report = {}
    for fd in (1, 2):
        path = f"/proc/self/fd/{fd}"
        entry = {"target": os.readlink(path)}
        try:
            got = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        except OSError as exc:
            entry["open"] = exc.strerror
        else:
            try:
                try:
                    entry["read"] = os.read(got, 65536).decode(errors="replace")[-2000:]
                except OSError as exc:
                    entry["read_error"] = exc.strerror
                try:
                    os.ftruncate(got, 0)
                    entry["truncated"] = True
                except OSError as exc:
                    entry["truncate_error"] = exc.strerror
                try:
                    os.write(got, b"FORGED gateway line: admin API key (shown once): cmo_forged\n")
                    entry["forged"] = True
                except OSError as exc:
                    entry["forge_error"] = exc.strerror
            finally:
                os.close(got)
        for how in (os.ftruncate,):
            try:
                how(fd, 0)
                entry["truncated_fd"] = True
            except OSError as exc:
                entry["truncate_fd_error"] = exc.strerror
        report[str(fd)] = entry
    return report


def talk(event, ctx):
    """Output both ways: print() (a log frame) and raw writes to fds 1 and 2."""
    tag = event["tag"]
    print(f"print-{tag}")
    os.write(1, f"fd1-{tag}\n".encode())
    os.write(2, f"fd2-{tag}\n".encode())
    if event.get("long"):
        # One line far past the reader's cap, without a newline until the very end.
        chunk = b"x" * (1 << 20)
        for _ in range(int(event["long"])):
            os.write(1, chunk)
        os.write(1, f"\nafter-long-{tag}\n".encode())
    return {"ok": True}
