"""The first admin of a farm that starts itself (standalone, demo, tests): made on first start,
kept in `<data dir>/credentials.json` (0600), found there by the CLI on the same machine."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.private_files import write_private
from shared.settings import Settings

FILE_NAME = "credentials.json"
ADMIN = "admin"


@dataclass(frozen=True)
class FarmCredentials:
    user: str
    password: str
    #: An API token of the admin's, for the CLI.
    token: str
    #: What Prometheus sends to scrape /metrics.
    metrics_token: str

    @property
    def flower_basic_auth(self) -> str:
        return f"{self.user}:{self.password}"


def credentials_path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def load_credentials(data_dir: Path) -> FarmCredentials | None:
    """What a standalone farm on this data dir saved, or None where there is none or it is unreadable."""
    try:
        raw = json.loads(credentials_path(data_dir).read_text())
        return FarmCredentials(**{k: str(raw[k]) for k in ("user", "password", "token", "metrics_token")})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_credentials(settings: Settings) -> FarmCredentials:
    """The farm's first admin and a token, in its database and in the data dir, made if missing.

    A database that lost them (deleted, replaced) gets them back from the file, so the CLI's token
    keeps working across a reset of the farm's state.
    """
    # The master's modules load here only: a worker node's CLI never needs them.
    from master.auth.first_admin import ensure_admin
    from master.db import init_db, make_engine

    saved = load_credentials(settings.data_dir)
    creds = saved or FarmCredentials(
        user=ADMIN,
        password=secrets.token_urlsafe(18),
        token=f"tf_{secrets.token_urlsafe(32)}",
        metrics_token=secrets.token_urlsafe(32),
    )
    engine = make_engine(settings.database_url)
    try:
        init_db(engine)
        ensure_admin(engine, creds.user, creds.password, creds.token)
    finally:
        engine.dispose()
    if saved is None:
        write_private(credentials_path(settings.data_dir), json.dumps(asdict(creds), indent=2) + "\n")
    return creds
