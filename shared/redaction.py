"""Connection strings as they may be shown: in logs, banners, /api/health and error messages."""

from __future__ import annotations

from urllib.parse import urlsplit

MASK = "***"


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***` (`redis://user:***@host:6379/0`); the user name,
    host and path stay, since they are what a person needs to tell which server is meant."""
    try:
        if urlsplit(url).password is None:
            return url
    except ValueError:  # not a URL at all: show nothing of it rather than risk a secret
        return MASK
    return with_password(url, MASK)


def with_password(url: str, password: str) -> str:
    """`url` with `password` (already URL-quoted) in place of its own, if any; the user name stays
    as the URL spells it."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:{password}@{host}").geturl()
