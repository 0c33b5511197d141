"""The `cumulo` entry point, kept lean: `--help`, `--version` and a plain `invoke` answer
without importing typer, rich or httpx (each costs 100+ ms); every other command loads the
full CLI (cumulo.cli.app)."""

from __future__ import annotations

import os
import sys

HELP = """\
Usage: cumulo [--context NAME] COMMAND [ARGS]...

  cumulo: deploy Python functions, get endpoints that scale from zero.

Commands:
  up           Start the platform in the foreground (gateway, workers).
  deploy       Deploy a function: a new immutable version, live unless --no-promote.
  invoke       Invoke a function and print its JSON result.
  ls           List functions and where their traffic goes.
  versions     List a function's versions.
  traffic      Split live traffic between versions.
  rollback     Restore the previous traffic split.
  rm           Remove a function with all its versions and state.
  logs         Print a function's log lines (with invocation ids).
  invocations  Past and queued invocations: `ls NAME`, `get ID`.
  secrets      Manage secrets (functions read the ones they declare).
  keys         Manage API keys.
  audit        The tamper-evident audit log.
  quantum      Quantum jobs on Qiskit Aer.
  privacy      Data-subject requests, consent, retention (GDPR/CCPA).
  usage        Metered usage and cost.
  quota        Monthly quotas of a namespace.
  alerts       Anomaly alerts on usage.
  migrate      Copy a platform's data dir into an empty PostgreSQL database.
  export       Kubernetes manifests for the platform or a function image.
  login        Save a platform's URL and API key as a context.
  context      List the saved contexts or pick the current one.

Options:
  --context NAME  The saved context to use (see `cumulo context ls`).
  --version       Print the version and exit.
  --help          Show this message and exit.

`cumulo COMMAND --help` describes a command. The platform is found through --context,
CUMULO_URL + CUMULO_API_KEY, CUMULO_CONTEXT or the current context (`cumulo login`), then
./.cumulo/credentials.json.
"""


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = sys.argv[1:]
    if args in ([], ["--help"], ["-h"]):
        sys.stdout.write(HELP)
        return
    if args in (["--version"], ["-V"]):
        from cumulo import __version__

        sys.stdout.write(f"cumulo {__version__}\n")
        return
    if args[0] == "invoke":
        from cumulo.cli import invoke_fast

        code = invoke_fast.main(args[1:])
        if code is not None:
            sys.exit(code)
    from cumulo.cli.app import app

    app()


if __name__ == "__main__":
    main()
