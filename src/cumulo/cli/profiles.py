"""Where the CLI finds its platform: a per-user config of named contexts (like kubectl's),
plus env variables and the `./.cumulo` credentials of a platform started here.

Precedence, first match wins:
1. `--context NAME` on the command line;
2. `CUMULO_URL` + `CUMULO_API_KEY`;
3. `CUMULO_CONTEXT`, then the config's `current-context`;
4. `$CUMULO_DATA_DIR/credentials.json` (default `./.cumulo/credentials.json`).

The config is `$XDG_CONFIG_HOME/cumulo/config.toml` (default `~/.config/cumulo/`), mode
0600 since it holds API keys. Standard library only: `cumulo invoke` must start fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# `--context` of the full CLI (cumulo.cli.app's callback sets it before any command runs).
FLAG_CONTEXT: str | None = None


class ProfileError(Exception):
    """A problem the user fixes (one line on stderr, exit 1)."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    api_key: str
    source: str  # where it came from, for `cumulo context ls` and error messages


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cumulo" / "config.toml"


@dataclass(slots=True)
class UserConfig:
    current: str | None
    contexts: dict[str, dict[str, str]]

    @classmethod
    def load(cls, path: Path | None = None) -> UserConfig:
        path = path or config_path()
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return cls(None, {})
        import tomllib

        try:
            data: dict[str, Any] = tomllib.loads(raw)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{path} is not valid TOML: {exc}") from None
        contexts = {
            str(name): {k: str(v) for k, v in ctx.items()}
            for name, ctx in dict(data.get("contexts") or {}).items()
            if isinstance(ctx, dict)
        }
        current = data.get("current-context")
        return cls(str(current) if current else None, contexts)

    def save(self, path: Path | None = None) -> Path:
        path = path or config_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # JSON strings are valid TOML basic strings: quoting needs no TOML writer.
        lines = [f"current-context = {json.dumps(self.current)}"] if self.current else []
        for name, ctx in sorted(self.contexts.items()):
            lines += ["", f"[contexts.{json.dumps(name)}]"]
            lines += [f"{k} = {json.dumps(v)}" for k, v in sorted(ctx.items())]
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)  # an existing tmp file keeps its mode through O_CREAT
        os.replace(tmp, path)
        return path

    def target(self, name: str, why: str) -> Target:
        ctx = self.contexts.get(name)
        if ctx is None:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise ProfileError(f"no context {name!r} ({why}); known contexts: {known}")
        if not ctx.get("url") or not ctx.get("api_key"):
            raise ProfileError(f"context {name!r} in {config_path()} needs url and api_key")
        return Target(ctx["url"].rstrip("/"), ctx["api_key"], f"context {name}")


def resolve(context: str | None = None) -> Target:
    """The platform to talk to (see the module docstring for the order)."""
    context = context or FLAG_CONTEXT
    if context:
        return UserConfig.load().target(context, "from --context")
    url, key = os.environ.get("CUMULO_URL"), os.environ.get("CUMULO_API_KEY")
    if url and key:
        return Target(url.rstrip("/"), key, "CUMULO_URL and CUMULO_API_KEY")
    if url or key:
        raise ProfileError("set both CUMULO_URL and CUMULO_API_KEY")
    env_context = os.environ.get("CUMULO_CONTEXT")
    config = UserConfig.load()
    if env_context:
        return config.target(env_context, "from CUMULO_CONTEXT")
    if config.current:
        return config.target(config.current, f"the current context in {config_path()}")
    creds = Path(os.environ.get("CUMULO_DATA_DIR", ".cumulo")) / "credentials.json"
    try:
        saved = json.loads(creds.read_bytes())
    except FileNotFoundError:
        raise ProfileError(
            "no credentials: run `cumulo login URL`, start `cumulo up` here, "
            "or set CUMULO_URL and CUMULO_API_KEY"
        ) from None
    except ValueError:
        raise ProfileError(f"{creds} is not valid JSON") from None
    return Target(
        str(saved.get("url") or "http://127.0.0.1:8080").rstrip("/"),
        str(saved.get("api_key") or ""),
        str(creds),
    )


def context_name_for(url: str) -> str:
    """`cumulo up`'s context: `local` for the default address, else host-port."""
    rest = url.split("://", 1)[-1].rstrip("/")
    if rest in ("127.0.0.1:8080", "localhost:8080"):
        return "local"
    return "local-" + rest.replace("[", "").replace("]", "").replace(":", "-")


def register(name: str, url: str, api_key: str, *, make_current: bool) -> Path:
    """Save a context (login, `cumulo up`); the first one saved becomes current."""
    config = UserConfig.load()
    config.contexts[name] = {"url": url.rstrip("/"), "api_key": api_key}
    if make_current or not config.current:
        config.current = name
    return config.save()
