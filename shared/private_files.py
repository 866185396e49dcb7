"""Files only their owner may read (keys, passwords, tokens, configs holding them): written whole
or not at all, and never readable by anyone else, not even for a moment."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data`, mode 0600: written beside it first, then renamed over it, so a
    reader meets the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file left by an earlier try
    os.replace(tmp, path)


def ensure_secret(path: Path) -> str:
    """The secret kept in `path`, made (random, 0600) on first use and the same ever after."""
    if path.exists():
        kept = path.read_text().strip()
        if kept:
            return kept
    made = secrets.token_urlsafe(24)
    write_private(path, made + "\n")
    return made
