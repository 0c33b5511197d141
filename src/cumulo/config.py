"""Where clients find the platform: credentials written by `cumulo up`, overridden by env."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from cumulo.errors import ConfigError

DEFAULT_DATA_DIR = Path(".cumulo")
DEFAULT_URL = "http://127.0.0.1:8080"
CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True, slots=True)
class Credentials:
    url: str
    api_key: str


def data_dir_from_env() -> Path:
    return Path(os.environ.get("CUMULO_DATA_DIR", str(DEFAULT_DATA_DIR)))


def write_credentials(data_dir: Path, creds: Credentials) -> Path:
    """Write `<data-dir>/credentials.json` readable by its owner only (mode 0600)."""
    path = data_dir / CREDENTIALS_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps({"url": creds.url, "api_key": creds.api_key}))
    os.replace(tmp, path)
    return path


def load_credentials(data_dir: Path | None = None, *, use_env: bool = True) -> Credentials:
    """Credentials for the CLI and client: CUMULO_URL / CUMULO_API_KEY win over the file."""
    url = os.environ.get("CUMULO_URL") if use_env else None
    key = os.environ.get("CUMULO_API_KEY") if use_env else None
    if url and key:
        return Credentials(url=url.rstrip("/"), api_key=key)
    path = (data_dir or data_dir_from_env()) / CREDENTIALS_FILE
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        if url or key:
            raise ConfigError("set both CUMULO_URL and CUMULO_API_KEY") from None
        raise ConfigError(
            f"no credentials: {path} does not exist (start `cumulo up` or set "
            "CUMULO_URL and CUMULO_API_KEY)"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON") from exc
    return Credentials(
        url=(url or str(raw.get("url") or DEFAULT_URL)).rstrip("/"),
        api_key=key or str(raw.get("api_key") or ""),
    )
