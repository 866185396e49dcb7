"""Connection strings as they may be shown: in logs, banners, /api/health and error messages."""

from __future__ import annotations

from urllib.parse import urlsplit

MASK = "***"


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***` (`redis://user:***@host:6379/0`); the user name,
    host and path stay, since they are what a person needs to tell which server is meant."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL at all: show nothing of it rather than risk a secret
        return MASK
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{user}:{MASK}@{host}").geturl()
