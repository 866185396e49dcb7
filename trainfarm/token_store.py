"""Where the CLI finds its token for a master: TRAINFARM_TOKEN, else what `trainfarm login` saved
(a 0600 file in the user's config folder), else a standalone farm's own credentials on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from platformdirs import user_config_path

from shared.private_files import write_private
from shared.settings import Settings
from trainfarm.credentials import load_credentials


def tokens_file() -> Path:
    return user_config_path("trainfarm", appauthor=False) / "tokens.json"


def _saved() -> dict[str, str]:
    try:
        raw = json.loads(tokens_file().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _write(tokens: dict[str, str]) -> None:
    write_private(tokens_file(), json.dumps(tokens, indent=2))


def save_token(api_url: str, token: str) -> Path:
    tokens = _saved()
    tokens[api_url] = token
    _write(tokens)
    return tokens_file()


def forget_token(api_url: str) -> bool:
    tokens = _saved()
    if tokens.pop(api_url, None) is None:
        return False
    _write(tokens)
    return True


def _on_this_machine(api_url: str) -> bool:
    """A standalone farm binds 127.0.0.1: its admin token is never sent anywhere else."""
    host = urlsplit(api_url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def find_token(api_url: str, settings: Settings | None) -> tuple[str | None, str]:
    """The token to use for `api_url`, and where it came from (for `whoami` and error messages)."""
    if settings is None:
        return _saved().get(api_url), str(tokens_file())
    if settings.token is not None:
        return settings.token.get_secret_value(), "TRAINFARM_TOKEN"
    saved = _saved().get(api_url)
    if saved:
        return saved, str(tokens_file())
    creds = load_credentials(settings.data_dir) if _on_this_machine(api_url) else None
    if creds is not None:
        return creds.token, str(settings.data_dir / "credentials.json")
    return None, ""
